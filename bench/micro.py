"""In-process micro-benchmark: the exporter's own job runner (probe + assessment)
driven like the floor (N jobs, `--in-flight` at a time, no pacing), to see
CPU per probe without the scheduler, the web side or process noise.

    python bench/micro.py --ip 127.x.y.1 --ca ROOT.pem [--count 3000] [--profile out.prof] [--uvloop]
    python bench/micro.py --lab        (starts its own nginx)
    python bench/micro.py --lab --stapling   (every handshake asks for a stapled OCSP response,
                                              as a MAPS group's do: what pyOpenSSL's TLS costs)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def run(args: argparse.Namespace) -> dict:
    from exporter.catalogue import catalogue_groups
    from exporter.config import parse_config
    from exporter.runtime import Exporter

    urls = [f"https://t{i:05d}.bench.lab/" for i in range(args.names)]
    text = "\n".join([
        "interval: 60s", "concurrency: 64", f'connect_to: ["::{args.ip}:"]', f"tls: {{ca_file: {args.ca}}}",
        "groups:", *[f"  {g}: {{enabled: false}}" for g in catalogue_groups()],
        "  bench:", "    targets:", *[f'      - "{u}"' for u in urls],
    ])
    exporter = Exporter(parse_config(text))
    jobs = exporter.config.jobs()
    runner = exporter.scheduler.runner
    env = exporter.env
    if args.stapling:
        import dataclasses

        env = dataclasses.replace(env, ssl_context=env.stapling_context)
    failures = 0

    async def one(job) -> None:
        nonlocal failures
        outcome = await runner(job, env)
        exporter.store.record(job, outcome)
        if not outcome.probe.success:
            failures += 1

    await asyncio.gather(*(one(jobs[0]) for _ in range(10)))  # warm-up
    queue = iter(range(args.count))

    async def worker() -> None:
        for i in queue:
            await one(jobs[i % len(jobs)])

    profiler = cProfile.Profile() if args.profile else None
    t0, c0 = time.monotonic(), os.times()
    if profiler:
        profiler.enable()
    await asyncio.gather(*(worker() for _ in range(args.in_flight)))
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    t1, c1 = time.monotonic(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"probes": args.count, "failures": failures, "cpu_s": cpu, "cpu_ms_per_probe": 1000 * cpu / args.count,
            "wall_s": t1 - t0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip")
    parser.add_argument("--ca")
    parser.add_argument("--lab", action="store_true")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--profile")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--stapling", action="store_true", help="handshakes through _staple.py (MAPS groups' TLS)")
    parser.add_argument("--floor", action="store_true", help="also run bench/floor.py against the same nginx")
    args = parser.parse_args()
    lab = None
    if args.lab:
        from benchlab import Lab
        lab = Lab.create()
        lab.start_nginx()
        args.ip, args.ca = lab.ip, str(lab.ca_file)
    try:
        if args.uvloop:
            import uvloop
            uvloop.install()
        print(json.dumps(asyncio.run(run(args))))
        if args.floor:
            import subprocess
            out = subprocess.run([sys.executable, str(Path(__file__).parent / "floor.py"), "--ip", args.ip, "--ca",
                                  args.ca, "--count", str(args.count)] + (["--uvloop"] if args.uvloop else []),
                                 capture_output=True, text=True, check=True)
            print("floor", out.stdout.strip())
    finally:
        if lab:
            lab.close()


if __name__ == "__main__":
    main()
