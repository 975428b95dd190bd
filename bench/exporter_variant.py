"""Run the exporter's CLI (as `python -m exporter` does) with what the bench
adds to see inside it, without touching the shipped files; every knob is off
unless its variable is set:

    BENCH_GC_LOG=1          log every full garbage collection and its pause
    BENCH_LOOP_LOG=1        log, each second, how late a 5 ms timer of the event
                            loop woke at worst (how long the loop was blocked)
    BENCH_BATCH_SIZE=N      the scheduler's BATCH_SIZE
    BENCH_SCRAPE_HOLD=S     the scheduler's SCRAPE_HOLD (0: probes never wait for a scrape)

    python bench/exporter_variant.py --config.file F --web.listen-address 127.0.0.1:PORT
"""

import asyncio
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if os.environ.get("BENCH_GC_LOG") == "1":
    # Log every full (generation 2) collection and its pause to stderr.
    _gc_started = [0.0]

    def _gc_timer(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            _gc_started[0] = time.perf_counter()
        else:
            print(f"gc2 {time.time():.3f} {1000 * (time.perf_counter() - _gc_started[0]):.1f} ms "
                  f"collected={info.get('collected')}", file=sys.stderr, flush=True)

    gc.callbacks.append(_gc_timer)

if os.environ.get("BENCH_BATCH_SIZE") or os.environ.get("BENCH_SCRAPE_HOLD"):
    from exporter import scheduler

    scheduler.BATCH_SIZE = int(os.environ.get("BENCH_BATCH_SIZE") or scheduler.BATCH_SIZE)
    scheduler.SCRAPE_HOLD = float(os.environ.get("BENCH_SCRAPE_HOLD") or scheduler.SCRAPE_HOLD)

if os.environ.get("BENCH_LOOP_LOG") == "1":
    from exporter import gcpolicy

    async def _loop_lag() -> None:
        window_end, worst = time.time() + 1, 0.0
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - before - 0.005)
            if time.time() >= window_end:
                print(f"loop {window_end:.3f} {1000 * worst:.1f} ms", file=sys.stderr, flush=True)
                window_end, worst = time.time() + 1, 0.0

    _start = gcpolicy.FullCollections.start
    _watchers: set = set()

    def _start_and_watch(self) -> None:  # the serve loop is running here
        _start(self)
        _watchers.add(asyncio.get_running_loop().create_task(_loop_lag()))

    gcpolicy.FullCollections.start = _start_and_watch

from exporter.cli import main  # noqa: E402

sys.exit(main())
