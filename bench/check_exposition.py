"""Checks DefenderCollector.render_exposition() against generate_latest() byte for byte, plain
and gzip, on a store filled by real probes (nginx lab) and by made-up failures
with MAPS verdicts, and times both at a given number of targets.

    python bench/check_exposition.py [--targets 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlab import Lab, host_name  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    from prometheus_client import generate_latest

    from exporter.config import parse_config
    from exporter.reasons import Reason
    from exporter.runtime import Exporter
    from exporter.assess import MapsVerdict, Outcome

    lab = Lab.create()
    try:
        lab.start_nginx()
        urls = [f"https://{host_name(i)}/" for i in range(args.targets)]
        text = lab.write_exporter_config(urls, interval=60).read_text().replace("  maps: {enabled: false}\n", "")
        exporter = Exporter(parse_config(text))
        jobs = exporter.config.jobs()
        collector = exporter.collector
        # A first render before any result; then results arrive through the listeners.
        assert collector.render_exposition() == generate_latest(exporter.collector), "empty store differs"
        sem = asyncio.Semaphore(50)

        async def one(job):
            async with sem:
                exporter.store.record(job, await exporter.assessor.run(job, exporter.env))

        await asyncio.gather(*(one(job) for job in jobs[: min(len(jobs), 300)]))
        # Made-up failures with MAPS verdicts and odd characters for the rest.
        sample = exporter.store.latest[jobs[0].key]
        for i, job in enumerate(jobs[300:]):
            probe = dataclasses.replace(sample.probe, success=False, reason=Reason.TLS_UNTRUSTED,
                                        duration=0.001 * i, started_at=1.7e9 + i)
            verdict = MapsVerdict(False, reason='x"y\\z\n', hresult="0x80072f8f", cause="tls", detail="d")
            exporter.store.record(job, Outcome(probe, revoked=bool(i % 2), intercepted=True, maps=verdict))
        for _ in range(2):
            t = time.perf_counter()
            reference = generate_latest(exporter.collector)
            t_ref = time.perf_counter() - t
            t = time.perf_counter()
            ours = collector.render_exposition()
            t_plain = time.perf_counter() - t
            t = time.perf_counter()
            ours_gz = collector.render_exposition(gzip=True)
            t_gz = time.perf_counter() - t
            if ours != reference:
                a, b = reference.decode().splitlines(), ours.decode().splitlines()
                diff = next(((i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y), (len(a), len(a), len(b)))
                print("DIFFERS at line", diff)
                return 1
            assert gzip.decompress(ours_gz) == reference, "gzip body differs"
            print(f"{len(jobs)} jobs: identical ({len(reference) / 1e6:.2f} MB plain, {len(ours_gz) / 1e6:.2f} MB gzip); "
                  f"generate_latest {t_ref * 1000:.1f} ms, render_exposition {t_plain * 1000:.1f} ms plain, "
                  f"{t_gz * 1000:.1f} ms gzip")
        return 0
    finally:
        lab.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=2000)
    sys.exit(asyncio.run(main(parser.parse_args())))
