"""Reload by POST /-/reload and by SIGHUP: bad files are refused, good ones keep history."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lab.servers import Ok
from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, lab_config


REPO = Path(__file__).parent.parent
A = "https://a.wdcp.microsoft.com/"
B = "https://b.wdcp.microsoft.com/"
C = "https://c.wdcp.microsoft.com/"


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series_for(samples: dict, url: str) -> list:
    return [key for key in samples if ("target", url) in key[1]]


def post_reload(port: int) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def total(samples: dict, url: str) -> float:
    labels = {"group": "maps", "target": url, "route": "defender"}
    return sum(value(samples, "defender_probes_total", **labels, result=r) or 0 for r in ("success", "failure"))


def wait_for(predicate, timeout: float = 15.0, step: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    raise AssertionError("condition not met in time")


@pytest.fixture
def lab(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("*.wdcp.microsoft.com"))

    def write(urls, **kwargs):
        return lab_config(tmp_path, {"maps": urls}, connect_to=[f"::{server.ip}:443"], ca_file=lab_pki.ca_bundle_path,
                          ssl_options=0, interval="1s", timeout="1s", **kwargs)

    return write


def test_bad_config_is_refused_and_the_running_one_keeps_probing(lab, caplog):
    path = lab([A, B])
    good_text = path.read_text()
    with ExporterThread(path) as exp:
        exp.wait_ready()
        before = scrape(exp.port)
        assert value(before, "defender_exporter_config_last_reload_successful") == 1
        # "" and a comment alone: what a half-written file looks like for a moment
        for bad in ("interval: [", "groups: {maps: {targets: [ftp://x/]}}", "interval: soon", "routes: 5",
                    "", "# site config\n", "routes:\n  defender: {proxy: http://a:3128}\n  defender:"):
            path.write_text(bad)
            with caplog.at_level(logging.ERROR, logger="exporter"):
                status, body = post_reload(exp.port)
            assert status == 500
            assert "the running configuration is kept" in body and str(path) in body
            assert any("config reload failed, keeping the running config" in r.getMessage() and str(path) in
                       r.getMessage() for r in caplog.records)
        after_bad = scrape(exp.port)
        assert value(after_bad, "defender_exporter_config_last_reload_successful") == 0
        # the old jobs keep running on the old config
        wait_for(lambda: total(scrape(exp.port), A) >= total(after_bad, A) + 2)
        assert series_for(scrape(exp.port), B)
        # a good file afterwards restores the gauge
        path.write_text(good_text)
        assert post_reload(exp.port)[0] == 200
        assert value(scrape(exp.port), "defender_exporter_config_last_reload_successful") == 1


def test_good_reload_keeps_history_of_unchanged_targets(lab):
    path = lab([A, B])
    with ExporterThread(path) as exp:
        wait_for(lambda: total(scrape(exp.port), A) >= 3 and total(scrape(exp.port), B) >= 3)
        before = scrape(exp.port)
        reloaded_at = value(before, "defender_exporter_config_last_reload_success_timestamp_seconds")
        lab([A, C])
        status, body = post_reload(exp.port)
        assert status == 200, body
        after = scrape(exp.port)
        # A keeps counting from where it was, and so does its group's latency histogram
        assert total(after, A) >= total(before, A)
        per_route = {"group": "maps", "route": "defender"}
        assert value(after, "defender_probe_latency_seconds_count", **per_route) >= \
            value(before, "defender_probe_latency_seconds_count", **per_route)
        # B is gone entirely, C is there
        assert series_for(after, B) == []
        wait_for(lambda: total(scrape(exp.port), C) >= 1)
        later = wait_for(lambda: (s := scrape(exp.port)) and total(s, A) >= total(after, A) + 2 and s)
        assert value(later, "defender_exporter_config_last_reload_success_timestamp_seconds") > reloaded_at
        assert value(later, "defender_exporter_config_last_reload_successful") == 1
        assert value(later, "defender_exporter_targets", group="maps") == 2


def test_sighup_reloads_the_real_process(lab, free_port):
    path = lab([A])
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(path),
                                "--web.listen-address", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: _scrape_or_none(port) and total(scrape(port), A) >= 1)
        lab([A, B])
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: total(scrape(port), B) >= 1)
        assert total(scrape(port), A) >= 1
        path.write_text("interval: [")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: value(scrape(port), "defender_exporter_config_last_reload_successful") == 0)
        count = total(scrape(port), B)
        wait_for(lambda: total(scrape(port), B) > count)  # still probing the last good config
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "config reloaded from" in stderr
    assert "config reload failed, keeping the running config" in stderr and "invalid YAML" in stderr


def _scrape_or_none(port: int):
    try:
        return scrape(port)
    except OSError:
        return None
