"""Network building blocks of the probers: connect, proxy, HTTP/1.1 exchange.

A small connection of our own (_conn.Connection) rather than an HTTP client
library or asyncio streams, so that every phase is measured where it happens
(resolve, connect, the proxy's CONNECT round trip, the TLS handshake, time to
first byte, transfer), the first byte of an answer is dated by the kernel and
not by when a busy event loop got round to reading it, every probe is a fresh
connection with fresh name resolution, and every read is bounded.

Failures are raised as ProbeFailure carrying the one documented reason.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import __version__
from ..config import ConnectTo, Limits, ProxyURL, Route
from ..metrics import PHASES
from ..reasons import Reason
from ._conn import Connection
from .result import ProbeResult, TLSFacts

USER_AGENT = f"defender-connectivity-exporter/{__version__}"
Trace = Callable[[str], None]


class ProbeFailure(Exception):
    def __init__(self, reason: Reason, detail: str, *, http_status: int = 0):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.http_status = http_status


class PhaseClock:
    """Accumulates wall time per phase; knows which step is under way when a
    deadline strikes, so a timeout can be named precisely."""

    def __init__(self) -> None:
        self.phases = {p: 0.0 for p in PHASES}
        self.step = ""  # e.g. "connect", "proxy connect", "tls"
        self._phase: str | None = None
        self._since = 0.0
        self.started = time.perf_counter()

    def begin(self, phase: str, step: str | None = None, *, at: float | None = None) -> None:
        """Start `phase` now, or `at` (a perf_counter time) when the moment it
        began is known better than "now": the kernel's arrival time of a first
        byte read late. `at` is kept inside the phase that ends, never ahead of now."""
        now = time.perf_counter()
        if at is not None:
            now = min(max(at, self._since), now)
        self._close(now)
        self._phase, self._since, self.step = phase, now, step or phase

    def stop(self) -> None:
        self._close(time.perf_counter())
        self._phase = None

    def _close(self, now: float) -> None:
        if self._phase is not None:
            self.phases[self._phase] += now - self._since

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class Stream:
    """A probe's connection and where it goes."""

    conn: Connection
    peer: str
    proxy: ProxyURL | None = None
    proxy_status: int = 0

    def abort(self) -> None:
        # A probe needs no graceful close; abort() frees the socket at once.
        self.conn.abort()


@dataclass(frozen=True)
class HTTPAnswer:
    status: int
    reason_phrase: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    body_bytes: int = 0  # bytes of body read (kept or not)
    truncated: bool = False  # stopped at the cap before the end of the body

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class ProbeState:
    """Mutable bookkeeping of one probe in flight (never shared)."""

    clock: PhaseClock = field(default_factory=PhaseClock)
    trace: Trace | None = None
    dialing_proxy: bool = False

    def log(self, message: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.clock.elapsed() * 1000:8.1f} ms  {message}")


# ----------------------------------------------------------------------------- connecting


def redirect(host: str, port: int, connect_to: tuple[ConnectTo, ...]) -> tuple[str, int]:
    """Where a connection to host:port really goes (first matching rule wins)."""
    for rule in connect_to:
        if rule.matches(host, port):
            return rule.apply(host, port)
    return host, port


def _ip_literal(host: str, port: int) -> tuple[int, tuple] | None:
    """(family, socket address) if host is an IPv4 or IPv6 address, else None."""
    if host[:1].isdigit():
        try:
            socket.inet_pton(socket.AF_INET, host)
            return socket.AF_INET, (host, port)
        except OSError:
            pass
    if ":" in host:
        try:
            socket.inet_pton(socket.AF_INET6, host)
            return socket.AF_INET6, (host, port, 0, 0)
        except OSError:
            pass
    return None


async def _dial(host: str, port: int, limits: Limits, state: ProbeState, *, what: str) -> Stream:
    """Resolve and connect to host:port; every attempt is fresh (no DNS cache)."""
    state.clock.begin("resolve", f"resolving {what}")
    literal = _ip_literal(host, port)
    if literal is not None:
        # An address needs no resolver: skip the executor's thread round trip.
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            raise ProbeFailure(
                Reason.PROXY_UNREACHABLE if state.dialing_proxy else Reason.DNS_ERROR,
                f"cannot resolve {what} {host}: {exc.strerror or exc}",
            ) from None
        addresses = [(info[0], info[4]) for info in infos]
    state.log(f"resolved {host} -> {', '.join(str(a[0]) for _, a in addresses)}")
    state.clock.begin("connect", f"connecting to {what}")
    last_error: OSError | None = None
    for family, address in addresses:
        try:
            conn = await Connection.connect(family, address, limit=limits.header_bytes)
        except OSError as exc:
            last_error = exc
            state.log(f"connect to {address[0]}:{address[1]} failed: {exc.strerror or exc}")
            continue
        peer = f"{address[0]}:{address[1]}" if ":" not in address[0] else f"[{address[0]}]:{address[1]}"
        state.log(f"connected to {peer}")
        return Stream(conn, peer)
    assert last_error is not None
    detail = f"cannot connect to {what} {host}:{port}: {last_error.strerror or last_error}"
    if isinstance(last_error, ConnectionResetError):
        # The peer accepted, then reset before the connect was checked: a reset, as it
        # would be on the first read a moment later, not a refusal (an RST to the SYN).
        raise ProbeFailure(Reason.CONNECTION_RESET, detail)
    if state.dialing_proxy:
        raise ProbeFailure(Reason.PROXY_UNREACHABLE, detail)
    if isinstance(last_error, ConnectionRefusedError) or last_error.errno in (
        errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL,
    ):
        raise ProbeFailure(Reason.CONNECT_REFUSED, detail)
    if isinstance(last_error, TimeoutError) or last_error.errno == errno.ETIMEDOUT:
        raise ProbeFailure(Reason.CONNECT_TIMEOUT, detail)
    raise ProbeFailure(Reason.CONNECT_REFUSED, detail)


async def open_stream(
    host: str, port: int, route: Route, connect_to: tuple[ConnectTo, ...], limits: Limits,
    state: ProbeState, *, tunnel: bool,
) -> Stream:
    """A TCP stream to host:port on a route: direct, or to the route's proxy,
    then (tunnel=True) through an HTTP CONNECT tunnel."""
    proxy = route.proxy
    if proxy is None:
        to_host, to_port = redirect(host, port, connect_to)
        if (to_host, to_port) != (host, port):
            state.log(f"connect_to: {host}:{port} -> {to_host}:{to_port}")
        state.log(f"route {route.name}: direct")
        return await _dial(to_host, to_port, limits, state, what="host")
    state.log(f"route {route.name}: proxy {proxy.redacted()}")
    state.dialing_proxy = True
    to_host, to_port = redirect(proxy.host, proxy.port, connect_to)
    stream = await _dial(to_host, to_port, limits, state, what="proxy")
    state.dialing_proxy = False
    stream.proxy = proxy
    if tunnel:
        try:
            await _connect_tunnel(stream, host, port, proxy, limits, state)
        except BaseException:
            stream.abort()  # the caller never gets this stream to close
            raise
    return stream


def proxy_authorization(proxy: ProxyURL) -> str:
    if proxy.username is None:
        return ""
    token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


async def _connect_tunnel(
    stream: Stream, host: str, port: int, proxy: ProxyURL, limits: Limits, state: ProbeState,
) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    state.clock.begin("proxy_connect", "waiting for the proxy's answer to CONNECT")
    await stream.conn.send(
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        f"{proxy_authorization(proxy)}\r\n".encode()
    )
    try:
        answer = await read_head(stream.conn, limits, state, from_proxy=True)
    except ProbeFailure as failure:
        raise ProbeFailure(Reason.PROXY_ERROR, f"proxy's answer to CONNECT: {failure.detail}") from None
    stream.proxy_status = answer.status
    state.log(f"CONNECT {authority} -> {answer.status} {answer.reason_phrase}")
    if 200 <= answer.status < 300:
        return
    detail = f"proxy answered CONNECT {authority} with {answer.status} {answer.reason_phrase}".rstrip()
    detail += _proxy_error_note(answer)
    if answer.status == 407:
        raise ProbeFailure(Reason.PROXY_AUTH_REQUIRED, detail, http_status=407)
    if answer.status == 403:
        raise ProbeFailure(Reason.PROXY_DENIED, detail, http_status=403)
    raise ProbeFailure(Reason.PROXY_ERROR, detail, http_status=answer.status)


def _proxy_error_note(answer: HTTPAnswer) -> str:
    notes = [v for v in (answer.header("X-Squid-Error"), answer.header("Proxy-Status")) if v]
    return f" ({'; '.join(notes)})" if notes else ""


def proxy_generated(answer: HTTPAnswer) -> Reason | None:
    """Did the proxy answer in the endpoint's place? (plain HTTP through a proxy)

    A forwarded answer carries the origin's status; one the proxy made itself
    says so: 407, Squid's X-Squid-Error, or an RFC 9209 Proxy-Status with an
    error parameter. (Via alone proves nothing: proxies add it to forwarded
    answers too.)
    """
    if answer.status == 407:
        return Reason.PROXY_AUTH_REQUIRED
    squid_error = answer.header("X-Squid-Error") or ""
    proxy_status = answer.header("Proxy-Status") or ""
    if not squid_error and "error=" not in proxy_status:
        return None
    if answer.status == 403 or "ERR_ACCESS_DENIED" in squid_error or "http_request_denied" in proxy_status:
        return Reason.PROXY_DENIED
    return Reason.PROXY_ERROR


# ----------------------------------------------------------------------------- TLS


async def start_tls(stream: Stream, host: str, context: ssl.SSLContext, state: ProbeState) -> ssl.SSLObject:
    state.clock.begin("tls", "TLS handshake")
    try:
        ssl_object = await stream.conn.start_tls(context, host)
    except ssl.SSLEOFError as exc:
        raise ProbeFailure(Reason.CONNECTION_RESET, f"connection closed during the TLS handshake: {exc}") from None
    except ssl.SSLError as exc:
        raise ProbeFailure(Reason.TLS_HANDSHAKE_ERROR, f"TLS handshake failed: {exc.reason or exc}") from None
    state.log(f"TLS {ssl_object.version()} {(ssl_object.cipher() or ('?',))[0]} (SNI {host})")
    return ssl_object


# ----------------------------------------------------------------------------- HTTP

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r?\n")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\r?\n")


async def read_head(conn: Connection, limits: Limits, state: ProbeState, *, from_proxy: bool = False) -> HTTPAnswer:
    """Read a status line and headers, bounded by limits.header_bytes.

    The `processing` phase ends when the first byte arrived as the kernel
    dated it, however late the loop got round to reading it (Connection.read
    reads a first byte on its own, or its TLS record, so that the date is its
    own). A proxy's answer to CONNECT stays in `proxy_connect`."""
    first = await conn.read(1)
    if not first:
        raise ProbeFailure(Reason.HTTP_ERROR, "connection closed before any response")
    if not from_proxy:
        state.clock.begin("transfer", "reading the response", at=conn.arrival())
    try:
        head = first + await conn.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ProbeFailure(Reason.HTTP_ERROR, f"response headers exceed {limits.header_bytes} bytes") from None
    except asyncio.IncompleteReadError as exc:
        raise ProbeFailure(
            Reason.HTTP_ERROR, f"connection closed inside the response headers after {len(exc.partial) + 1} bytes"
        ) from None
    match = _STATUS_LINE.match(head)
    if not match:
        shown = head[:40].decode("latin-1").encode("unicode_escape").decode()
        raise ProbeFailure(Reason.HTTP_ERROR, f"not an HTTP/1.x response: {shown!r}")
    headers = []
    pos = match.end()
    while pos < len(head) - 2:
        line = _HEADER.match(head, pos)
        if not line:
            raise ProbeFailure(Reason.HTTP_ERROR, f"malformed response header at byte {pos}")
        headers.append((line.group(1).decode("latin-1"), line.group(2).decode("latin-1")))
        pos = line.end()
    return HTTPAnswer(int(match.group(1)), (match.group(2) or b"").decode("latin-1"), tuple(headers))


async def drain_body(conn: Connection, answer: HTTPAnswer, cap: int) -> HTTPAnswer:
    """Read (and drop) the body up to `cap` bytes: a probe measures the
    transfer, it does not keep what it read. Reading stops at the cap."""
    if answer.status in (204, 304) or 100 <= answer.status < 200:
        return answer
    length_text = answer.header("Content-Length")
    length = int(length_text) if length_text and length_text.isdigit() else None
    want = cap if length is None else min(length, cap)
    got = 0
    while got < want:
        chunk = await conn.read(min(65536, want - got))
        if not chunk:
            break
        got += len(chunk)
    if length is not None:
        truncated = length > cap
    else:  # unknown length: it was cut if more is waiting
        truncated = got >= cap and cap > 0 and not conn.at_eof()
    return HTTPAnswer(answer.status, answer.reason_phrase, answer.headers, b"", got, truncated)


async def send_get(stream: Stream, request_target: str, authority: str, state: ProbeState, *,
                   extra_headers: str = "") -> None:
    """Write one GET (absolute-URI targets carry the proxy's credentials) and
    start the clock of the `processing` phase once the kernel has it."""
    auth = proxy_authorization(stream.proxy) if stream.proxy and request_target.startswith("http://") else ""
    await stream.conn.send((
        f"GET {request_target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        f"Accept: */*\r\nConnection: close\r\n{auth}{extra_headers}\r\n"
    ).encode("latin-1"))
    state.log(f"sent GET {request_target} (Host: {authority})")
    state.clock.begin("processing", "waiting for the first byte of the response")


async def exchange(stream: Stream, request_target: str, authority: str, limits: Limits,
                   state: ProbeState) -> HTTPAnswer:
    """Send one GET and read the answer (headers, then a bounded body)."""
    await send_get(stream, request_target, authority, state)
    answer = await read_head(stream.conn, limits, state)
    state.log(f"answer {answer.status} {answer.reason_phrase}")
    answer = await drain_body(stream.conn, answer, limits.body_bytes)
    state.clock.stop()
    return answer


# ----------------------------------------------------------------------------- error translation


def translate(exc: BaseException, state: ProbeState) -> ProbeFailure:
    """Turn whatever escaped a probe into its one documented reason."""
    if isinstance(exc, ProbeFailure):
        return exc
    step = state.clock.step
    if isinstance(exc, TimeoutError):
        if state.dialing_proxy:
            return ProbeFailure(Reason.PROXY_UNREACHABLE, f"timed out {step}")
        if step.startswith("resolving"):
            return ProbeFailure(Reason.DNS_ERROR, f"timed out {step}")
        if step.startswith("connecting"):
            return ProbeFailure(Reason.CONNECT_TIMEOUT, f"timed out {step}")
        return ProbeFailure(Reason.TIMEOUT, f"timed out {step}")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return ProbeFailure(Reason.CONNECTION_RESET, f"connection reset by peer ({step})")
    if isinstance(exc, ssl.SSLError):
        if step == "tls":
            return ProbeFailure(Reason.TLS_HANDSHAKE_ERROR, f"TLS handshake failed: {exc}")
        return ProbeFailure(Reason.CONNECTION_RESET, f"TLS error ({step}): {exc}")
    if isinstance(exc, OSError):
        return ProbeFailure(Reason.CONNECTION_RESET, f"network error ({step}): {exc.strerror or exc}")
    return ProbeFailure(Reason.HTTP_ERROR, f"unexpected {type(exc).__name__} ({step}): {exc}")


def result_from(
    state: ProbeState, started_at: float, failure: ProbeFailure | None, *,
    answer: HTTPAnswer | None = None, stream: Stream | None = None, tls: TLSFacts | None = None,
) -> ProbeResult:
    state.clock.stop()
    http_status = answer.status if answer is not None else (failure.http_status if failure else 0)
    if failure is not None:
        state.log(f"FAILED: {failure.reason}: {failure.detail}")
    else:
        state.log(f"OK: HTTP {http_status}")
    return ProbeResult(
        success=failure is None,
        reason=failure.reason if failure else None,
        started_at=started_at,
        duration=state.clock.elapsed(),
        phases=tuple(state.clock.phases.items()),
        detail=failure.detail if failure else "",
        http_status=http_status,
        peer=stream.peer if stream else "",
        proxy_status=stream.proxy_status if stream else 0,
        tls=tls,
    )
