"""The scheduler: its schedule asserted exactly in virtual time (support.VirtualTimeLoop:
first round at once, spread afterwards, slots kept, late starts, skips, the hold for a
scrape), and with real probes against lab servers (batches, bounded concurrency, a
hanging endpoint delaying nobody)."""

from __future__ import annotations

import asyncio
import time

from lab.servers import Delay, NeverAnswer, Ok
from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, lab_config, run_virtual

from exporter import scheduler
from exporter.assess import Assessor, Outcome
from exporter.config import load_config
from exporter.probes import ProbeEnv, ProbeResult
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


class VirtualRunner:
    """A job runner in virtual time: notes (loop time, url) of each start and
    takes `seconds` (of the loop's clock) per job."""

    def __init__(self, loop, seconds: float = 0.01):
        self.loop = loop
        self.seconds = seconds
        self.starts: list[tuple[float, str]] = []

    async def __call__(self, job, env):
        self.starts.append((self.loop.time(), job.target.url))
        await asyncio.sleep(self.seconds)
        return Outcome(ProbeResult(True, None, time.time(), self.seconds, ()))


def _virtual_schedule(tmp_path, urls, *, interval: str, seconds: float, runner_seconds: float = 0.01,
                      start: float = 1000.0):
    """Run the scheduler in virtual time for `seconds` of its clock; (store, starts, epoch)."""
    config = load_config(lab_config(tmp_path, {"intranet": urls}, interval=interval, timeout="1s"))

    async def main(loop):
        store = ResultStore()
        runner = VirtualRunner(loop, runner_seconds)
        sched = Scheduler(store, ProbeEnv.from_config(config), config.jobs(), concurrency=config.concurrency,
                          runner=runner, clock=loop.time)
        epoch = loop.time()
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return store, runner.starts, epoch

    return run_virtual(main, start=start)


def test_first_round_at_once_then_spread_over_the_interval(tmp_path):
    urls = [f"http://host{i}.lab.example/" for i in range(10)]
    store, starts, epoch = _virtual_schedule(tmp_path, urls, interval="2s", seconds=4.1)
    first, later = starts[:10], starts[10:]
    assert [t for t, _ in first] == [epoch] * 10, "the first round starts at once"
    assert sorted(u for _, u in first) == sorted(urls)
    # Then job i of 10 (by key) has the slots epoch + i * 0.2 + k * 2, the first one at
    # least half an interval after its first probe; a wake-up starts what falls due
    # within its window (a tenth of the interval), at most that much before the slot.
    window = scheduler.BATCH_FRACTION * 2.0
    slot = {url: epoch + i * 0.2 for i, url in enumerate(sorted(urls))}
    by_url: dict[str, list[float]] = {}
    for t, url in later:
        by_url.setdefault(url, []).append(t)
    for url, times in by_url.items():
        due = [slot[url] + 2.0 * k for k in range(3)]
        due = [d for d in due if d > epoch + 2.0 * scheduler.FIRST_GAP + 1e-6][:len(times)]
        assert len(times) == len(due), (url, times, due)
        for t, d in zip(times, due):
            assert d - window - 1e-9 <= t <= d + 1e-9, (url, t - epoch, d - epoch)
    second = sorted(times[0] for times in by_url.values())
    assert len(second) == 10, "every target is probed again within the next interval"
    assert second[-1] - second[0] >= 1.8 - window - 1e-9, "spread over the interval, not bunched"
    assert store.lag.count == len(later)
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


def test_hanging_endpoint_delays_neither_others_nor_metrics(tmp_path, lab_servers, free_port):
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
    spun on one slot, probing twice and counting hundreds of thousands of starts.
    Here, on a clock far from zero (as after days of uptime), every job starts
    exactly once a slot, for 2,000 intervals."""
    urls = [f"http://host{i}.lab.example/" for i in range(7)]
    _, starts, epoch = _virtual_schedule(tmp_path, urls, interval="60s", seconds=2000 * 60.0 + 1,
                                         start=123456.789)
    by_url: dict[str, list[float]] = {}
    for t, url in starts:
        by_url.setdefault(url, []).append(t)
    assert sorted(by_url) == sorted(urls)
    for url, times in by_url.items():
        assert len(times) in (2000, 2001), (url, len(times))
        gaps = [b - a for a, b in zip(times[1:], times[2:])]  # after the first round's own gap
        assert all(abs(g - 60.0) < 1e-6 for g in gaps), (url, min(gaps), max(gaps))


def test_a_late_start_takes_the_first_slot_still_ahead(tmp_path):
    """A loop blocked past a slot, so that the job starts 45 s, then 70 s, late in
    its 60 s interval: its next start is the first slot still ahead, once."""
    config = load_config(lab_config(tmp_path, {"intranet": ["http://host0.lab.example/"]},
                                    interval="60s", timeout="5s"))

    async def main(loop):
        starts: list[float] = []

        async def runner(job, env):
            starts.append(loop.time())
            if len(starts) in (2, 4):  # the second and fourth probes block the loop
                loop.stall(105.0 if len(starts) == 2 else 130.0)
            return Outcome(ProbeResult(True, None, time.time(), 0.01, ()))

        sched = Scheduler(ResultStore(), ProbeEnv.from_config(config), config.jobs(), concurrency=1,
                          runner=runner, clock=loop.time)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(400)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return [t - starts[0] for t in starts]

    starts = run_virtual(main)
    # Slots at 60 k. The probe at 60 blocks the loop until 165: the slot of 120
    # starts 45 s late, and the next start is the slot of 180. The probe at 180
    # blocks until 310: the slot of 240 starts 70 s late, the next start is 360.
    assert [round(t, 6) for t in starts] == [0, 60, 165, 180, 310, 360], starts


def _held_start(tmp_path, *, finish_after: float | None, scrape_age: float = 0.0) -> float:
    """Seconds (of the scheduler's clock) from the moment it could start its
    first probe to that start, while a /metrics response is being written from
    the outset. The response began `scrape_age` seconds before the scheduler ran
    and ends `finish_after` seconds after (None: never)."""
    config = load_config(lab_config(tmp_path, {"intranet": ["http://host0.lab.example/"]}, interval="10s"))

    async def main(loop) -> float:
        starts: list[float] = []

        async def runner(job, env):
            starts.append(loop.time())

        sched = Scheduler(ResultStore(), ProbeEnv.from_config(config), config.jobs(), concurrency=4,
                          runner=runner, clock=loop.time)
        sched.scrapes.started()
        await asyncio.sleep(scrape_age)
        began = loop.time()
        task = asyncio.create_task(sched.run())
        if finish_after is not None:
            await asyncio.sleep(finish_after)
            sched.scrapes.finished()
        await asyncio.sleep(scheduler.SCRAPE_HOLD + 1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(starts) == 1
        return starts[0] - began

    return run_virtual(main)


def test_a_due_batch_waits_for_the_scrape_being_written(tmp_path):
    hold = scheduler.SCRAPE_HOLD
    assert hold >= 0.05
    # The first round falls due at once; it starts the moment the response is out,
    assert abs(_held_start(tmp_path, finish_after=0.03) - 0.03) < 1e-9
    # a response that never ends (a slow client) holds a batch SCRAPE_HOLD at most,
    assert abs(_held_start(tmp_path, finish_after=None) - hold) < 1e-9
    # and once it has been going out for SCRAPE_HOLD_AGE, holds nothing.
    assert _held_start(tmp_path, finish_after=None, scrape_age=scheduler.SCRAPE_HOLD_AGE) == 0


def test_a_slot_that_finds_the_previous_probe_running_is_counted_as_skipped(tmp_path):
    """A job that outlasts its interval skips the slots it is still running in
    (defender_probes_skipped_total), and is not started twice."""
    store, starts, epoch = _virtual_schedule(tmp_path, ["http://host0.lab.example/"], interval="2s",
                                             seconds=9.0, runner_seconds=4.5)
    (key,) = store.jobs
    # Starts at 0; slots at 2, 4 find it running (skipped); 6 starts (it ended at 4.5),
    # 8 finds it running again.
    assert [round(t - epoch, 6) for t, _ in starts] == [0, 6]
    assert store.stats[key].skipped == 3
    assert store.stats[key].successes == 1


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
    with ExporterThread(path) as exporter:
        status, _ = exporter.get("/metrics")
        exporter.get("/metrics")
        streaming = exporter.call(lambda: exporter.exporter.scheduler.scrapes.streaming)
    assert status == 200
    assert marks == [("started", 1), ("finished", 0)] * 2
    assert streaming == 0
