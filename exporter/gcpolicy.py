"""When the process pays for full garbage collections.

CPython runs a full (generation 2) collection whenever a quarter of the
long-lived objects are new since the last one. With 10,000 targets the
exporter keeps a few hundred thousand live objects (results, certificates,
jobs) and replaces a result every few milliseconds, so that rule fired about
every 10 s, each time pausing the process for 60-160 ms and finding no
garbage at all (`BENCH_GC_LOG=1 python bench/run.py scale`). A pause delays
every probe's reads and whatever /metrics scrape is streaming.

So: the young generations are collected as CPython likes, and the full
collection runs about once a period instead, right after a /metrics response
has gone out when there is one (the next scrape is then a scrape interval
away), else at the latest half a period late. Cyclic garbage (rare here)
lives at most one and a half periods.
"""

from __future__ import annotations

import asyncio
import gc
import time

FULL_COLLECTION_INTERVAL = 60.0
# A generation-2 threshold the count of generation-1 collections never reaches.
_NEVER = 1 << 30

class FullCollections:
    """Replaces CPython's own trigger for full collections by a schedule."""

    def __init__(self, interval: float = FULL_COLLECTION_INTERVAL):
        self.interval = interval
        self.due = 0.0
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        self._saved = gc.get_threshold()
        gc.set_threshold(self._saved[0], self._saved[1], _NEVER)
        self.due = time.monotonic() + self.interval
        self._task = asyncio.get_running_loop().create_task(self._run(), name="full-gc")

    def collect(self) -> None:
        gc.collect()
        self.due = time.monotonic() + self.interval

    async def _run(self) -> None:
        # The backstop: when no scrape came along, collect half a period late.
        while True:
            await asyncio.sleep(max(0.0, self.due + self.interval / 2 - time.monotonic()))
            if time.monotonic() >= self.due + self.interval / 2:
                self.collect()

    @property
    def running(self) -> bool:
        return self._task is not None

    def scrape_finished(self) -> None:
        """Called after a /metrics response went out: a quiet moment to collect, if one is due."""
        if self.running and time.monotonic() >= self.due:
            self.collect()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
