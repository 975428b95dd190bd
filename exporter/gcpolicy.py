"""When the process pays for full garbage collections.

CPython runs a full (generation 2) collection whenever a quarter of the
long-lived objects are new since the last one. With 10,000 targets the
exporter keeps a few hundred thousand live objects (results, certificates,
jobs) and replaces a result every few milliseconds, so that rule fired about
every 10 s, each time pausing the process for 60-160 ms and finding no
garbage at all (`BENCH_GC_LOG=1 python bench/run.py scale`). A pause delays
every probe's reads and whatever /metrics scrape is streaming.

So: the young generations are collected as CPython likes, and the full
collection runs on a fixed period instead. Cyclic garbage (rare here) lives at
most one period.
"""

from __future__ import annotations

import asyncio
import gc

FULL_COLLECTION_INTERVAL = 60.0
# A generation-2 threshold the count of generation-1 collections never reaches.
_NEVER = 1 << 30


class FullCollections:
    """Replaces CPython's own trigger for full collections by a timer."""

    def __init__(self, interval: float = FULL_COLLECTION_INTERVAL):
        self.interval = interval
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self._saved = gc.get_threshold()
        gc.set_threshold(self._saved[0], self._saved[1], _NEVER)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="full-gc")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            gc.collect()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
