"""A TLS server that answers every GET exactly `--delay` seconds after the request
arrived (the fidelity run's injected server time). Its own process; uvloop when
installed, so that its lateness stays small; it measures that lateness itself
(time of the write minus the time the request's head was complete, minus the
delay) and writes the distribution as JSON to `--stats` when stopped (SIGTERM).

    python bench/delay_server.py --ip 127.x.y.1 --port 8443 --cert CHAIN --key KEY --stats out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n"


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


async def serve(args: argparse.Namespace) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.options |= ssl.OP_NO_TICKET
    late: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            arrived = time.perf_counter()
            await asyncio.sleep(args.delay - 0.0005)
            while time.perf_counter() - arrived < args.delay:  # the last half millisecond exactly
                pass
            writer.write(RESPONSE)
            late.append(time.perf_counter() - arrived - args.delay)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, args.ip, args.port, ssl=ctx, backlog=4096, ssl_handshake_timeout=30)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    late.sort()
    n = len(late)
    q = (lambda p: late[min(n - 1, int(p * n))] * 1000) if n else (lambda p: 0.0)
    with open(args.stats, "w") as fh:
        json.dump({"answers": n, "late_ms_p50": q(0.5), "late_ms_p99": q(0.99), "late_ms_max": q(1.0)}, fh)


if __name__ == "__main__":
    main()
