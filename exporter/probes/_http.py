"""One HTTP/1.1 exchange on a probe's Connection, parsed by h11.

h11 only turns bytes into events; every byte still comes through
_conn.Connection, so reads stay bounded and dated by the kernel:

- the first byte of an answer is read on its own and its arrival (kernel
  stamp) ends the `processing` phase, however late the loop got to it;
- headers are capped by limits.header_bytes (h11's max_incomplete_event_size);
- a body is kept up to a cap and reading stops there.

Interim answers (100 Continue, 103 Early Hints) are skipped as RFC 9110 15.2
asks of a client; the time to first byte is that of the first answer, interim
or not (as Go's httptrace, and so blackbox_exporter, report it).
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import h11

from ..config import Limits
from ..reasons import Reason
from ._conn import Connection
from ._net import ProbeFailure, ProbeState

_READ_BYTES = 65536


@dataclass(frozen=True)
class HTTPAnswer:
    status: int
    reason_phrase: str
    headers: tuple[tuple[str, str], ...]  # names in lower case, as h11 gives them
    body: bytes = b""  # what was kept: at most the cap
    body_bytes: int = 0  # bytes of body read
    truncated: bool = False  # the body goes on past the cap (not read further)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def validators(self) -> Validators:
        """What a copy of this answer is revalidated with."""
        return Validators.of(self.header("etag"), self.header("last-modified"))

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    def describe(self) -> str:
        """What arrived, in a NOC's words: status, content type, size."""
        size = f"more than {self.body_bytes}" if self.truncated else str(self.body_bytes)
        return f"HTTP {self.status} {self.reason_phrase}".rstrip() + (
            f", {self.content_type or 'no content type'}, {size} bytes")


@dataclass(frozen=True)
class Validators:
    """What a kept answer (a CRL, a PAC file) is revalidated with (RFC 9110 8.8):
    its ETag and its Last-Modified. A conditional GET with them gets 304 Not
    Modified when nothing changed."""

    etag: str | None = None
    last_modified: str | None = None  # only an HTTP date: a server ignores anything else (RFC 9110 13.1.3)

    @classmethod
    def of(cls, etag: str | None, last_modified: str | None) -> Validators:
        return cls(etag or None, last_modified if _is_http_date(last_modified) else None)

    def conditional(self) -> list[tuple[str, str]]:
        """The request headers of a conditional GET."""
        return [(name, value) for name, value in (("If-None-Match", self.etag), ("If-Modified-Since", self.last_modified))
                if value]


def _is_http_date(value: str | None) -> bool:
    if not value:
        return False
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return True


def request_bytes(parser: h11.Connection, method: str, target: str,
                  headers: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    """The request as h11 frames it (it checks names and values, and Host)."""
    fields = tuple(headers)
    if body or method in ("POST", "PUT"):
        fields += (("Content-Length", str(len(body))),)
    data = parser.send(_request_event(method, target, fields))
    if body:
        data += parser.send(h11.Data(data=body))
    return data + (parser.send(h11.EndOfMessage()) or b"")


@functools.lru_cache(maxsize=4096)
def _request_event(method: str, target: str, fields: tuple[tuple[str, str], ...]) -> h11.Request:
    """h11's Request for these values, checked (names, values, Host) once: a target's probe sends
    the same request every interval, and h11's events are immutable, so one serves every probe."""
    return h11.Request(method=method, target=target, headers=list(fields))


def new_parser(limits: Limits) -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=limits.header_bytes)


async def read_response(conn: Connection, parser: h11.Connection, state: ProbeState, header_cap: int, *,
                        first_byte_phase: str | None = "transfer") -> h11.Response:
    """The final response's head; interim 1xx answers are skipped.

    The first byte is read alone and, when `first_byte_phase` is given, starts
    that phase at its kernel arrival time. (A proxy's answer to CONNECT stays in
    `proxy_connect`: no phase change.)"""
    first = await conn.read(1)
    if not first:
        raise ProbeFailure(Reason.HTTP_ERROR, "connection closed before any response")
    if first_byte_phase is not None:
        state.clock.begin(first_byte_phase, "reading the response", at=conn.arrival())
    received = 1
    parser.receive_data(first)
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProbeFailure(Reason.HTTP_ERROR, _head_problem(exc, received, header_cap)) from None
        if event is h11.NEED_DATA:
            data = await conn.read(_READ_BYTES)
            received += len(data)
            parser.receive_data(data)  # b"": the peer closed
            continue
        if isinstance(event, h11.InformationalResponse):
            state.log(f"interim answer {event.status_code} {event.reason.decode('latin-1')} (skipped)")
            continue
        if isinstance(event, h11.Response):
            return event
        raise ProbeFailure(Reason.HTTP_ERROR, f"unexpected {type(event).__name__} before the response")


def _head_problem(exc: h11.RemoteProtocolError, received: int, header_cap: int) -> str:
    text = str(exc)
    if exc.error_status_hint == 431:
        return f"response headers exceed {header_cap} bytes (limits.header_bytes)"
    if "closed" in text:
        return f"connection closed inside the response headers after {received} bytes"
    return f"not an HTTP/1.x response: {text[:120]}"


async def read_body(conn: Connection, parser: h11.Connection, response: h11.Response, cap: int, *,
                    read_oversized: bool) -> tuple[bytes, int, bool]:
    """(kept body, bytes read, truncated): at most `cap` bytes are read.

    A body announced longer than the cap (Content-Length) is not read at all
    unless `read_oversized` (a probe measures the transfer up to the cap; a CRL
    fetch has no use for the start of a CRL it cannot keep). A body cut short
    by the peer is a reset: what arrived is not the whole answer."""
    if cap > 0 and not read_oversized:
        length = _content_length(response)
        if length is not None and length > cap:
            return b"", 0, True
    chunks: list[bytes] = []
    got = 0
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            if "complete message body" in str(exc) or "closed" in str(exc):
                raise ProbeFailure(Reason.CONNECTION_RESET,
                                   f"connection closed after {got} body bytes, before the end of the body") from None
            raise ProbeFailure(Reason.HTTP_ERROR, f"malformed response body: {exc}") from None
        if event is h11.NEED_DATA:
            if got >= cap:
                return b"".join(chunks), got, True
            # One byte past the cap tells a body that ends there from one that goes on.
            parser.receive_data(await conn.read(min(_READ_BYTES, cap - got + 1)))
            continue
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            if got + len(data) > cap:
                chunks.append(data[: cap - got])
                return b"".join(chunks), cap, True
            chunks.append(data)
            got += len(data)
            continue
        # EndOfMessage (or the close that ends a body read to the end of the stream)
        return b"".join(chunks), got, False


def _content_length(response: h11.Response) -> int | None:
    for name, value in response.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def answer_of(response: h11.Response, body: bytes = b"", body_bytes: int = 0, truncated: bool = False) -> HTTPAnswer:
    return HTTPAnswer(
        response.status_code,
        response.reason.decode("latin-1"),
        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
        body, body_bytes, truncated,
    )


def leftover(parser: h11.Connection) -> bytes:
    """Bytes that came behind a switch of protocol (a proxy's 2xx to CONNECT):
    the start of the tunnel's stream, to hand back to the connection."""
    return bytes(parser.trailing_data[0])
