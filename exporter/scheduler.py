"""The probe scheduler: every job on its interval, spread out, bounded.

- The first round starts at once (bounded by `concurrency`, BATCH_SIZE probes
  a turn of the event loop), so a new user sees results within seconds.
- After that each job keeps a fixed slot in its interval: the jobs of one
  interval are spread evenly over it, so there is no thundering herd.
- A global semaphore bounds probes in flight; each job has its own time
  budget (budget.py: the probe's timeout, its assessment's share, and the
  hard limit this scheduler waits), so a hanging endpoint holds one slot for
  at most its budget and never delays /metrics.
- Results land in a ResultStore as immutable objects; a scrape only reads it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from typing import Awaitable, Callable, Iterable

from .config import ProbeJob
from .probes import ProbeEnv
from .state import ResultStore

log = logging.getLogger("exporter.scheduler")

# Probes whose slots fall within this window are started in one wake-up (up to
# BATCH_SIZE of them), up to this much before their slot (never after it): each
# sleep-to-wake transition of the process costs far more CPU than a probe's own
# work at low rates (see docs/performance.md), and at this grain the load is
# still spread evenly.
# Capped at BATCH_FRACTION of the shortest interval, so short intervals keep
# a fine spread (a tenth: 5 % cost 30 % more CPU per probe at a 10 s interval).
BATCH_WINDOW = 1.0
BATCH_FRACTION = 0.1
# At most this many probes start in one wake-up; the rest of the window waits
# for its own slots. A wake-up's handshakes become ready together, and the loop
# runs every ready callback before it gets back to a /metrics response that is
# streaming. At 10,000 targets a minute (167 probes a 1 s window) the loop's
# worst stall each second was 52 ms at the median without a cap, 35 ms with 32
# and 16 ms with 16, at the same CPU per probe (docs/performance.md). Windows
# of fewer probes than this are unchanged.
BATCH_SIZE = 16
# While a /metrics response is being written, a batch that falls due waits for
# it, this long at most: the batch's handshakes would take the turns of the
# event loop that the response needs to move its megabytes. The wait counts as
# scheduler lag. Responses are waited for only in their first SCRAPE_HOLD_AGE
# (a 28 MB scrape takes 30-120 ms here): a client that reads slowly, or stops
# reading, must not hold back the probes for longer than that.
SCRAPE_HOLD = 0.1
SCRAPE_HOLD_AGE = 1.0
# After its first probe, a job's next slot is at least this part of its interval away.
FIRST_GAP = 0.5

JobRunner = Callable[[ProbeJob, ProbeEnv], Awaitable[object]]


class Scrapes:
    """The /metrics responses being written right now (web.py reports them)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.streaming = 0
        self._busy_since = 0.0  # when `streaming` last went from 0 to 1
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self) -> None:
        if self.streaming == 0:
            self._busy_since = self.clock()
        self.streaming += 1
        self._idle.clear()

    def finished(self) -> None:
        self.streaming -= 1
        if self.streaming == 0:
            self._idle.set()

    async def wait(self, limit: float) -> None:
        """Until no response is being written, or `limit` seconds; not at all
        when responses have been going out for SCRAPE_HOLD_AGE already."""
        if self.streaming and self.clock() - self._busy_since < SCRAPE_HOLD_AGE:
            try:
                await asyncio.wait_for(self._idle.wait(), limit)
            except TimeoutError:
                pass


class Scheduler:
    def __init__(
        self, store: ResultStore, env: ProbeEnv, jobs: Iterable[ProbeJob], *, concurrency: int,
        runner: JobRunner, clock: Callable[[], float] = time.monotonic,
    ):
        """`clock`: the monotonic time the schedule is kept in; the event loop
        must sleep in the same time (tests pass a virtual loop's loop.time)."""
        self.store = store
        self.env = env
        self.runner = runner
        self._semaphore = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._jobs: dict[tuple, ProbeJob] = {}
        self._offsets: dict[tuple, float] = {}
        self._due: dict[tuple, float] = {}
        self._first: set[tuple] = set()  # jobs whose first probe has not started
        self._in_flight: dict[tuple, asyncio.Task] = {}
        self._heap: list[tuple[float, int, tuple]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self.clock = clock
        self._epoch = clock()
        self._window = BATCH_WINDOW
        self.scrapes = Scrapes(clock)  # web.py marks its /metrics responses here
        self.set_jobs(jobs)

    # ------------------------------------------------------------------ jobs

    def set_jobs(self, jobs: Iterable[ProbeJob], *, env: ProbeEnv | None = None, concurrency: int | None = None) -> None:
        """Install a (new) job list. Unchanged jobs keep their slot and their
        history; new jobs start at once; removed jobs vanish from the store."""
        if env is not None:
            self.env = env
        if concurrency is not None and concurrency != self._concurrency:
            # In-flight probes release into the old semaphore; new ones use the new bound.
            self._semaphore = asyncio.Semaphore(concurrency)
            self._concurrency = concurrency
        new = {job.key: job for job in jobs}
        for key in list(self._jobs):
            if key not in new:
                del self._jobs[key]
                self._due.pop(key, None)
                self._first.discard(key)
        now = self.clock()
        old_jobs = dict(self._jobs)
        self._jobs = new
        self._offsets = self._spread(new.values())
        self._window = min([BATCH_WINDOW] + [job.group.interval * BATCH_FRACTION for job in new.values()])
        for key, job in new.items():
            old = old_jobs.get(key)
            if old is None:
                self._first.add(key)
                self._schedule(key, now)
            elif old.group.interval != job.group.interval:
                self._schedule(key, self._next_slot(key, now))
        self.store.set_jobs(new.values())
        self._wake.set()

    @staticmethod
    def _spread(jobs: Iterable[ProbeJob]) -> dict[tuple, float]:
        """Even offsets within each interval: job i of n gets i/n of it."""
        by_interval: dict[float, list[tuple]] = {}
        for job in jobs:
            by_interval.setdefault(job.group.interval, []).append(job.key)
        offsets = {}
        for interval, keys in by_interval.items():
            for i, key in enumerate(sorted(keys)):
                offsets[key] = interval * i / len(keys)
        return offsets

    def _next_slot(self, key: tuple, after: float) -> float:
        """The first slot of this job strictly later than `after`."""
        interval = self._jobs[key].group.interval
        base = self._epoch + self._offsets[key]
        k = math.floor((after - base) / interval) + 1
        return base + k * interval

    def _following_slot(self, key: tuple, due: float, started: float, *, first: bool = False) -> float:
        """The slot after the one starting now.

        Probes may start up to a window *before* their slot, so "the first slot
        after max(started, due)" would be computed from `due` itself, where
        floating-point rounding can give `due` back: the same slot again, and a
        scheduler spinning on it. Half an interval past the slot is never
        ambiguous; a probe that started later than that takes the first slot
        after its start."""
        interval = self._jobs[key].group.interval
        if first:
            return self._next_slot(key, started + interval * FIRST_GAP)
        return self._next_slot(key, max(started, due + interval / 2))

    def _schedule(self, key: tuple, due: float) -> None:
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Run until cancelled; cancelling also cancels the probes in flight."""
        try:
            while True:
                await self._wait_for_due()
                await self.scrapes.wait(SCRAPE_HOLD)
                # What is due within the window starts now, up to BATCH_SIZE probes:
                # one wake-up per window at low rates, per BATCH_SIZE probes at high ones.
                horizon = self.clock() + self._window
                started = 0
                while self._heap and self._heap[0][0] <= horizon and started < BATCH_SIZE:
                    due, _, key = heapq.heappop(self._heap)
                    if self._due.get(key) != due:
                        continue  # superseded by a reschedule or removed
                    semaphore = self._semaphore  # a reload may swap it; release the one we took
                    await semaphore.acquire()
                    self._start(key, due, semaphore)
                    started += 1
                if started == BATCH_SIZE:
                    # More may be overdue (a first round, a reload): let the loop run
                    # the probes just started, and any scrape, before the next batch.
                    await asyncio.sleep(0)
        finally:
            for task in list(self._in_flight.values()):
                task.cancel()
            if self._in_flight:
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _wait_for_due(self) -> None:
        """Sleep until the first slot is due (or the job list changed)."""
        while True:
            self._wake.clear()
            if self._heap:
                delay = self._heap[0][0] - self.clock()
                if delay <= 0:
                    return
            else:
                delay = None
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                return

    def _start(self, key: tuple, due: float, semaphore: asyncio.Semaphore) -> None:
        job = self._jobs.get(key)
        if job is None:  # removed by a reload while we waited for a slot
            semaphore.release()
            return
        started = self.clock()
        first = key in self._first
        self._first.discard(key)
        if not first:
            self.store.observe_lag(max(0.0, started - due))
        # The next slot is fixed now, whatever this probe does; a probe still
        # running at its next slot makes that round skip (timeout <= interval).
        # After the first round, a job's own slot comes at least half an
        # interval later: slots that fell inside a long first round (10,000
        # jobs take ~20 s) would otherwise queue up behind it and start late.
        self._schedule(key, self._following_slot(key, due, started, first=first))
        if key in self._in_flight:
            semaphore.release()
            self.store.count_skipped(key)
            return
        task = asyncio.get_running_loop().create_task(self._probe(job, semaphore))
        self._in_flight[key] = task

    async def _probe(self, job: ProbeJob, semaphore: asyncio.Semaphore) -> None:
        env = self.env
        try:
            async with asyncio.timeout(job.budget.hard):
                outcome = await self.runner(job, env)
        except TimeoutError:
            log.error("probe of %s on route %s overran its timeout; its result is dropped", job.target.url, job.route.name)
            outcome = None
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in a prober must not stop the scheduler
            log.exception("probe of %s on route %s raised", job.target.url, job.route.name)
            outcome = None
        finally:
            semaphore.release()
            self._in_flight.pop(job.key, None)
        if outcome is not None and job.key in self._jobs and self._jobs[job.key] is job:
            self.store.record(job, outcome)
