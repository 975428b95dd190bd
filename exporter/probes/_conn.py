"""One probe's TCP connection, read with recvmsg so that the kernel dates what arrives.

Under load the event loop reads an answer late: it may be busy with other
handshakes when the bytes arrive, and they wait in the socket meanwhile. The
kernel stamps every segment as it arrives (SO_TIMESTAMPNS) and hands the stamp
over with the data, but only to recvmsg, which asyncio's transports (stdlib and
uvloop alike) never call. So the connection makes its own reads on a
non-blocking socket: wait until the socket is readable, then recvmsg. TLS runs
in memory on top (ssl.SSLObject between two MemoryBIOs).

For TCP the stamp of a read is that of the latest segment it consumed, and
segments that waited together in the socket were merged under the latest stamp.
The reads that may carry the first byte of an answer are therefore kept small:
plain HTTP reads that byte alone; TLS reads record by record until a record
yields application data (TLS 1.3 session tickets arrive first and are not the
answer), then in large chunks. What the kernel cannot tell: once anything
arrives behind the first byte before it is read (more of the answer, the
peer's close_notify or FIN), the merge moves the stamp to that later arrival.
The date is then still no later than the read, but no longer the first byte's.

The reading surface is small (read, at_eof, unread, arrival): HTTP is
parsed by h11 on top (_http.py), which needs nothing more.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import sys
import time

# Linux's SO_TIMESTAMPNS (SCM_TIMESTAMPNS in the answer); the socket module has no name for it.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")  # struct timespec on 64-bit Linux: seconds, nanoseconds (CLOCK_REALTIME)
_ANCILLARY_BYTES = 64  # room for the one timestamp message (32 bytes)
_READ_BYTES = 65536
_TLS_HEADER_BYTES = 5
# Largest TLS ciphertext fragment (RFC 5246 6.2.3); a longer length field is the
# TLS library's to reject, we only need not to wait for it.
_TLS_MAX_FRAGMENT = 16384 + 2048


class Connection:
    """A connected non-blocking TCP socket, optionally with TLS, read from and
    written to by one task. abort() closes it at once."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()  # plaintext put back (unread), served first
        self._eof = False
        self._ancillary: list = []  # ancillary data of the latest recvmsg
        self._stamp: list = []  # ancillary data dating the plaintext the latest read returned
        self._tls: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._record_by_record = False
        self._waiter: asyncio.Future | None = None  # the read waiting for the socket, if one is
        self._watching = False  # registered with the loop as a reader
        self._sent = False  # sent since the latest read: what answers it is not there yet

    @classmethod
    async def connect(cls, family: int, address: tuple) -> Connection:
        """Connect to address (a socket address of `family`); OSError as the kernel said it."""
        loop = asyncio.get_running_loop()
        sock = stream_socket(family, kernel_timestamps=True)
        conn = cls(sock)
        try:
            # Watched as a reader from the start, so that the wait below shares the
            # loop's registration of the socket (uvloop: one poll handle for both).
            conn._watch()
            # Not loop.sock_connect: uvloop's resolves the address again, through
            # its thread pool, on every call. The address is already numeric.
            try:
                sock.connect(address)
            except (BlockingIOError, InterruptedError):
                await _writable(loop, conn._fd)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
        except BaseException:
            conn.abort()
            raise
        return conn

    # ------------------------------------------------------------------ writing and closing

    async def send(self, data: bytes) -> None:
        """Hand data to the kernel (encrypted first under TLS)."""
        if self._tls is not None:
            self._tls.write(data)
            # Carries the handshake's last message too (TLS 1.3's client Finished), kept back for this.
            data = self._outgoing.read()  # type: ignore[union-attr]
        await self._send(data)

    async def _send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self._sock, data)
        self._sent = True

    def abort(self) -> None:
        """Close at once; a probe owes the peer no goodbye. Never raises."""
        _close(self._loop, self._sock)

    # ------------------------------------------------------------------ TLS

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLObject:
        """The TLS handshake; ssl.SSLError (SSLEOFError when the peer closes) if it fails."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
        if self._buffer:  # bytes that came after a proxy's answer belong to the TLS stream
            incoming.write(self._buffer)
            self._buffer.clear()
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                await self._send(outgoing.read())
            data = await self._recv(_READ_BYTES)
            if not data:
                raise ssl.SSLEOFError("the peer closed the connection during the TLS handshake")
            incoming.write(data)
        # What the handshake still has to send (TLS 1.3: our Finished) leaves with the request.
        self._tls, self._incoming, self._outgoing = tls, incoming, outgoing
        self._record_by_record = True
        return tls

    # ------------------------------------------------------------------ reading

    def arrival(self) -> float | None:
        """When the bytes the latest read returned reached this host, by the
        kernel's stamp, on the time.perf_counter clock; None if it gave none."""
        for level, kind, data in self._stamp:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) == _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack(data)
                # The stamp is CLOCK_REALTIME, perf_counter CLOCK_MONOTONIC: shift by their offset now.
                return seconds + nanoseconds * 1e-9 - _realtime_offset()
        return None

    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of the stream: what a parser read past its
        message (the start of a tunnel behind a proxy's answer to CONNECT)."""
        self._buffer[:0] = data

    async def read(self, n: int) -> bytes:
        """Up to n bytes, b"" at the end of the stream."""
        if self._buffer:
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data
        if self._eof or n <= 0:
            return b""
        return await self._receive(n)

    async def _receive(self, n: int) -> bytes:
        """Up to n bytes of plaintext from the connection; b"" (and EOF noted) at its end."""
        if self._tls is None:
            data = await self._recv(n)
            self._stamp = self._ancillary
        else:
            data = await self._receive_tls(n)
        if not data:
            self._eof = True
        return data

    async def _receive_tls(self, n: int) -> bytes:
        tls, incoming = self._tls, self._incoming
        assert tls is not None and incoming is not None
        while True:
            try:
                data = tls.read(n)  # b"" after the peer's close_notify
            except ssl.SSLWantReadError:
                pass
            else:
                if data:
                    self._record_by_record = False
                return data
            if self._record_by_record:
                got = await self._recv_record(incoming)
            else:
                got = await self._recv(_READ_BYTES)
                incoming.write(got)
                self._stamp = self._ancillary
            if not got:
                # The peer closed without close_notify: the end of the stream, as asyncio has it.
                return b""

    async def _recv_record(self, incoming: ssl.MemoryBIO) -> bytes:
        """Move one TLS record from the socket to `incoming`, dated by its
        header: the record's first bytes are the answer's first if it is the
        answer. Returns the header (short or empty at EOF)."""
        header = await self._recv_exactly(_TLS_HEADER_BYTES)
        incoming.write(header)
        if len(header) < _TLS_HEADER_BYTES:
            return header
        stamp = self._ancillary
        incoming.write(await self._recv_exactly(min(int.from_bytes(header[3:5], "big"), _TLS_MAX_FRAGMENT)))
        self._stamp = stamp
        return header

    async def _recv_exactly(self, n: int) -> bytes:
        """n bytes from the socket, fewer only at EOF."""
        data = await self._recv(n)
        while data and len(data) < n:
            more = await self._recv(n - len(data))
            if not more:
                break
            data += more
        return data

    async def _recv(self, n: int) -> bytes:
        """Up to n bytes from the socket, b"" at EOF; waits until there are some."""
        if self._sent:
            # Right after sending, the answer cannot be there yet: skip a read bound to fail.
            self._sent = False
            await self._readable()
        while True:
            try:
                data, self._ancillary, _, _ = self._sock.recvmsg(n, _ANCILLARY_BYTES)
                return data
            except (BlockingIOError, InterruptedError):
                await self._readable()

    # The socket stays registered with the loop from one wait to the next:
    # registering costs uvloop a poll handle and several system calls each time.
    # The price is an occasional wake-up with nothing to read (the stdlib loop
    # may report an event again after the woken task has read it), which the
    # retry in _recv absorbs.

    async def _readable(self) -> None:
        if not self._watching:
            self._watch()
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _watch(self) -> None:
        self._loop.add_reader(self._fd, self._on_readable)
        self._watching = True

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # Nobody reads now: stop watching, or the loop would report the same bytes on every turn.
            self._loop.remove_reader(self._fd)
            self._watching = False
        elif not waiter.done():
            waiter.set_result(None)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


def _wake(waiter: asyncio.Future) -> None:
    # The loop may report the socket again before the woken task unregisters it.
    if not waiter.done():
        waiter.set_result(None)


def stream_socket(family: int, *, kernel_timestamps: bool = False) -> socket.socket:
    """A TCP socket of `family`, not yet connected, as both transports use it:
    non-blocking, with TCP_NODELAY (as asyncio's transports do: the request
    leaves in one segment, at once) and, if asked, kernel arrival times; closed
    again if setting it up fails."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kernel_timestamps:
            _ask_for_timestamps(sock)
    except BaseException:
        sock.close()  # not yet known to the loop
        raise
    return sock


def _realtime_offset() -> float:
    """time.time() - time.perf_counter(), read so that a thread preempted between
    the two reads (a loaded machine) does not skew it: the narrowest of three brackets."""
    width, offset = float("inf"), 0.0
    for _ in range(3):
        before = time.perf_counter()
        now = time.time()
        after = time.perf_counter()
        if after - before < width:
            width, offset = after - before, now - (before + after) / 2
    return offset


def _ask_for_timestamps(sock: socket.socket) -> None:
    """Have the kernel date received data; without it, reads are dated when they happen."""
    if sys.platform.startswith("linux"):
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            pass


def _close(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Unregister the socket from the loop, then close it; never raises.

    Unregistering first matters: once closed, its descriptor number may be
    handed to the next socket while the loop still watches the old one."""
    try:
        fd = sock.fileno()
        if fd != -1:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
    except Exception:  # noqa: BLE001, S110 - a closed loop or socket: nothing left to unregister
        pass
    try:
        sock.close()
    except OSError:  # closing is all that is asked; the descriptor is gone either way
        pass
