"""Soak: many 1 s probe cycles against failing and slow endpoints; the exporter's memory stays flat.

The exporter runs as a real process (`python -m exporter`); its resident set size is read from
/proc/PID/status after a warm-up and must not grow by more than RSS_GROWTH_BOUND over the run.
docs/operations.md states the bound and a measured run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lab.servers import (
    Delay,
    EndlessBody,
    EndlessHeaders,
    Garbage,
    NeverAnswer,
    Ok,
    ResetMidHandshake,
    Slowloris,
    Truncated,
    refused_address,
)
from support import lab_config


REPO = Path(__file__).parent.parent
WARMUP = 10.0
MEASURE = 30.0
RSS_GROWTH_BOUND_KB = 6 * 1024  # 6 MiB over 30 s of 1 s cycles (about 1200 probes)

BEHAVIOURS = {
    "ok": (Ok(), True),
    "slow": (Delay(0.5), True),
    "never": (NeverAnswer(), False),
    "slowloris": (Slowloris(interval=0.2), True),
    "garbage": (Garbage(), True),
    "headers": (EndlessHeaders(), True),
    "body": (EndlessBody(), True),
    "reset": (ResetMidHandshake(), False),
    "truncated": (Truncated(), True),
}
COPIES = 4  # host names per behaviour: 36 jobs + refused + bad proxy


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_memory_stays_flat_over_many_probe_cycles(tmp_path, lab_pki, lab_servers, free_port):
    leaf = lab_pki.issue_leaf("*.wdcp.microsoft.com")
    connect_to, targets = [], []
    for name, (behaviour, tls) in BEHAVIOURS.items():
        server = lab_servers.serve(behaviour, port=443, tls=leaf if tls else None)
        for i in range(COPIES):
            host = f"{name}{i}.wdcp.microsoft.com"
            connect_to.append(server.connect_to(host, 443))
            targets.append(f"https://{host}/")
    ip, port = refused_address()
    connect_to += [f"refused.wdcp.microsoft.com:443:{ip}:{port}", f"crl.microsoft.com:80:{ip}:{port}",
                   f"www.microsoft.com:80:{ip}:{port}"]
    targets.append("https://refused.wdcp.microsoft.com/")
    bad_proxy = lab_servers.serve(Garbage(), port=0)
    path = lab_config(
        tmp_path,
        {"maps": {"targets": targets, "route": ["defender", "garbage"]}},
        routes={"garbage": f"http://{bad_proxy.ip}:{bad_proxy.port}"},
        connect_to=connect_to, ca_file=lab_pki.ca_bundle_path, interval="1s", timeout="1s",
    )
    web = free_port()
    base = f"http://127.0.0.1:{web}"
    process = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(path),
                                "--web.listen-address", f"127.0.0.1:{web}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    samples: list[tuple[float, int]] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < WARMUP + MEASURE:
            try:
                assert fetch(f"{base}/metrics") == 200
                assert fetch(f"{base}/") == 200
            except OSError:
                assert time.monotonic() - started < 10, "the exporter does not answer"
            if time.monotonic() - started >= WARMUP:
                samples.append((time.monotonic() - started, rss_kb(process.pid)))
            time.sleep(1.0)
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr, stderr.decode()[-2000:]
    first = sorted(kb for _, kb in samples[:5])[2]
    last = sorted(kb for _, kb in samples[-5:])[2]
    peak = max(kb for _, kb in samples)
    jobs = len(targets) * 2
    print(f"\nsoak: {jobs} jobs at 1 s, RSS after warm-up {first} KiB, at the end {last} KiB, "
          f"growth {last - first} KiB, peak {peak} KiB over {samples[-1][0] - samples[0][0]:.0f} s")
    assert "defender_probes_total" in metrics
    assert last - first < RSS_GROWTH_BOUND_KB, samples
    assert peak < 200 * 1024, "the exporter needs more than 200 MiB"
