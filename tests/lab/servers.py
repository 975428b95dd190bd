"""Misbehaving and well-behaved servers on loopback, for probing tests.

`LabServers` runs an asyncio event loop in a background thread, so tests (sync or async, and the
exporter's own event loop) talk to the servers through real sockets without sharing a loop.

    with LabServers() as lab:
        ip = lab.alloc_ip()                                  # e.g. 127.101.0.2
        srv = lab.serve(Ok(), ip=ip, port=443, tls=leaf)     # real port 443 on its own address
        ... probe https://wdcp.microsoft.com with connect_to=srv.connect_to("wdcp.microsoft.com")
        assert srv.connections == 1

Each server does one request per connection (`Connection: close`): probes must open a fresh
connection anyway, and it keeps the counters easy to reason about. TLS servers make a new
SSLContext per connection and send no session tickets, so every handshake is a full one.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from .pki import LeafBundle

_T = TypeVar("_T")

# ---------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Ok:
    """Answer any request with `status` and `body`."""

    status: int = 200
    body: bytes = b"ok\n"
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` after the request's headers are read, then answer like Ok."""

    seconds: float
    status: int = 200
    body: bytes = b"ok\n"


@dataclass(frozen=True)
class Files:
    """Serve `files` (path -> bytes) with ETag/Last-Modified and 304s; 404 for anything else.

    `throttle` maps a path to bytes per second, to make a slow download.
    Counters per path: LabServer.file_requests(path), LabServer.not_modified(path).
    """

    files: Mapping[str, bytes]
    throttle: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Handler:
    """Answer with `respond(method, target, body) -> (status, body, content type)`, called on the
    servers' thread (the lab OCSP responder is one). Request bodies up to 1 MiB are passed on."""

    respond: Any


@dataclass(frozen=True)
class ResetOnAccept:
    """Accept, then close with SO_LINGER 0 so the client sees a TCP RST."""


@dataclass(frozen=True)
class ResetMidHandshake:
    """Read the first TLS record (the ClientHello), then RST. On plain HTTP: read, then RST."""


@dataclass(frozen=True)
class NeverAnswer:
    """Accept and hold the connection open; read nothing, send nothing (not even a handshake)."""


@dataclass(frozen=True)
class Garbage:
    """Answer the request with random bytes that are not HTTP, then close.

    With `before_tls`, send them instead of a TLS ServerHello (a non-TLS service on 443).
    """

    size: int = 256
    before_tls: bool = False


@dataclass(frozen=True)
class Slowloris:
    """Send the whole answer one byte every `interval` seconds, starting with the status line."""

    interval: float = 1.0
    status: int = 200
    body: bytes = b"ok\n"


@dataclass(frozen=True)
class EndlessHeaders:
    """Send a status line, then header lines forever (about 100 KB/s)."""


@dataclass(frozen=True)
class EndlessBody:
    """Send 200 and a body that never ends: chunked, or unbounded with no Content-Length."""

    chunked: bool = True


@dataclass(frozen=True)
class Truncated:
    """Send half a status line, then close."""


@dataclass(frozen=True)
class EarlyHints:
    """Send interim answers first (103 Early Hints, or any 1xx in `interim`), then answer like Ok."""

    interim: tuple[int, ...] = (103,)
    status: int = 200
    body: bytes = b"ok\n"


@dataclass(frozen=True)
class Redirect:
    """Answer every request with `status` and `Location: location` (a CDN or mirror's redirect)."""

    location: str
    status: int = 302


Behaviour: TypeAlias = (
    Ok
    | Delay
    | Files
    | Handler
    | ResetOnAccept
    | ResetMidHandshake
    | NeverAnswer
    | Garbage
    | Slowloris
    | EndlessHeaders
    | EndlessBody
    | Truncated
    | EarlyHints
    | Redirect
)

# Behaviours that act on the raw TCP connection, before any TLS handshake.
_PRE_TLS = (ResetOnAccept, ResetMidHandshake, NeverAnswer)


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    target: str  # as sent: "/path" (origin form) or "http://host/path" (absolute form)
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    @property
    def host(self) -> str | None:
        return self.header("host")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class _FileEntry:
    data: bytes
    etag: str
    last_modified: float  # whole seconds: HTTP dates have 1 s resolution


def _file_entry(data: bytes, when: float | None = None) -> _FileEntry:
    etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
    return _FileEntry(data=data, etag=etag, last_modified=float(int(when if when is not None else time.time())))


# ---------------------------------------------------------------------------- address allocation

# Addresses are 127.A.B.C with A derived from the process id, so parallel test processes
# (pytest-xdist) use different blocks; B.C is a per-process counter. alloc_ip also skips an
# address whose port 80 or 443 is already taken, in case two processes still collide.
_alloc_lock = threading.Lock()
_alloc_next = 2


def alloc_ip() -> str:
    """A fresh loopback address for this process, e.g. 127.101.0.2; never handed out twice."""
    global _alloc_next
    first_octet = 64 + os.getpid() % 64
    while True:
        with _alloc_lock:
            n = _alloc_next
            _alloc_next += 1
        b, c = divmod(n, 256)
        if c in (0, 1, 255) or b > 255:
            if b > 255:
                raise RuntimeError("lab loopback addresses exhausted for this process")
            continue
        ip = f"127.{first_octet}.{b}.{c}"
        if _ports_free(ip, (80, 443)):
            return ip


def _ports_free(ip: str, ports: tuple[int, ...]) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
            except PermissionError:
                continue  # not root: cannot tell, and cannot use the port anyway
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                raise
    return True


def free_port(ip: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on `ip` (the usual bind-to-0 trick; racy but fine)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def refused_address(ip: str | None = None) -> tuple[str, int]:
    """An (ip, port) with no listener: connecting gets ECONNREFUSED at once."""
    ip = ip or alloc_ip()
    return ip, free_port(ip)


# ---------------------------------------------------------------------------- one server


class LabServer:
    """Handle on one listening server; counters are safe to read from the test thread."""

    def __init__(
        self,
        owner: LabServers,
        behaviour: Behaviour,
        ip: str,
        tls: LeafBundle | None,
        tls_max_version: ssl.TLSVersion | None,
    ) -> None:
        self._owner = owner
        self.behaviour = behaviour
        self.ip = ip
        self.port = 0  # set once bound
        self.tls = tls
        self._tls_max_version = tls_max_version
        self._lock = threading.Lock()
        self._connections = 0
        self._handshake_failures = 0
        self._requests: list[RecordedRequest] = []
        # Delay: time.perf_counter() just before each answer is handed to the kernel, and once it was.
        self._answered_at: list[float] = []
        self._written_at: list[float] = []
        self._sni: list[str | None] = []
        self._path_requests: Counter[str] = Counter()
        self._path_not_modified: Counter[str] = Counter()
        self._files: dict[str, _FileEntry] = {}
        if isinstance(behaviour, Files):
            self._files = {path: _file_entry(data) for path, data in behaviour.files.items()}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- what tests read

    @property
    def address(self) -> tuple[str, int]:
        return self.ip, self.port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.ip}:{self.port}"

    def connect_to(self, name: str, port: int | None = None) -> str:
        """curl-style `HOST:PORT:ADDR:PORT` aiming name:port (default: the server's port) here."""
        return f"{name}:{port if port is not None else self.port}:{self.ip}:{self.port}"

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    @property
    def handshake_failures(self) -> int:
        with self._lock:
            return self._handshake_failures

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def answered_at(self) -> list[float]:
        """Delay: when each answer went out (time.perf_counter(), this process's clock), in order:
        just before the write, so no earlier than the client can have it."""
        with self._lock:
            return list(self._answered_at)

    @property
    def written_at(self) -> list[float]:
        """Delay: when the write of each answer had returned (its bytes in the kernel), in order:
        no later than the client's kernel dated its arrival (loopback)."""
        with self._lock:
            return list(self._written_at)

    @property
    def request_lines(self) -> list[str]:
        return [r.line for r in self.requests]

    @property
    def hosts(self) -> list[str | None]:
        return [r.host for r in self.requests]

    @property
    def sni_names(self) -> list[str | None]:
        """server_name sent by each TLS client (None when it sent no SNI)."""
        with self._lock:
            return list(self._sni)

    def file_requests(self, path: str) -> int:
        with self._lock:
            return self._path_requests[path]

    def not_modified(self, path: str) -> int:
        with self._lock:
            return self._path_not_modified[path]

    def set_file(self, path: str, data: bytes, *, last_modified: float | None = None) -> None:
        """Replace (or add) a served file: new ETag, Last-Modified now (or as given)."""
        with self._lock:
            self._files[path] = _file_entry(data, last_modified)

    def stop(self) -> None:
        self._owner._call(self._stop())

    # -- event-loop side

    async def _start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host=self.ip, port=port, backlog=256)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _ssl_context(self) -> ssl.SSLContext:
        # A context per connection: no server-side session cache can be shared, and with
        # no tickets either, a client can never resume: every probe is a full handshake.
        assert self.tls is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tls.chain_path, self.tls.key_path)
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
        if self._tls_max_version is not None:
            ctx.maximum_version = self._tls_max_version

        def remember_sni(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            with self._lock:
                self._sni.append(server_name)

        ctx.sni_callback = remember_sni
        return ctx

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        with self._lock:
            self._connections += 1
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass  # the client went away or sent nonsense: nothing to answer
        except asyncio.CancelledError:
            # Only _stop cancels these tasks. Ending normally keeps asyncio's stream callback
            # from logging "Exception in callback" for every held connection.
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        b = self.behaviour
        if isinstance(b, ResetOnAccept):
            _reset(writer)
            return
        if isinstance(b, NeverAnswer):
            await asyncio.Event().wait()  # until the server is stopped (task cancelled)
            return
        if isinstance(b, ResetMidHandshake):
            async with asyncio.timeout(5):
                header = await reader.readexactly(5)
                if header[0] == 0x16:  # TLS handshake record: read it whole
                    await reader.readexactly(int.from_bytes(header[3:5], "big"))
            _reset(writer)
            return
        if isinstance(b, Garbage) and b.before_tls:
            writer.write(_garbage(b.size))
            await writer.drain()
            return

        if self.tls is not None:
            try:
                async with asyncio.timeout(10):
                    await writer.start_tls(self._ssl_context())
            except (ssl.SSLError, ConnectionError, TimeoutError):
                with self._lock:
                    self._handshake_failures += 1
                return

        async with asyncio.timeout(30):
            request = await _read_request(reader)
        with self._lock:
            self._requests.append(request)

        if isinstance(b, Ok):
            await _respond(writer, request, b.status, b.body, b.headers, content_type=b.content_type)
        elif isinstance(b, Delay):
            await asyncio.sleep(b.seconds)
            with self._lock:  # noted first: the client may have the answer before this thread runs again
                self._answered_at.append(time.perf_counter())
            await _respond(writer, request, b.status, b.body)
            with self._lock:
                self._written_at.append(time.perf_counter())
        elif isinstance(b, Files):
            await self._serve_file(writer, request, b)
        elif isinstance(b, Handler):
            status, body, ctype = b.respond(request.method, request.target, request.body)
            await _respond(writer, request, status, body, content_type=ctype)
        elif isinstance(b, Garbage):
            writer.write(_garbage(b.size))
            await writer.drain()
        elif isinstance(b, Slowloris):
            payload = _response_bytes(request, b.status, b.body)
            for i in range(len(payload)):
                writer.write(payload[i : i + 1])
                await writer.drain()
                await asyncio.sleep(b.interval)
        elif isinstance(b, EndlessHeaders):
            writer.write(b"HTTP/1.1 200 OK\r\n")
            n = 0
            while True:
                # 16 lines per 10 ms: fast enough to trip header limits, gentle on the CPU.
                writer.write(b"".join(b"X-Lab-Filler-%d: %s\r\n" % (n + i, b"a" * 48) for i in range(16)))
                n += 16
                await writer.drain()
                await asyncio.sleep(0.01)
        elif isinstance(b, EndlessBody):
            framing = b"Transfer-Encoding: chunked\r\n" if b.chunked else b""  # else: no length at all
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + framing)
            writer.write(b"Connection: close\r\n\r\n")
            chunk = b"x" * 1024
            framed = b"400\r\n" + chunk + b"\r\n" if b.chunked else chunk
            while True:
                writer.write(framed * 16)
                await writer.drain()
                await asyncio.sleep(0.01)
        elif isinstance(b, Truncated):
            writer.write(b"HTTP/1.1 20")
            await writer.drain()
        elif isinstance(b, EarlyHints):
            for status in b.interim:
                writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Interim')}\r\n"
                             "Link: </style.css>; rel=preload; as=style\r\n\r\n".encode())
                await writer.drain()
            await _respond(writer, request, b.status, b.body)
        elif isinstance(b, Redirect):
            await _respond(writer, request, b.status, b"moved\n", (("Location", b.location),))
        # After the answer: close politely (half a second at most for the TLS close_notify).
        writer.close()
        try:
            async with asyncio.timeout(0.5):
                await writer.wait_closed()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            writer.transport.abort()

    async def _serve_file(self, writer: asyncio.StreamWriter, request: RecordedRequest, b: Files) -> None:
        path = request.target
        if path.startswith(("http://", "https://")):
            path = urllib.parse.urlsplit(path).path  # absolute form reached us directly
        path = path.split("?", 1)[0]
        with self._lock:
            entry = self._files.get(path)
            self._path_requests[path] += 1
        if entry is None:
            await _respond(writer, request, 404, b"not found\n")
            return
        validators = (
            ("ETag", entry.etag),
            ("Last-Modified", email.utils.formatdate(entry.last_modified, usegmt=True)),
            ("Cache-Control", "max-age=3600"),
        )
        if _not_modified(request, entry):
            with self._lock:
                self._path_not_modified[path] += 1
            await _respond(writer, request, 304, b"", validators)
            return
        suffix = path.rsplit(".", 1)[-1]
        ctype = {"crl": "application/pkix-crl", "crt": "application/pkix-cert"}.get(suffix, "application/octet-stream")
        rate = b.throttle.get(path)
        if rate is None:
            await _respond(writer, request, 200, entry.data, validators, content_type=ctype)
            return
        # Throttled: headers at once, then the body in ten slices a second.
        head = _response_bytes(request, 200, entry.data, validators, content_type=ctype)
        body_at = len(head) - (0 if request.method == "HEAD" else len(entry.data))
        writer.write(head[:body_at])
        await writer.drain()
        body = head[body_at:]
        step = max(1, int(rate / 10))
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await writer.drain()
            await asyncio.sleep(0.1)


def _not_modified(request: RecordedRequest, entry: _FileEntry) -> bool:
    inm = request.header("if-none-match")
    if inm is not None:
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or entry.etag in tags
    ims = request.header("if-modified-since")
    if ims is not None:
        try:
            since = email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
        return entry.last_modified <= since
    return False


# ---------------------------------------------------------------------------- HTTP helpers

_REASONS = {100: "Continue", 103: "Early Hints", 200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect", 403: "Forbidden",
            404: "Not Found", 407: "Proxy Authentication Required", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}  # fmt: skip


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest:
    raw = await reader.readuntil(b"\r\n\r\n")  # StreamReader's 64 KiB limit bounds this
    lines = raw.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        key, _, value = line.partition(":")
        headers.append((key.strip(), value.strip()))
    # Request bodies are not used by probes; read a declared one so the close is clean.
    request = RecordedRequest(method=method, target=target, version=version, headers=tuple(headers))
    length = request.header("content-length")
    if length and length.isdigit() and int(length) > 0:
        body = await reader.readexactly(min(int(length), 1 << 20))
        request = RecordedRequest(method=method, target=target, version=version, headers=tuple(headers), body=body)
    return request


def _response_bytes(
    request: RecordedRequest,
    status: int,
    body: bytes,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    content_type: str = "text/plain; charset=utf-8",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "Server: lab", "Connection: close"]
    if status != 304:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if request.method == "HEAD" or status in (204, 304):
        return head
    return head + body


async def _respond(
    writer: asyncio.StreamWriter,
    request: RecordedRequest,
    status: int,
    body: bytes,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    writer.write(_response_bytes(request, status, body, headers, content_type=content_type))
    await writer.drain()


def _garbage(size: int) -> bytes:
    # Random, but never starting like "HTTP/" or a TLS record, so it is unmistakably garbage.
    return b"\x00" + os.urandom(max(0, size - 1))


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ---------------------------------------------------------------------------- the thread


class LabServers:
    """Owns an event loop in a daemon thread and every server started on it.

    Use as a context manager (or start()/close()); close() stops all servers, drops every
    open connection and joins the thread.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[LabServer] = []

    def __enter__(self) -> LabServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="lab-servers", daemon=True)
        self._thread.start()
        ready.wait(5)

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            for server in self._servers:
                self._call(server._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(5)
            self._loop.close()
            self._loop = None
            self._servers.clear()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10) -> _T:
        assert self._loop is not None, "LabServers not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @staticmethod
    def alloc_ip() -> str:
        return alloc_ip()

    @staticmethod
    def refused_address(ip: str | None = None) -> tuple[str, int]:
        return refused_address(ip)

    def serve(
        self,
        behaviour: Behaviour | None = None,
        *,
        ip: str | None = None,
        port: int = 0,
        tls: LeafBundle | None = None,
        tls_max_version: ssl.TLSVersion | None = None,
    ) -> LabServer:
        """Start a server; `ip=None` allocates a fresh loopback address, `port=0` an ephemeral port.

        With an explicit ip, a bind error is raised; with an allocated one the next address is tried.
        """
        self.start()
        behaviour = behaviour if behaviour is not None else Ok()
        attempts = 1 if ip is not None else 20
        for attempt in range(attempts):
            server = LabServer(self, behaviour, ip or alloc_ip(), tls, tls_max_version)
            try:
                self._call(server._start(port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                continue
            self._servers.append(server)
            return server
        raise AssertionError("unreachable")
