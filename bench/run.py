"""Benchmarks of the exporter, side by side with blackbox_exporter (issue 6).

One command each (root, nginx-light and prometheus-blackbox-exporter installed):

    python bench/run.py sidebyside [--targets 200 --interval 10 --intervals 4]
    python bench/run.py scale      [--targets 10000 --interval 60 --intervals 3]
    python bench/run.py fidelity   [--in-flight 500 --rounds 3]
    python bench/run.py all        (the three, with defaults)
    add --event-loop asyncio to run our exporter on asyncio's loop; --quick for a short smoke run;
    --json FILE to keep the numbers.

What each measures is in docs/performance.md. Every probe, ours and blackbox's,
is a fresh TCP connection and a full TLS handshake with verification against
nginx (session cache and tickets off). Nothing is sent outside 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlab import ROOT, Lab, Proc, host_name, wait_port  # noqa: E402

# ----------------------------------------------------------------------------- exposition helpers

_TOTAL = re.compile(r'^defender_probes_total\{[^}]*target="([^"]*)"[^}]*\} (\S+)$', re.M)
_LAST_RUN = re.compile(r'^defender_probe_last_run_timestamp_seconds\{[^}]*target="([^"]*)"[^}]*\} (\S+)$', re.M)
_LAG = re.compile(r'^defender_exporter_scheduler_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
_PHASE = re.compile(r'^defender_probe_phase_duration_seconds\{([^}]*)\} (\S+)$', re.M)
_BB_PROCESSING = re.compile(r'^probe_http_duration_seconds\{phase="processing"\} (\S+)$', re.M)
_SUCCESS = re.compile(r'^defender_probe_success\{[^}]*target="([^"]*)"[^}]*\} (\S+)$', re.M)
_TARGET = re.compile(r'target="([^"]*)"')
_BB_SUCCESS = re.compile(r"^probe_success (\S+)$", re.M)


def _cpu_times() -> list[int]:
    """The machine's `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1:]]


def _busy_pct(before: list[int], after: list[int]) -> float:
    delta = [b - a for a, b in zip(before, after)]
    return 100 * (sum(delta) - delta[3] - delta[4]) / max(sum(delta), 1)


def _steal_pct(before: list[int], after: list[int]) -> float:
    """Time the hypervisor gave our vCPUs to someone else: a noisy host shows here."""
    delta = [b - a for a, b in zip(before, after)]
    return 100 * delta[7] / max(sum(delta), 1)


def totals_by_target(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for target, value in _TOTAL.findall(text):
        out[target] = out.get(target, 0.0) + float(value)
    return out


class ProbeGaps:
    """Each target's probe times, from `defender_probe_last_run_timestamp_seconds`
    sampled more often than the interval. The longest gap between two probes of
    a target that both finished in the measured window, or from its last probe
    to the window's end, says whether it was probed every interval; a count per
    window would miscount a target whose probe ends a few ms either side of the
    window's first and last scrape."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}  # target -> last_run at the first sample
        self.last: dict[str, float] = {}  # target -> latest last_run seen
        self.gaps: dict[str, float] = {}  # target -> longest gap between probes in the window
        self.sampled_at = 0.0

    def sample(self, text: str) -> None:
        self.sampled_at = time.time()
        for target, value in _LAST_RUN.findall(text):
            stamp = float(value)
            previous = self.last.get(target)
            self.last[target] = stamp
            if previous is None:
                self.first[target] = stamp
            elif stamp != previous and previous != self.first[target]:
                self.gaps[target] = max(self.gaps.get(target, 0.0), stamp - previous)

    def longest(self) -> dict[str, float]:
        """Target -> its longest gap, counting the open one up to the last sample."""
        return {target: max(self.gaps.get(target, 0.0), self.sampled_at - stamp) for target, stamp in self.last.items()}


def lag_buckets(text: str) -> list[tuple[float, float]]:
    return [(float("inf") if le == "+Inf" else float(le), float(v)) for le, v in _LAG.findall(text)]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) pairs."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scrape(session: aiohttp.ClientSession, port: int, *, gz: bool = False,
                 decode: bool = True) -> tuple[str, float, int]:
    """GET /metrics: (text, seconds to the last byte, bytes on the wire).

    The bench's own garbage collector is off while it times the response: a
    full collection in this process (tens of ms, with the previous scrapes'
    parsed samples alive) would count as the exporter's time."""
    headers = {"Accept-Encoding": "gzip" if gz else "identity"}
    gc.disable()
    try:
        started = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers,
                               auto_decompress=False) as response:
            body = await response.read()
            elapsed = time.perf_counter() - started
            encoding = response.headers.get("Content-Encoding", "")
    finally:
        gc.enable()
    if not decode:
        return "", elapsed, len(body)
    text = (gzip.decompress(body) if encoding == "gzip" else body).decode()
    return text, elapsed, len(body)


def curl_scrape(port: int, *, gz: bool) -> float:
    """GET /metrics with curl: seconds to the last byte (curl's time_total)."""
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-H", f"Accept-Encoding: {'gzip' if gz else 'identity'}",
         "-w", "%{time_total}", f"http://127.0.0.1:{port}/metrics"],
        capture_output=True, text=True, timeout=120, check=True)
    return float(result.stdout)


async def wait_ready(session: aiohttp.ClientSession, port: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            async with session.get(f"http://127.0.0.1:{port}/-/ready") as response:
                if response.status == 200:
                    return time.monotonic() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"exporter not ready after {timeout} s")


class BlackboxDriver:
    """Drives blackbox_exporter the way Prometheus does: one /probe per target per
    interval, the targets' requests spread evenly over the interval."""

    def __init__(self, session: aiohttp.ClientSession, port: int, urls: list[str], interval: float):
        self.session, self.port, self.urls, self.interval = session, port, urls, interval
        self.completed: list[float] = []  # monotonic time of each answered probe
        self.failed = 0
        self.unsuccessful = 0

    async def probe(self, url: str) -> str | None:
        try:
            async with self.session.get(f"http://127.0.0.1:{self.port}/probe",
                                        params={"module": "https_2xx", "target": url}) as response:
                text = await response.text()
                if response.status != 200:
                    self.failed += 1
                    return None
        except aiohttp.ClientError:
            self.failed += 1
            return None
        self.completed.append(time.monotonic())
        success = _BB_SUCCESS.search(text)
        if not success or float(success.group(1)) != 1:
            self.unsuccessful += 1
        return text

    async def run(self, until: float) -> None:
        tasks = set()
        start = time.monotonic()
        step = self.interval / len(self.urls)
        i = 0
        while True:
            due = start + i * step
            if due >= until:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.probe(self.urls[i % len(self.urls)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)

    def answered_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.completed if t0 <= t < t1)


def run_floor(lab: Lab, *, count: int, uvloop: bool = False) -> dict:
    argv = [sys.executable, str(ROOT / "bench" / "floor.py"), "--ip", lab.ip, "--ca", str(lab.ca_file),
            "--count", str(count)]
    if uvloop:
        argv.append("--uvloop")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB, Python {platform.python_version()}, {platform.platform()}"


# ----------------------------------------------------------------------------- side by side


async def sidebyside(args: argparse.Namespace) -> dict:
    n, interval, intervals = args.targets, args.interval, args.intervals
    lab = Lab.create(keep=args.keep)
    try:
        lab.start_nginx(workers=1)
        names = [host_name(i) for i in range(n)]
        urls = [f"https://{name}/" for name in names]
        floor = run_floor(lab, count=args.floor_count)
        floor_uv = run_floor(lab, count=args.floor_count, uvloop=True) if args.with_uvloop_floor else None
        config = lab.write_exporter_config(urls, interval=interval, timeout=min(10, interval), pac=args.pac)
        ours, port = lab.start_exporter(config, event_loop=args.event_loop)
        bb, bb_port = lab.start_blackbox(names)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            await wait_ready(session, port, timeout=120)
            origin = time.monotonic()
            end = origin + (intervals + 1) * interval + 0.5
            driver = BlackboxDriver(session, bb_port, urls, interval)
            driver_task = asyncio.create_task(driver.run(end))
            # One interval of warm-up for both, then K measured intervals.
            await asyncio.sleep(interval)
            text, _, _ = await scrape(session, port)
            t0, ours0, bb0 = time.monotonic(), ours.cpu(), bb.cpu()
            probes0 = sum(totals_by_target(text).values())
            for _ in range(intervals):
                await asyncio.sleep(max(0.0, t0 + (_ + 1) * interval - time.monotonic()))
                text, _, _ = await scrape(session, port)  # the one scrape per interval
            t1, ours1, bb1 = time.monotonic(), ours.cpu(), bb.cpu()
            probes1 = sum(totals_by_target(text).values())
            await driver_task
            ours.check_alive()
            bb.check_alive()
        ours_probes = probes1 - probes0
        bb_probes = driver.answered_between(t0, t1)
        ours_ms = 1000 * (ours1 - ours0) / max(ours_probes, 1)
        bb_ms = 1000 * (bb1 - bb0) / max(bb_probes, 1)
        result = {
            "targets": n, "interval_s": interval, "intervals": intervals,
            "event_loop": args.event_loop, "pac": args.pac,
            "ours": {"cpu_s": ours1 - ours0, "probes": ours_probes, "cpu_ms_per_probe": ours_ms,
                     "peak_rss_mb": ours.rss_peak()},
            "blackbox": {"cpu_s": bb1 - bb0, "probes": bb_probes, "cpu_ms_per_probe": bb_ms,
                         "peak_rss_mb": bb.rss_peak(), "failed_requests": driver.failed,
                         "unsuccessful_probes": driver.unsuccessful},
            "floor": floor, "floor_uvloop": floor_uv,
            "ratio_ours_blackbox": ours_ms / bb_ms,
            "ratio_ours_floor": ours_ms / floor["cpu_ms_per_conn"],
        }
        print_sidebyside(result)
        return result
    finally:
        lab.close()


def print_sidebyside(r: dict) -> None:
    o, b, f = r["ours"], r["blackbox"], r["floor"]
    print(f"\nside by side: {r['targets']} HTTPS targets every {r['interval_s']} s, {r['intervals']} intervals measured"
          f"{_loop_note(r)}")
    print(f"{'':28}{'CPU ms/probe':>14}{'probes':>9}{'CPU s':>8}{'peak RSS MB':>13}")
    print(f"{'ours (defender exporter)':28}{o['cpu_ms_per_probe']:14.3f}{o['probes']:9.0f}{o['cpu_s']:8.2f}"
          f"{o['peak_rss_mb']:13.1f}")
    print(f"{'blackbox_exporter':28}{b['cpu_ms_per_probe']:14.3f}{b['probes']:9.0f}{b['cpu_s']:8.2f}"
          f"{b['peak_rss_mb']:13.1f}")
    print(f"{'floor (bare asyncio)':28}{f['cpu_ms_per_conn']:14.3f}{f['connections']:9.0f}{f['cpu_s']:8.2f}")
    if r.get("floor_uvloop"):
        fu = r["floor_uvloop"]
        print(f"{'floor (bare asyncio+uvloop)':28}{fu['cpu_ms_per_conn']:14.3f}{fu['connections']:9.0f}{fu['cpu_s']:8.2f}")
    print(f"ours/blackbox = {r['ratio_ours_blackbox']:.2f} (target <= 0.6); "
          f"ours/floor = {r['ratio_ours_floor']:.2f} (target <= 1.5)")
    if b["failed_requests"] or b["unsuccessful_probes"]:
        print(f"blackbox: {b['failed_requests']} failed requests, {b['unsuccessful_probes']} probes not successful")


# ----------------------------------------------------------------------------- scale


async def scale(args: argparse.Namespace) -> dict:
    n, interval, intervals = args.targets, args.interval, args.intervals
    lab = Lab.create(keep=args.keep)
    try:
        lab.start_nginx(workers=1)
        urls = [f"https://{host_name(i)}/" for i in range(n)]
        config = lab.write_exporter_config(urls, interval=interval, timeout=min(10, interval))
        ours, port = lab.start_exporter(config, event_loop=args.event_loop)
        cpu_start = ours.cpu()
        plain_times, gzip_times, curl_plain, curl_gzip = [], [], [], []
        scrape_log = []  # (unix time, aiohttp plain, aiohttp gzip, curl plain, curl gzip) in ms
        sizes = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            first_round = await wait_ready(session, port, timeout=max(600, n / 10))
            # One interval of warm-up: the first round moves each job's next slot
            # at least half an interval on, so steady state begins an interval later.
            await asyncio.sleep(interval)
            text, _, _ = await scrape(session, port)
            t0, c0, stat0 = time.monotonic(), ours.cpu(), _cpu_times()
            per_target0 = totals_by_target(text)
            lag0 = lag_buckets(text)
            gaps = ProbeGaps()
            gaps.sample(text)
            per_interval = []
            previous = sum(per_target0.values())
            scrapes_per_interval = max(1, int(interval // args.scrape_every))
            for k in range(intervals):
                for s in range(scrapes_per_interval):
                    due = t0 + k * interval + (s + 1) * interval / scrapes_per_interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    text, seconds, size = await scrape(session, port)
                    plain_times.append(seconds)
                    sizes["plain"] = size
                    gaps.sample(text)
                    _, seconds, size = await scrape(session, port, gz=True, decode=False)
                    gzip_times.append(seconds)
                    sizes["gzip"] = size
                    # The same with curl: a C client reads about as fast as
                    # Prometheus's Go one, so this is the server's own time.
                    curl_plain.append(await asyncio.to_thread(curl_scrape, port, gz=False))
                    curl_gzip.append(await asyncio.to_thread(curl_scrape, port, gz=True))
                    scrape_log.append((round(time.time(), 3), round(1000 * plain_times[-1], 1),
                                       round(1000 * gzip_times[-1], 1), round(1000 * curl_plain[-1], 1),
                                       round(1000 * curl_gzip[-1], 1)))
                total = sum(totals_by_target(text).values())
                per_interval.append(total - previous)
                previous = total
            t1, c1, stat1 = time.monotonic(), ours.cpu(), _cpu_times()
            per_target1 = totals_by_target(text)
            lag1 = lag_buckets(text)
        ours.check_alive()
        longest = gaps.longest()
        deltas = [per_target1.get(t, 0) - per_target0.get(t, 0) for t in per_target1]
        lag = [(le, c1_ - c0_) for (le, c1_), (_, c0_) in zip(lag1, lag0)]
        result = {
            "targets": n, "interval_s": interval, "intervals": intervals, "event_loop": args.event_loop,
            "first_round_s": first_round,
            "probes_per_interval": per_interval,
            "targets_probed_every_interval": sum(1 for d in deltas if d >= intervals),
            "per_target_probes_min": min(deltas) if deltas else 0,
            "per_target_probes_max": max(deltas) if deltas else 0,
            "longest_gap_s": max(longest.values(), default=float("nan")),
            "targets_with_a_gap_over_1_5_intervals": sum(1 for gap in longest.values() if gap > 1.5 * interval),
            "targets_never_seen_probed": n - len(longest),
            "lag_p50_ms": 1000 * histogram_quantile(0.5, lag),
            "lag_p99_ms": 1000 * histogram_quantile(0.99, lag),
            "lag_observations": lag[-1][1] if lag else 0,
            "lag_over_250ms": (lag[-1][1] - next(c for le, c in lag if le >= 0.25)) if lag else 0,
            "peak_rss_mb": ours.rss_peak(),
            "cpu_ms_per_probe": 1000 * (c1 - c0) / max(sum(per_interval), 1),
            "cpu_first_round_s": c0 - cpu_start,
            "metrics_plain_ms_p50": 1000 * quantile(plain_times, 0.5),
            "metrics_plain_ms_p99": 1000 * quantile(plain_times, 0.99),
            "metrics_gzip_ms_p50": 1000 * quantile(gzip_times, 0.5),
            "metrics_gzip_ms_p99": 1000 * quantile(gzip_times, 0.99),
            "metrics_curl_plain_ms_p50": 1000 * quantile(curl_plain, 0.5),
            "metrics_curl_plain_ms_p99": 1000 * quantile(curl_plain, 0.99),
            "metrics_curl_gzip_ms_p50": 1000 * quantile(curl_gzip, 0.5),
            "metrics_curl_gzip_ms_p99": 1000 * quantile(curl_gzip, 0.99),
            "metrics_scrapes": len(plain_times) + len(gzip_times),
            "metrics_scrape_log": scrape_log,
            "metrics_plain_bytes": sizes.get("plain", 0),
            "metrics_gzip_bytes": sizes.get("gzip", 0),
            "wall_s": t1 - t0,
            "machine_busy_pct": _busy_pct(stat0, stat1),
            "steal_pct": _steal_pct(stat0, stat1),
        }
        print_scale(result)
        return result
    finally:
        lab.close()


def print_scale(r: dict) -> None:
    print(f"\nscale: {r['targets']} HTTPS targets every {r['interval_s']} s, {r['intervals']} intervals"
          f"{_loop_note(r)}; first round took {r['first_round_s']:.1f} s")
    print(f"probes per interval: {', '.join(str(int(p)) for p in r['probes_per_interval'])}; "
          f"targets probed every interval: {r['targets_probed_every_interval']}/{r['targets']} "
          f"(per target {r['per_target_probes_min']:.0f}..{r['per_target_probes_max']:.0f})")
    if "longest_gap_s" in r:
        print(f"longest gap between two probes of a target (in the window, or open at its end): "
              f"{r['longest_gap_s']:.2f} s; targets with a gap over 1.5 intervals: "
              f"{r['targets_with_a_gap_over_1_5_intervals']}; never seen probed: {r['targets_never_seen_probed']}")
    print(f"scheduler lag p50 {r['lag_p50_ms']:.1f} ms, p99 {r['lag_p99_ms']:.1f} ms "
          f"({r['lag_over_250ms']:.0f} of {r['lag_observations']:.0f} starts later than 250 ms)")
    print(f"peak RSS {r['peak_rss_mb']:.1f} MB; CPU {r['cpu_ms_per_probe']:.3f} ms/probe in steady state")
    if "steal_pct" in r:
        print(f"machine over the window: {r['machine_busy_pct']:.0f} % busy, {r['steal_pct']:.1f} % stolen by the host")
    print(f"/metrics plain: p50 {r['metrics_plain_ms_p50']:.1f} ms, p99 {r['metrics_plain_ms_p99']:.1f} ms, "
          f"{r['metrics_plain_bytes'] / 1e6:.2f} MB; gzip: p50 {r['metrics_gzip_ms_p50']:.1f} ms, "
          f"p99 {r['metrics_gzip_ms_p99']:.1f} ms, {r['metrics_gzip_bytes'] / 1e6:.2f} MB "
          f"({r['metrics_scrapes']} scrapes, aiohttp client)")
    if "metrics_curl_plain_ms_p50" in r:
        print(f"/metrics with curl: plain p50 {r['metrics_curl_plain_ms_p50']:.1f} ms, "
              f"p99 {r['metrics_curl_plain_ms_p99']:.1f} ms; gzip p50 {r['metrics_curl_gzip_ms_p50']:.1f} ms, "
              f"p99 {r['metrics_curl_gzip_ms_p99']:.1f} ms")


# ----------------------------------------------------------------------------- fidelity


def _stats_ms(diffs: list[float]) -> dict:
    diffs = [1000 * d for d in diffs]
    return {"n": len(diffs), "p50_ms": quantile(diffs, 0.5), "p99_ms": quantile(diffs, 0.99),
            "abs_p99_ms": quantile([abs(d) for d in diffs], 0.99), "max_ms": max(diffs) if diffs else float("nan")}


def _start_delay_server(lab: Lab, port: int, tag: str, delay: float) -> tuple[Proc, Path]:
    stats = lab.workdir / f"delay-{tag}.json"
    proc = lab.start(Proc(f"delay-{tag}", [
        sys.executable, str(ROOT / "bench" / "delay_server.py"), "--ip", lab.ip, "--port", str(port),
        "--cert", str(lab.leaf.chain_path), "--key", str(lab.leaf.key_path), "--delay", str(delay),
        "--stats", str(stats)], log=lab.workdir / f"delay-{tag}.log"))
    wait_port(lab.ip, port)
    return proc, stats


def _stop_delay_server(lab: Lab, proc: Proc, stats: Path) -> dict:
    proc.stop()
    lab.processes.remove(proc)
    return json.loads(stats.read_text()) if stats.exists() else {}


def _held(server: dict) -> dict[tuple[str, str], list[float]]:
    """(host, path) -> the holds the server applied to it (one, unless a client retried)."""
    holds: dict[tuple[str, str], list[float]] = {}
    for host, path, hold in zip(server.get("host", ()), server.get("path", ()), server.get("hold", ())):
        holds.setdefault((host, path), []).append(hold)
    return holds


def _errors(measured: list[tuple[str, str, float]], server: dict, delay: float) -> dict:
    """Successful probes' (host, path, processing) against what the server did:
    measured minus the nominal delay, and measured minus the hold the server
    really applied to that very request (each round asks its own path). A
    request the server answered twice, or never, cannot be matched: counted."""
    holds = _held(server)
    nominal, actual, unmatched = [], [], 0
    for host, path, value in measured:
        nominal.append(value - delay)
        applied = holds.get((host, path), [])
        if len(applied) == 1:
            actual.append(value - applied[0])
        else:
            unmatched += 1
    return {"nominal": nominal, "actual": actual, "unmatched": unmatched}


async def fidelity(args: argparse.Namespace) -> dict:
    n, rounds, delay = args.in_flight, args.rounds, args.delay
    lab = Lab.create(keep=args.keep)
    port = 8443
    try:
        names = [f"f{i:05d}.bench.lab" for i in range(n)]
        # Each round asks its own path, so that a measurement meets the server's
        # record of that very request.
        urls = [[f"https://{name}:{port}/r{r}" for name in names] for r in range(rounds)]
        ours: list[tuple[str, str, float]] = []  # (host, path, processing seconds) of successful probes
        bb: list[tuple[str, str, float]] = []
        # Ours: the first round of a fresh exporter starts every job at once, all
        # in one turn of its loop: the shipped BATCH_SIZE (16 a turn) would
        # spread them, and leave fewer than 100 in flight at once.
        server, stats_path = _start_delay_server(lab, port, "ours", delay)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            for r in range(rounds):
                config = lab.write_exporter_config(urls[r], interval=600, timeout=30, concurrency=n, name=f"fid{r}")
                exporter, mport = lab.start_exporter(config, event_loop=args.event_loop, name=f"exporter-fid{r}",
                                                      batch_size=n)
                await wait_ready(session, mport, timeout=120)
                text, _, _ = await scrape(session, mport)
                succeeded = {target for target, value in _SUCCESS.findall(text) if float(value) == 1}
                for labels, value in _PHASE.findall(text):
                    target = _TARGET.search(labels)
                    if target and 'phase="processing"' in labels and target.group(1) in succeeded:
                        url = urlsplit(target.group(1))
                        ours.append((url.hostname or "", url.path, float(value)))
                exporter.stop()
                lab.processes.remove(exporter)
        ours_server = _stop_delay_server(lab, server, stats_path)
        # blackbox: n /probe requests at once, as n Prometheus scrapes would.
        server, stats_path = _start_delay_server(lab, port, "blackbox", delay)
        blackbox, bb_port = lab.start_blackbox(names, timeout=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            driver = BlackboxDriver(session, bb_port, urls[0], 1.0)
            for r in range(rounds):
                texts = await asyncio.gather(*(driver.probe(u) for u in urls[r]))
                for name, text in zip(names, texts):
                    match = text and _BB_PROCESSING.search(text)
                    success = text and _BB_SUCCESS.search(text)
                    if match and success and float(success.group(1)) == 1:
                        bb.append((name, f"/r{r}", float(match.group(1))))
                await asyncio.sleep(1)
        bb_server = _stop_delay_server(lab, server, stats_path)
        ours_errors = _errors(ours, ours_server, delay)
        bb_errors = _errors(bb, bb_server, delay)
        result = {
            "in_flight": n, "rounds": rounds, "delay_ms": delay * 1000, "event_loop": args.event_loop,
            "ours": _stats_ms(ours_errors["actual"]), "blackbox": _stats_ms(bb_errors["actual"]),
            "ours_vs_nominal": _stats_ms(ours_errors["nominal"]), "blackbox_vs_nominal": _stats_ms(bb_errors["nominal"]),
            "ours_failed": n * rounds - len(ours), "blackbox_failed": n * rounds - len(bb),
            "ours_unmatched": ours_errors["unmatched"], "blackbox_unmatched": bb_errors["unmatched"],
            "server_lateness_ours_run": _server_summary(ours_server),
            "server_lateness_blackbox_run": _server_summary(bb_server),
        }
        print_fidelity(result)
        return result
    finally:
        lab.close()


def _server_summary(server: dict) -> dict:
    return {k: v for k, v in server.items() if k not in ("host", "path", "hold")}


def _loop_note(r: dict) -> str:
    loop = r.get("event_loop", "auto")
    note = "" if loop == "auto" else f" (ours on {loop})"
    return note + (" (ours on a PAC route)" if r.get("pac") else "")


def print_fidelity(r: dict) -> None:
    print(f"\nfidelity: {r['in_flight']} probes in flight, server waits {r['delay_ms']:.0f} ms, {r['rounds']} rounds"
          f"{_loop_note(r)}")
    print(f"{'measured processing - injected':40}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'|.| p99':>9}{'max ms':>9}")
    for who in ("ours", "blackbox"):
        for key, what in ((who, "hold the server applied"), (f"{who}_vs_nominal", f"{r['delay_ms']:.0f} ms")):
            s = r[key]
            print(f"{who + ' - ' + what:40}{s['n']:6d}{s['p50_ms']:9.2f}{s['p99_ms']:9.2f}"
                  f"{s['abs_p99_ms']:9.2f}{s['max_ms']:9.2f}")
    for who in ("ours", "blackbox"):
        if r.get(f"{who}_failed") or r.get(f"{who}_unmatched"):
            print(f"{who}: {r[f'{who}_failed']} probes failed (left out), {r[f'{who}_unmatched']} not matched "
                  f"to exactly one answer of the server")
    for who in ("ours", "blackbox"):
        s = r[f"server_lateness_{who}_run"]
        if s:
            print(f"server's hold beyond {r['delay_ms']:.0f} ms during {who}'s run: p50 {s['late_ms_p50']:.2f} ms, "
                  f"p99 {s['late_ms_p99']:.2f} ms, max {s['late_ms_max']:.2f} ms ({s['answers']} answers; "
                  f"its loop read a request at most {s['read_late_ms_max']:.0f} ms after it arrived; "
                  f"{s.get('peak_connections', '?')} connections open at most)")


# ----------------------------------------------------------------------------- profile


async def profile(args: argparse.Namespace) -> dict:
    """py-spy on our exporter under the side-by-side load; writes collapsed stacks
    (and a flame graph) to bench/profiles/ and prints the heaviest frames."""
    n, interval = args.targets, args.interval
    lab = Lab.create(keep=args.keep)
    out_dir = ROOT / "bench" / "profiles"
    out_dir.mkdir(exist_ok=True)
    tag = time.strftime("%Y%m%d-%H%M%S") + ("" if args.event_loop == "auto" else f"-{args.event_loop}")
    try:
        lab.start_nginx(workers=1)
        urls = [f"https://{host_name(i)}/" for i in range(n)]
        config = lab.write_exporter_config(urls, interval=interval, timeout=min(10, interval))
        ours, port = lab.start_exporter(config, event_loop=args.event_loop)
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, port, timeout=120)
            await asyncio.sleep(interval)
            collapsed = out_dir / f"{tag}.txt"
            spy = await asyncio.create_subprocess_exec(
                "py-spy", "record", "--pid", str(ours.pid), "--duration", str(int(args.duration)), "--rate", "250",
                "--format", "raw", "--output", str(collapsed), "--nonblocking", "--threads",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:  # scrapes go on: once an interval, or every --scrape-every
                await asyncio.sleep(min(interval, args.scrape_every, max(0.0, deadline - time.monotonic())))
                await scrape(session, port)
            await spy.wait()
        summary = summarize_profile(collapsed)
        print(summary)
        (out_dir / f"{tag}-summary.txt").write_text(summary)
        return {"collapsed": str(collapsed)}
    finally:
        lab.close()


def summarize_profile(path: Path, top: int = 40) -> str:
    """Self and inclusive shares of the heaviest frames of py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r" \((.*/)?([^/]+):\d+\)$", r" (\2)", f) for f in stack.split(";")]
        if frames and frames[0].startswith("thread"):
            frames = frames[1:]
        total += n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    lines = [f"{total} samples", "-- self --"]
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines += ["-- inclusive --"]
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("sidebyside", "scale", "fidelity", "floor", "profile", "all"))
    parser.add_argument("--targets", type=int)
    parser.add_argument("--interval", type=float)
    parser.add_argument("--intervals", type=int)
    parser.add_argument("--scrape-every", type=float, default=15.0, help="scale: seconds between /metrics timings")
    parser.add_argument("--floor-count", type=int, default=3000)
    parser.add_argument("--with-uvloop-floor", action="store_true")
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.050)
    parser.add_argument("--duration", type=float, default=30.0, help="profile: seconds of sampling")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="our exporter's --event-loop (auto, as shipped: uvloop when installed)")
    parser.add_argument("--pac", action="store_true",
                        help="sidebyside: our targets on a PAC route (evaluated per target, cached)")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run of the harness")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    # SIGTERM ends the run through the `finally` blocks, which stop every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("warning: not root; binding ports 443/80 and unshare --mount need root", file=sys.stderr)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "git": _git_head()}
    commands = ("sidebyside", "scale", "fidelity") if args.command == "all" else (args.command,)
    for command in commands:
        ns = argparse.Namespace(**vars(args))
        defaults = {
            "sidebyside": (200, 10.0, 4) if not args.quick else (50, 5.0, 2),
            "scale": (10_000, 60.0, 3) if not args.quick else (1000, 10.0, 2),
            "fidelity": (0, 0, 0), "floor": (0, 0, 0), "profile": (200, 5.0, 0),
        }[command]
        ns.targets = args.targets or defaults[0]
        ns.interval = args.interval or defaults[1]
        ns.intervals = args.intervals or defaults[2]
        if args.quick:
            ns.in_flight, ns.rounds, ns.floor_count = min(args.in_flight, 100), 1, 1000
            ns.scrape_every = min(args.scrape_every, ns.interval / 2)
        if command == "floor":
            lab = Lab.create(keep=args.keep)
            try:
                lab.start_nginx()
                results["floor"] = run_floor(lab, count=ns.floor_count)
                results["floor_uvloop"] = run_floor(lab, count=ns.floor_count, uvloop=True)
                print(json.dumps({k: results[k] for k in ("floor", "floor_uvloop")}, indent=1))
            finally:
                lab.close()
            continue
        results[command] = asyncio.run({"sidebyside": sidebyside, "scale": scale, "fidelity": fidelity,
                                       "profile": profile}[command](ns))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(results) + "\n")
    return 0


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
