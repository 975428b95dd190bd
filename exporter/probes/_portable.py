"""The portable probe transport: asyncio streams, for loops without reader callbacks.

The kernel-dated Connection (_conn.py) needs socket.recvmsg and the event
loop's add_reader/add_writer. Windows' default loop (Proactor, completion
ports) has neither callback, and recvmsg is missing on Windows altogether; a
probe over Connection would fail there with NotImplementedError. So where they
are missing, probes run over PortableConnection instead: asyncio's own stream
transport, TLS by StreamWriter.start_tls. It has the same surface as
Connection (connect, send, start_tls, abort, read, unread, at_eof, arrival),
so the HTTP layer (h11, _http.py), the phases and the reasons are the same
over both.

What is lost is timing precision. Connection dates the first byte of an
answer by the kernel's receive timestamp; here the date is the moment the
event loop handed the bytes to the stream (data_received), which on a busy
loop can be later than their arrival by however long the loop was busy.
Phases are still measured where they happen and never overlap; `processing`
may be longer and `transfer` shorter by that delay.

Choice (connection_type): the kernel path wherever it works; the portable one
when DEFENDER_EXPORTER_TRANSPORT=portable, when socket.recvmsg is missing, or
when the running loop refuses add_reader. Logged once per event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
import weakref

from ._conn import Connection, stream_socket

ENV = "DEFENDER_EXPORTER_TRANSPORT"
KERNEL = "kernel"
PORTABLE = "portable"

log = logging.getLogger("exporter")
_chosen: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, type] = weakref.WeakKeyDictionary()


class _DatedReader(asyncio.StreamReader):
    """A StreamReader that remembers when the loop fed it the oldest bytes still unread."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.fed = 0  # bytes fed so far
        self.consumed = 0  # bytes the connection has taken out
        self.oldest_unread_at: float | None = None

    def feed_data(self, data: bytes) -> None:
        if data and self.fed <= self.consumed:
            self.oldest_unread_at = time.perf_counter()
        self.fed += len(data)
        super().feed_data(data)


class PortableConnection:
    """Connection's interface over asyncio streams (see the module docstring)."""

    def __init__(self, reader: _DatedReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._unread = bytearray()  # put back by the parser, served first
        self._arrival: float | None = None

    @classmethod
    async def connect(cls, family: int, address: tuple) -> PortableConnection:
        """Connect to address (a socket address of `family`); OSError as the OS said it."""
        loop = asyncio.get_running_loop()
        sock = stream_socket(family)
        try:
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                if exc.errno is None:
                    raise
                # asyncio words it "Connect call failed (addr)"; say what the OS said, as Connection does.
                raise OSError(exc.errno, os.strerror(exc.errno)) from None
            reader = _DatedReader(loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    # ------------------------------------------------------------------ writing, closing, TLS

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def abort(self) -> None:
        """Close at once; never raises."""
        try:
            self._writer.transport.abort()
        except Exception:  # noqa: BLE001, S110 - a transport already gone: nothing left to close
            pass

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLObject:
        """The TLS handshake; ssl.SSLError if it fails, ConnectionResetError if the peer closes."""
        if self._unread:
            # Connection feeds such bytes to TLS; asyncio's start_tls cannot. A server speaks
            # TLS only after our ClientHello, so bytes already here are not TLS from it.
            raise ssl.SSLError(f"{len(self._unread)} bytes arrived before the TLS handshake began")
        await self._writer.start_tls(context, server_hostname=server_hostname)
        ssl_object = self._writer.get_extra_info("ssl_object")
        if ssl_object is None:  # the transport closed under the handshake
            raise ssl.SSLEOFError("the peer closed the connection during the TLS handshake")
        return ssl_object

    # ------------------------------------------------------------------ reading

    def arrival(self) -> float | None:
        """When the loop received the bytes the latest read returned (perf_counter clock),
        or None if it returned none: no later than that read, but later than the kernel's date."""
        return self._arrival

    def at_eof(self) -> bool:
        return not self._unread and self._reader.at_eof()

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the stream (what a parser read past its message)."""
        self._unread[:0] = data

    async def read(self, n: int) -> bytes:
        """Up to n bytes, b"" at the end of the stream."""
        if n <= 0:
            return b""
        if self._unread:
            data = bytes(self._unread[:n])
            del self._unread[:n]
            return data
        reader = self._reader
        data = await reader.read(n)
        self._arrival = reader.oldest_unread_at if data else None
        reader.consumed += len(data)
        return data


def _has_recvmsg() -> bool:
    return hasattr(socket.socket, "recvmsg")


def _loop_has_reader_callbacks(loop: asyncio.AbstractEventLoop) -> bool:
    probe, peer = socket.socketpair()
    try:
        loop.add_reader(probe.fileno(), lambda: None)
        loop.remove_reader(probe.fileno())
        return True
    except NotImplementedError:
        return False
    finally:
        probe.close()
        peer.close()


def _choose(loop: asyncio.AbstractEventLoop) -> tuple[type, str]:
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted == PORTABLE:
        return PortableConnection, f"forced by {ENV}={PORTABLE}"
    if wanted not in ("", "auto"):
        log.warning("%s=%s is not 'auto' or '%s'; choosing automatically", ENV, wanted, PORTABLE)
    if not _has_recvmsg():
        return PortableConnection, "socket.recvmsg is not available on this platform"
    if not _loop_has_reader_callbacks(loop):
        return PortableConnection, f"the event loop ({type(loop).__name__}) has no add_reader"
    return Connection, "recvmsg with kernel receive timestamps"


def connection_type(loop: asyncio.AbstractEventLoop | None = None) -> type:
    """Connection or PortableConnection for this event loop (chosen once, logged)."""
    loop = loop or asyncio.get_running_loop()
    chosen = _chosen.get(loop)
    if chosen is None:
        chosen, why = _choose(loop)
        _chosen[loop] = chosen
        log.info("probe transport: %s (%s)", PORTABLE if chosen is PortableConnection else KERNEL, why)
    return chosen


def fall_back(loop: asyncio.AbstractEventLoop, exc: NotImplementedError) -> type:
    """The kernel path hit a platform limitation at run time: portable from now on, for this loop."""
    if _chosen.get(loop) is not PortableConnection:
        log.warning("probe transport: portable from now on (the kernel path raised NotImplementedError: %s)", exc)
        _chosen[loop] = PortableConnection
    return PortableConnection
