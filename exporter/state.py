"""The exporter's memory: the latest outcome per job, and running totals.

Written by the scheduler, read by the collector, the status page and `check`;
all on the event loop's thread, so no locks. Latest outcomes are immutable
objects replaced whole; counters and histograms keep counting across reloads
for jobs whose key (group, target, route) is unchanged.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Iterable

from .assess import Outcome
from .config import ProbeJob
from .metrics import LAG_BUCKETS, LATENCY_BUCKETS
from .probes import ProbeResult


class Histogram:
    """Cumulative-on-read bucket counts (kept per bucket to stay O(1) per observation)."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_float_text(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


@dataclass
class JobStats:
    successes: int = 0
    failures: int = 0
    skipped: int = 0


class ResultStore:
    def __init__(self) -> None:
        self.jobs: dict[tuple, ProbeJob] = {}
        self.latest: dict[tuple, Outcome] = {}
        self.stats: dict[tuple, JobStats] = {}
        # Probe wall time per (group, route), not per target: one observation
        # per target and interval gives a per-target histogram nothing to
        # aggregate, while 15 lines per target were a third of /metrics.
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.lag = Histogram(LAG_BUCKETS)
        self._changes = 0  # counts changes of jobs and results
        # Per job: the number of the change that last touched it (its result,
        # counters or job), so a renderer can tell what it has not seen yet.
        self.key_versions: dict[tuple, int] = {}
        # Called with a job's key after its result or its job changed (the
        # exposition cache renders that job's lines then, not at scrape time).
        self.listeners: list[Callable[[tuple], None]] = []

    def set_jobs(self, jobs: Iterable[ProbeJob]) -> None:
        old = self.jobs
        self.jobs = {job.key: job for job in jobs}
        self._changes += 1
        changed = [key for key, job in self.jobs.items() if old.get(key) is not job]
        for key in changed:
            self.key_versions[key] = self._changes
        for key in list(self.key_versions):
            if key not in self.jobs:
                del self.key_versions[key]
        for key in list(self.latest):
            if key not in self.jobs:
                del self.latest[key]
        for key in list(self.stats):
            if key not in self.jobs:
                del self.stats[key]
        for key in self.jobs:
            self.stats.setdefault(key, JobStats())
        routes = {(job.group.name, job.route.name) for job in self.jobs.values()}
        self.latency = {gr: self.latency.get(gr) or Histogram(LATENCY_BUCKETS) for gr in sorted(routes)}

    def record(self, job: ProbeJob, outcome: Outcome | ProbeResult) -> None:
        if isinstance(outcome, ProbeResult):
            outcome = Outcome(outcome)
        if job.key not in self.jobs:
            return
        self.latest[job.key] = outcome
        stats = self.stats.setdefault(job.key, JobStats())
        if outcome.probe.success:
            stats.successes += 1
        else:
            stats.failures += 1
        histogram = self.latency.get((job.group.name, job.route.name))
        if histogram is not None:
            histogram.observe(outcome.probe.duration)
        self._touch(job.key)

    def observe_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def count_skipped(self, key: tuple) -> None:
        if key in self.stats:
            self.stats[key].skipped += 1
            self._touch(key)

    def _touch(self, key: tuple) -> None:
        self._changes += 1
        self.key_versions[key] = self._changes
        for listener in self.listeners:
            listener(key)
