"""The scheduler with real probes against lab servers: first round at once, spread
afterwards, bounded concurrency, a hanging endpoint delaying nobody."""

from __future__ import annotations

import asyncio
import time

from lab.servers import Delay, NeverAnswer, Ok
from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, lab_config

from conftest import free_port
from exporter.assess import Assessor
from exporter.config import load_config
from exporter.probes import ProbeEnv
from exporter import scheduler
from exporter.scheduler import Scheduler
from exporter.state import ResultStore


def _plain_targets(lab_servers, n, behaviour):
    """n plain-HTTP lab hosts (distinct names, one server), as (urls, connect_to)."""
    server = lab_servers.serve(behaviour, port=80)
    urls = [f"http://host{i}.lab.example/" for i in range(n)]
    return urls, [f"host{i}.lab.example:80:{server.ip}:80" for i in range(n)], server


class Recorder:
    """Wraps the real job runner to note when probes start and how many run at once."""

    def __init__(self, config):
        self.assessor = Assessor(config)
        self.starts: list[tuple[float, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, job, env):
        self.starts.append((time.monotonic(), job.target.url))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.assessor.run(job, env)
        finally:
            self.in_flight -= 1


def _run_scheduler(config, seconds: float):
    async def main():
        store = ResultStore()
        recorder = Recorder(config)
        scheduler = Scheduler(store, ProbeEnv.from_config(config), config.jobs(),
                              concurrency=config.concurrency, runner=recorder)
        started = time.monotonic()
        task = asyncio.create_task(scheduler.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return store, recorder, started

    return asyncio.run(main())


def _run_on_healthy_targets(tmp_path, lab_servers, n: int, seconds: float):
    """The scheduler on n healthy plain-HTTP targets at a 2 s interval, for `seconds`."""
    urls, connect_to, _ = _plain_targets(lab_servers, n, Ok())
    config = load_config(lab_config(tmp_path, {"intranet": urls}, connect_to=connect_to,
                                    interval="2s", timeout="1s"))
    return _run_scheduler(config, seconds)


def test_first_round_at_once_then_spread_over_the_interval(tmp_path, lab_servers):
    store, recorder, started = _run_on_healthy_targets(tmp_path, lab_servers, 10, 4.2)
    first = [t - started for t, _ in recorder.starts[:10]]
    assert max(first) < 0.5, "the first round starts at once"
    assert len({u for _, u in recorder.starts[:10]}) == 10
    later = sorted(t - started for t, _ in recorder.starts[10:])
    assert len(later) >= 10, "every target is probed again within the next interval"
    second = [t for t in later if t < first[0] + 4.0][:10]
    # Ten jobs in a 2 s interval: slots 0.2 s apart. Slots within one batching
    # window (a tenth of the interval: 0.2 s) may start in one wake-up, so at
    # most two together; over the interval they stay spread.
    assert scheduler.BATCH_FRACTION * 2.0 <= 0.2
    assert max(_bunches(second, 0.05)) <= 2, second
    assert second[-1] - second[0] > 1.4, second
    assert store.lag.count >= 10
    assert all(key in store.latest for key in store.jobs)


def _bunches(times: list[float], gap: float) -> list[int]:
    """Sizes of the groups of start times that lie closer than `gap` to each other."""
    bunches, previous = [], None
    for t in times:
        if previous is not None and t - previous < gap:
            bunches[-1] += 1
        else:
            bunches.append(1)
        previous = t
    return bunches


def test_a_wake_up_starts_at_most_a_batch(tmp_path, lab_servers, monkeypatch):
    # 40 jobs in 2 s: slots 50 ms apart, four or five to a 0.2 s window.
    monkeypatch.setattr(scheduler, "BATCH_SIZE", 3)
    _, recorder, started = _run_on_healthy_targets(tmp_path, lab_servers, 40, 3.5)
    first = [t - started for t, _ in recorder.starts[:40]]
    assert max(first) < 0.5, "the first round still starts at once, a batch per turn of the loop"
    later = sorted(t for t, _ in recorder.starts[40:])
    assert len(later) >= 30
    bunches = _bunches(later, 0.03)
    # The window still gathers slots, up to the batch size. Uncapped, most
    # wake-ups start 4 or 5; a stall of the loop may merge two batches once.
    assert 3 in bunches, bunches
    assert sum(1 for size in bunches if size > 3) <= 1, bunches


def test_concurrency_is_bounded(tmp_path, lab_servers):
    urls, connect_to, _ = _plain_targets(lab_servers, 6, Delay(0.3))
    config = load_config(lab_config(tmp_path, {"intranet": urls}, connect_to=connect_to,
                                    interval="30s", timeout="2s", extra={"concurrency": 2}))
    store, recorder, _ = _run_scheduler(config, 1.3)
    assert recorder.max_in_flight == 2
    assert len(store.latest) == 6  # 3 waves of 2 x 0.3 s


def test_hanging_endpoint_delays_neither_others_nor_metrics(tmp_path, lab_servers):
    hang = lab_servers.serve(NeverAnswer(), port=80)
    ok = lab_servers.serve(Ok(), port=80)
    path = lab_config(tmp_path, {
        "intranet": {"targets": ["http://hang.lab.example/"], "interval": "5s", "timeout": "4s"},
        "adl": {"targets": ["http://ok.lab.example/"], "interval": "1s", "timeout": "1s"},
    }, connect_to=[hang.connect_to("hang.lab.example", 80), ok.connect_to("ok.lab.example", 80)])
    port = free_port()
    with ExporterThread(path, port=port) as exporter:
        time.sleep(2.5)
        started = time.monotonic()
        status, body = exporter.get("/metrics")
        scrape_seconds = time.monotonic() - started
        store = exporter.exporter.store
        ok_runs = exporter.call(lambda: store.stats[("adl", "http://ok.lab.example/", "defender")].successes)
        hang_done = exporter.call(lambda: ("intranet", "http://hang.lab.example/", "defender") in store.latest)
    assert status == 200 and scrape_seconds < 0.5
    assert ok_runs >= 2, "the healthy target kept its interval while the other hung"
    assert not hang_done, "the hanging probe was still running (its timeout is 4 s)"
    success = {
        s.labels["target"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "defender_probe_success"
    }
    assert success == {"http://ok.lab.example/": 1.0}


def test_following_slot_never_returns_the_same_slot(tmp_path):
    """Regression: a probe started early in its batch window recomputed its next
    slot from `due`, and rounding could hand back `due` itself: the scheduler then
    spun on one slot, probing twice and counting hundreds of thousands of starts."""
    urls = [f"http://host{i}.lab.example/" for i in range(7)]
    config = load_config(lab_config(tmp_path, {"intranet": urls}, interval="60s", timeout="5s"))
    scheduler = Scheduler(ResultStore(), ProbeEnv.from_config(config), config.jobs(), concurrency=4,
                          runner=Recorder(config))
    scheduler._epoch = 123456.789  # a monotonic clock far from zero, as after days of uptime
    for key in scheduler._jobs:
        base = scheduler._epoch + scheduler._offsets[key]
        for k in range(1, 2000):
            due = base + k * 60.0
            for started in (due - 0.2, due, due + 1.0):
                following = scheduler._following_slot(key, due, started)
                assert abs(following - (due + 60.0)) < 1e-6, (k, started - due, following - due)
            # A probe that starts late keeps the first slot still ahead of it.
            assert abs(scheduler._following_slot(key, due, due + 45.0) - (due + 60.0)) < 1e-6
            assert abs(scheduler._following_slot(key, due, due + 70.0) - (due + 120.0)) < 1e-6


def _held_start(tmp_path, *, finish_after: float | None, scrape_age: float = 0.0) -> float:
    """Seconds to the scheduler's first probe, while a /metrics response is being
    written from the outset (it began `scrape_age` seconds before): from the
    response's end when it ends after `finish_after` seconds (negative: the
    probe did not wait), else from the scheduler's start. The runner only notes
    the start."""
    config = load_config(lab_config(tmp_path, {"intranet": ["http://host0.lab.example/"]}, interval="10s"))

    async def main() -> float:
        starts: list[float] = []

        async def runner(job, env):
            starts.append(time.monotonic())

        sched = Scheduler(ResultStore(), ProbeEnv.from_config(config), config.jobs(), concurrency=4, runner=runner)
        sched.scrapes.started()
        sched.scrapes._busy_since -= scrape_age
        began = time.monotonic()
        task = asyncio.create_task(sched.run())
        if finish_after is not None:
            await asyncio.sleep(finish_after)
            sched.scrapes.finished()
            began = time.monotonic()  # from the end of the response, however late the sleep woke
        await asyncio.sleep(scheduler.SCRAPE_HOLD + 0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(starts) == 1
        return starts[0] - began

    return asyncio.run(main())


def test_a_due_batch_waits_for_the_scrape_being_written(tmp_path):
    assert scheduler.SCRAPE_HOLD >= 0.05
    # The first round falls due at once; it starts when the response is out.
    assert 0 <= _held_start(tmp_path, finish_after=0.03) < 0.03
    # A response that never ends (a slow client) holds a batch SCRAPE_HOLD at most,
    assert scheduler.SCRAPE_HOLD - 0.005 <= _held_start(tmp_path, finish_after=None) < scheduler.SCRAPE_HOLD + 0.08
    # and once it has been going out for SCRAPE_HOLD_AGE, holds nothing.
    assert _held_start(tmp_path, finish_after=None, scrape_age=scheduler.SCRAPE_HOLD_AGE) < scheduler.SCRAPE_HOLD / 2


def test_metrics_responses_are_marked_as_being_written(tmp_path, monkeypatch):
    marks: list[tuple[str, int]] = []
    started, finished = scheduler.Scrapes.started, scheduler.Scrapes.finished

    def note_start(self):
        started(self)
        marks.append(("started", self.streaming))

    def note_finish(self):
        finished(self)
        marks.append(("finished", self.streaming))

    monkeypatch.setattr(scheduler.Scrapes, "started", note_start)
    monkeypatch.setattr(scheduler.Scrapes, "finished", note_finish)
    path = lab_config(tmp_path, {"intranet": ["http://host0.lab.example/"]}, interval="10s")
    with ExporterThread(path, port=free_port()) as exporter:
        status, _ = exporter.get("/metrics")
        exporter.get("/metrics")
        streaming = exporter.call(lambda: exporter.exporter.scheduler.scrapes.streaming)
    assert status == 200
    assert marks == [("started", 1), ("finished", 0)] * 2
    assert streaming == 0
