"""Network building blocks of the probers: phases, connect, TLS, reasons.

A small connection of our own (_conn.Connection) rather than an HTTP client
library or asyncio streams, so that every phase is measured where it happens
(resolve, connect, the proxy's CONNECT round trip, the TLS handshake, time to
first byte, transfer), the first byte of an answer is dated by the kernel and
not by when a busy event loop got round to reading it, every probe is a fresh
connection with fresh name resolution, and every read is bounded. HTTP on
top is _http.py (h11); a request over a route, proxy and all, is fetch.py.

Failures are raised as ProbeFailure carrying the one documented reason.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import ConnectTo, ProxyURL
from ..metrics import PHASES
from ..reasons import Reason
from ._conn import Connection
from ._portable import connection_type, fall_back

log = logging.getLogger("exporter.probes")

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
        self._begun = False
        self._stopped: float | None = None
        self.started = time.perf_counter()

    def begin(self, phase: str, step: str | None = None, *, at: float | None = None) -> None:
        """Start `phase` now, or `at` (a perf_counter time) when the moment it
        began is known better than "now": the kernel's arrival time of a first
        byte read late. `at` is kept inside the phase that ends, never ahead of now.

        The probe's duration runs from the first phase's start to the last stop,
        and a phase begun after a stop starts at the stop: the phases add up to
        the duration however late the thread got back to each boundary."""
        now = time.perf_counter()
        if at is not None:
            now = min(max(at, self._since), now)
        if not self._begun:
            self._begun, self.started = True, now
        elif self._phase is None and self._stopped is not None:
            now = self._stopped
        self._close(now)
        self._phase, self._since, self.step = phase, now, step or phase

    def stop(self) -> None:
        if self._phase is None:
            return  # stopped already: the first stop is when the probe ended
        now = time.perf_counter()
        self._close(now)
        self._phase, self._stopped = None, now

    def _close(self, now: float) -> None:
        if self._phase is not None:
            self.phases[self._phase] += now - self._since

    def elapsed(self) -> float:
        end = self._stopped if self._phase is None and self._stopped is not None else time.perf_counter()
        return end - self.started


class UnexpectedErrors:
    """The log of exceptions no rule of translate() expects: a bug of ours (or of
    a library). It still becomes a reason, but with its traceback in the log, so
    that it is never silently relabelled as an endpoint's failure; once per
    (exception type, target), so a bug that fails every probe of a target is
    logged once, not once per interval. Bounded: past `kept` pairs nothing new is
    remembered, and every new pair is still logged.

    Owned by whoever runs the fetches (an exporter's ProbeEnv, its CRL and OCSP
    caches), so two exporters in one process log their own."""

    def __init__(self, kept: int = 1024):
        self._kept = kept
        self._logged: set[tuple[str, str]] = set()

    def log(self, exc: BaseException, target: str) -> None:
        key = (f"{type(exc).__module__}.{type(exc).__qualname__}", target)
        if key in self._logged:
            return
        if len(self._logged) < self._kept:
            self._logged.add(key)
        log.error("unexpected %s while fetching %s (reported as %s; logged once per error type and target)",
                  key[0], target or "?", Reason.HTTP_ERROR, exc_info=exc)


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


@dataclass
class ProbeState:
    """Mutable bookkeeping of one probe in flight (never shared)."""

    clock: PhaseClock = field(default_factory=PhaseClock)
    trace: Trace | None = None
    dialing_proxy: bool = False
    target: str = ""  # what is being fetched (a URL), for the log of an unexpected error
    # Where that error is logged (once): the owner's; a probe of no owner logs its own.
    errors: UnexpectedErrors = field(default_factory=UnexpectedErrors)

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


async def dial(host: str, port: int, state: ProbeState, *, what: str) -> Stream:
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
    transport = connection_type()
    for family, address in addresses:
        try:
            try:
                conn = await transport.connect(family, address)
            except NotImplementedError as exc:  # a platform limitation, not the endpoint's failure
                transport = fall_back(asyncio.get_running_loop(), exc)
                conn = await transport.connect(family, address)
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
    if isinstance(exc, NotImplementedError):
        # What this platform or event loop lacks says nothing about the endpoint: no reason
        # fits, and http_error would page for a healthy network. Let it surface as our bug.
        raise exc
    state.errors.log(exc, state.target)
    return ProbeFailure(Reason.HTTP_ERROR, f"unexpected {type(exc).__name__} ({step}): {exc}")
