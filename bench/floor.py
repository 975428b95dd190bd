"""The floor: the barest Python doing one probe's work, as CPU per connection.

asyncio streams: connect, start_tls with verification (CA file, host name),
one GET, read the answer, close; `--in-flight` connections at a time, no pacing.
Prints one JSON line: {"connections", "errors", "cpu_s", "cpu_ms_per_conn", "wall_s"}.

    python bench/floor.py --ip 127.x.y.1 --ca ROOT.pem --count 3000 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time


async def one(ip: str, port: int, name: str, ctx: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        await writer.start_tls(ctx, server_hostname=name)
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(65536)
    finally:
        writer.transport.abort()


async def main(args: argparse.Namespace) -> dict:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    names = [f"t{i:05d}.bench.lab" for i in range(args.names)]
    queue = iter(range(args.count))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for i in queue:
            try:
                await one(args.ip, args.port, names[i % len(names)], ctx)
            except Exception:  # noqa: BLE001
                errors += 1

    # Warm up (imports, first handshakes), then measure.
    await asyncio.gather(*(one(args.ip, args.port, names[0], ctx) for _ in range(10)))
    t0, c0 = time.monotonic(), os.times()
    await asyncio.gather(*(worker() for _ in range(args.in_flight)))
    t1, c1 = time.monotonic(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"connections": args.count, "errors": errors, "cpu_s": cpu,
            "cpu_ms_per_conn": 1000 * cpu / args.count, "wall_s": t1 - t0}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--uvloop", action="store_true")
    ns = parser.parse_args()
    if ns.uvloop:
        import uvloop
        uvloop.install()
    print(json.dumps(asyncio.run(main(ns))))
