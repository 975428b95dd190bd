"""A TLS server that answers every GET `--delay` seconds after the request arrived
(the fidelity run's injected server time), in its own process.

"Arrived" is the kernel's receive timestamp of the segment that completed the
request's head (SO_TIMESTAMPNS, read with recvmsg), not the moment this
server's loop got round to reading it: with 500 handshakes at once the loop
reads some requests hundreds of milliseconds late, and a delay counted from
that read would inject far more than `--delay`. The answer and close_notify
leave in one send and the FIN right after it, so nothing trails the answer
long enough to move the client's receive timestamp.

Where the server is late all the same (its loop busy past the due time), the
hold it really applied is known: for every answer it records the Host and path
it answered and the hold (departure minus arrival, both on CLOCK_REALTIME). On
SIGTERM it writes them as JSON to `--stats`, with the distribution of its
lateness, how late its loop read a request at worst, and the most connections
it had open at once (the probes really in flight).

    python bench/delay_server.py --ip 127.x.y.1 --port 8443 --cert CHAIN --key KEY --stats out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import ssl
import struct
import sys
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n"
_SO_TIMESTAMPNS = 35  # Linux; the socket module has no name for it
_TIMESPEC = struct.Struct("qq")
_SPIN = 0.0005  # the last half millisecond is waited for by spinning, not by the loop's timer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--delay", type=float, default=0.050)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--plain-loop", action="store_true", help="stdlib asyncio instead of uvloop")
    args = parser.parse_args()
    if not args.plain_loop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    asyncio.run(serve(args))


class Answered:
    def __init__(self) -> None:
        self.open = 0  # connections accepted and not closed yet
        self.peak_open = 0  # the most at once: how many probes were really in flight
        self.host: list[str] = []
        self.path: list[str] = []
        self.hold: list[float] = []  # seconds from the request's arrival to the answer's departure
        self.read_late: list[float] = []  # seconds from the request's arrival to our loop reading it


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()

    def on_readable() -> None:
        loop.remove_reader(fd)
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, incoming: ssl.MemoryBIO) -> float | None:
    """Feed what the socket holds to TLS; the kernel's arrival time of it (CLOCK_REALTIME)."""
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(65536, 64)
            break
        except BlockingIOError:
            await _readable(loop, sock.fileno())
    if not data:
        raise ConnectionError("closed by the client")
    incoming.write(data)
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            return seconds + nanoseconds / 1e9
    return None


async def handle(sock: socket.socket, context: ssl.SSLContext, delay: float, answered: Answered) -> None:
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    arrival = None  # of the latest bytes received: the request may come with the handshake's last flight
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    await loop.sock_sendall(sock, outgoing.read())
                arrival = await _receive(loop, sock, incoming)
        if outgoing.pending:
            await loop.sock_sendall(sock, outgoing.read())
        request = b""
        while b"\r\n\r\n" not in request:
            try:
                request += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            arrival = await _receive(loop, sock, incoming)
        read_at = time.time()
        if arrival is None:  # no stamp: count from the read (and it shows in read_late as 0)
            arrival = read_at
        due = arrival + delay
        if due - time.time() > _SPIN:
            await asyncio.sleep(due - time.time() - _SPIN)
        while time.time() < due:
            pass
        tls.write(RESPONSE)
        try:
            tls.unwrap()  # close_notify into `outgoing`
        except ssl.SSLWantReadError:
            pass
        await loop.sock_sendall(sock, outgoing.read())  # answer and close_notify in one segment
        departed = time.time()
        lines = request.split(b"\r\n")
        host = next((line[5:].strip().decode("latin-1") for line in lines if line[:5].lower() == b"host:"), "")
        answered.host.append(host.split(":")[0])
        answered.path.append(lines[0].split(b" ")[1].decode("latin-1") if lines[0].count(b" ") >= 2 else "")
        answered.hold.append(departed - arrival)
        answered.read_late.append(read_at - arrival)
    except (OSError, ssl.SSLError, ConnectionError, struct.error):
        pass  # a client that went away: no answer, no record
    finally:
        answered.open -= 1
        sock.close()


async def serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.options |= ssl.OP_NO_TICKET
    answered = Answered()
    loop = asyncio.get_running_loop()
    listener = socket.create_server((args.ip, args.port), backlog=4096)
    listener.setblocking(False)
    tasks: set[asyncio.Task] = set()

    async def accept() -> None:
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: say so and go on
                print(f"delay_server: accept failed: {exc}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.1)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                sock.close()
                continue
            answered.open += 1
            answered.peak_open = max(answered.peak_open, answered.open)
            task = asyncio.create_task(handle(sock, context, args.delay, answered))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    acceptor = asyncio.create_task(accept())
    await stop.wait()
    acceptor.cancel()
    listener.close()
    late = sorted(h - args.delay for h in answered.hold)
    n = len(late)
    q = (lambda p: late[min(n - 1, int(p * n))] * 1000) if n else (lambda p: 0.0)
    with open(args.stats, "w") as fh:
        json.dump({"answers": n, "late_ms_p50": q(0.5), "late_ms_p99": q(0.99), "late_ms_max": q(1.0),
                   "read_late_ms_max": max(answered.read_late, default=0.0) * 1000,
                   "peak_connections": answered.peak_open,
                   "host": answered.host, "path": answered.path, "hold": answered.hold}, fh)


if __name__ == "__main__":
    main()
