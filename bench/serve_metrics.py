"""/metrics alone: how long a scrape of N targets takes, without the probing.

A server process builds the real exporter (config, store, collector, web app)
for N targets, fills the store with made-up but realistic outcomes (three
presented certificates with Microsoft-shaped names, six phases, some failures
with MAPS verdicts), and keeps replacing results at the rate the scheduler
would (N per interval) so fragments are re-rendered while it is scraped. The
client times GET /metrics to the last byte, plain and gzip, with aiohttp (as
bench/run.py scale does) and with curl.

    python bench/serve_metrics.py [--targets 10000] [--interval 60] [--scrapes 20] [--uvloop]

Use it to see what a change to the exposition buys in seconds, not minutes;
the acceptance figures come from `bench/run.py scale` (real probes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _config_text(n: int, interval: float) -> str:
    from exporter.catalogue import catalogue_groups

    lines = [f"interval: {int(interval * 1000)}ms", "timeout: 10s", "groups:"]
    lines += [f"  {g}: {{enabled: false}}" for g in catalogue_groups()]
    lines += ["  bench:", "    route: defender", "    targets:"]
    lines += [f'      - "https://t{i:05d}.bench.lab/"' for i in range(n)]
    return "\n".join(lines) + "\n"


def _outcome(i: int, now: float):
    from exporter.probes.result import CertFacts, ProbeResult, TLSFacts
    from exporter.reasons import Reason
    from exporter.assess import MapsVerdict, Outcome

    rng = random.Random(i)
    leaf = CertFacts(b"leaf%d" % i, f"CN=t{i:05d}.bench.lab,O=Microsoft Corporation,L=Redmond,ST=WA,C=US",
                     "CN=Microsoft Azure RSA TLS Issuing CA 04,O=Microsoft Corporation,C=US",
                     "33000A1B2C3D4E5F60718293A4B5C6D7E8F9", "%064x" % rng.getrandbits(256), now - 86400, now + 86400 * 90)
    inter = CertFacts(b"inter", "CN=Microsoft Azure RSA TLS Issuing CA 04,O=Microsoft Corporation,C=US",
                      "CN=DigiCert Global Root G2,OU=www.digicert.com,O=DigiCert Inc,C=US",
                      "0A43A9509B01352F899579EC7208BA50", "b" * 64, now - 86400 * 400, now + 86400 * 700)
    root = CertFacts(b"root", "CN=DigiCert Global Root G2,OU=www.digicert.com,O=DigiCert Inc,C=US",
                     "CN=DigiCert Global Root G2,OU=www.digicert.com,O=DigiCert Inc,C=US",
                     "033AF1E6A711A9A0BB2864B11D09FAE5", "c" * 64, now - 86400 * 4000, now + 86400 * 4000)
    tls = TLSFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", (leaf, inter, root), (leaf, inter, root))
    phases = tuple((p, rng.uniform(0.0001, 0.05)) for p in ("resolve", "connect", "proxy_connect", "tls",
                                                            "processing", "transfer"))
    ok = i % 10 != 0
    probe = ProbeResult(ok, None if ok else Reason.TLS_UNTRUSTED, now - rng.uniform(0, 60),
                        sum(s for _, s in phases), phases, http_status=200 if ok else 0, tls=tls)
    verdict = None if ok else MapsVerdict(False, reason="crl_unreachable", hresult="0x80072F8F",
                                          cause="winhttp_proxy_missing")
    return Outcome(probe, revoked=False, intercepted=False, maps=verdict)


def serve(args: argparse.Namespace) -> None:
    if args.uvloop:
        import uvloop
        uvloop.install()
    from aiohttp import web as aioweb

    from exporter.config import parse_config
    from exporter.runtime import Exporter
    from exporter.web import make_app

    exporter = Exporter(parse_config(_config_text(args.targets, args.interval)))
    jobs = exporter.config.jobs()
    exporter.store.set_jobs(jobs)
    now = time.time()
    outcomes = [_outcome(i, now) for i in range(len(jobs))]
    for job, outcome in zip(jobs, outcomes):
        exporter.store.record(job, outcome)

    async def churn() -> None:
        # N results per interval, in batches every 50 ms (as the batching scheduler does).
        per_tick = max(1, round(len(jobs) * 0.05 / args.interval))
        i = 0
        while True:
            await asyncio.sleep(0.05)
            for _ in range(per_tick):
                exporter.store.record(jobs[i % len(jobs)], outcomes[(i * 7) % len(jobs)])
                i += 1

    async def main() -> None:
        # Full collections on the exporter's schedule, as `python -m exporter` runs them.
        exporter.full_collections.start()
        runner = aioweb.AppRunner(make_app(exporter), access_log=None)
        await runner.setup()
        site = aioweb.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        asyncio.get_running_loop().create_task(churn())
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def client(args: argparse.Namespace, port: int) -> dict:
    import aiohttp

    out: dict = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for encoding in ("identity", "gzip"):
            times, size = [], 0
            for _ in range(args.scrapes):
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/metrics", auto_decompress=False,
                                       headers={"Accept-Encoding": encoding}) as response:
                    body = await response.read()
                times.append(time.perf_counter() - started)
                size = len(body)
                await asyncio.sleep(0.2)
            times.sort()
            out[f"aiohttp {encoding}"] = (times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], size)
    for encoding in ("identity", "gzip"):
        times = []
        for _ in range(args.scrapes):
            result = subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Accept-Encoding: {encoding}",
                                     "-w", "%{time_total} %{size_download}", f"http://127.0.0.1:{port}/metrics"],
                                    capture_output=True, text=True, check=True)
            seconds, size = result.stdout.split()
            times.append(float(seconds))
            time.sleep(0.2)
        times.sort()
        out[f"curl {encoding}"] = (times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], int(size))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="append the figures to this file")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return 0
    sys.path.insert(0, str(ROOT / "bench"))
    from benchlab import free_port

    port = free_port()
    argv = [sys.executable, __file__, "--serve", "--port", str(port), "--targets", str(args.targets),
            "--interval", str(args.interval)] + (["--uvloop"] if args.uvloop else [])
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        started = time.monotonic()
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        print(f"{args.targets} targets filled in {time.monotonic() - started:.1f} s")
        results = asyncio.run(client(args, port))
    finally:
        server.terminate()
        server.wait(10)
    for name, (p50, p99, size) in results.items():
        print(f"{name:16} p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  {size / 1e6:6.2f} MB")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"targets": args.targets, "uvloop": args.uvloop,
                                **{k: {"p50_ms": v[0] * 1000, "p99_ms": v[1] * 1000, "bytes": v[2]}
                                   for k, v in results.items()}}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
