"""What the exporter logs at info level: one summary after the first round, then one line per
change of a target's state or of a MAPS verdict, never one line per probe."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from lab.servers import refused_address
from support import lab_config

from exporter.config import load_config
from exporter.redact import Redactor
from exporter.probes import ProbeResult
from exporter.reasons import Reason
from exporter.assess import MapsVerdict, Outcome
from exporter.state import ResultStore

A, B = "https://wdcp.microsoft.com/", "https://x.wdcp.microsoft.com/"
C = "http://go.microsoft.com/"
DNS_VERDICT = MapsVerdict(False, reason="dns_error", hresult="0x80072EE7", cause="dns_failure")
TRAP_VERDICT = MapsVerdict(False, reason="crl_unreachable", hresult="0x80072F8F", cause="winhttp_proxy_missing")


def result(ok: bool, reason: Reason | None = None, detail: str = "") -> ProbeResult:
    return ProbeResult(ok, None if ok else reason, time.time(), 0.01, (), detail=detail)


@pytest.fixture
def lab(tmp_path):
    from exporter.statelog import StateLog

    config = load_config(str(lab_config(tmp_path, {"maps": [A, B], "adl": [C]},
                                        routes={"defender": "http://noc:s3cr%3Et@proxy.example:3128"})))
    store = ResultStore()
    store.set_jobs(config.jobs())
    jobs = {job.target.url: job for job in config.jobs()}
    first_round = frozenset(store.jobs)
    StateLog(store, ready=lambda: first_round <= set(store.latest), redact=Redactor(config))
    return store, jobs


def info_lines(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    caplog.clear()
    return lines


def test_summary_after_the_first_round_then_only_changes(lab, caplog):
    store, jobs = lab
    caplog.set_level(logging.INFO, logger="exporter")
    store.record(jobs[A], Outcome(result(True), maps=MapsVerdict(True)))
    store.record(jobs[B], Outcome(result(False, Reason.DNS_ERROR, "no such host"), maps=DNS_VERDICT))
    assert info_lines(caplog) == [], "nothing per probe during the first round"
    store.record(jobs[C], Outcome(result(False, Reason.DNS_ERROR)))
    assert info_lines(caplog) == ["first round: 3 probe jobs, 2 failing (dns_error: 2); "
                                  "MAPS verdicts: 1 of 2 invalid (dns_failure, hr=0x80072EE7)"]

    for _ in range(3):  # the same states again: silence
        store.record(jobs[A], Outcome(result(True), maps=MapsVerdict(True)))
        store.record(jobs[B], Outcome(result(False, Reason.DNS_ERROR, "no such host"), maps=DNS_VERDICT))
        store.record(jobs[C], Outcome(result(False, Reason.DNS_ERROR)))
    assert info_lines(caplog) == []

    store.record(jobs[C], Outcome(result(True)))
    assert info_lines(caplog) == [f"target {C} (group adl, route defender): ok again (was failing: dns_error)"]

    store.record(jobs[B], Outcome(result(True), maps=MapsVerdict(True)))
    assert info_lines(caplog) == [
        f"target {B} (group maps, route defender): ok again (was failing: dns_error)",
        f"MAPS verdict for {B} (route defender): valid again (was hr=0x80072EE7, cause dns_failure)"]

    # The article's trap: the probe stays ok, only the verdict changes.
    store.record(jobs[A], Outcome(result(True), maps=TRAP_VERDICT))
    assert info_lines(caplog) == [f"MAPS verdict for {A} (route defender): invalid, hr=0x80072F8F, "
                                  "cause winhttp_proxy_missing (crl_unreachable)"]

    store.record(jobs[C], Outcome(result(False, Reason.CONNECT_TIMEOUT, "no answer within 3 s")))
    store.record(jobs[C], Outcome(result(False, Reason.CONNECT_REFUSED)))
    assert info_lines(caplog) == [
        f"target {C} (group adl, route defender): failing: connect_timeout (no answer within 3 s)",
        f"target {C} (group adl, route defender): failing: connect_refused (was failing: connect_timeout)"]


def test_all_ok_summary_and_no_secret_in_details(lab, caplog):
    store, jobs = lab
    caplog.set_level(logging.DEBUG, logger="exporter")
    for url in (A, B):
        store.record(jobs[url], Outcome(result(True), maps=MapsVerdict(True)))
    store.record(jobs[C], Outcome(result(True)))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == \
        ["first round: 3 probe jobs, all ok; MAPS verdicts: all 2 valid"]
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 3, "one debug line per probe"
    caplog.clear()
    store.record(jobs[C], Outcome(result(False, Reason.PROXY_AUTH_REQUIRED, "proxy said no to noc:s3cr>t and s3cr%3Et")))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "failing" in text and "s3cr>t" not in text and "s3cr%3Et" not in text, text


def test_the_running_exporter_logs_the_first_round(tmp_path, free_port):
    """The reported case: every probe failing, and the log said only "listening"."""
    ip, port = refused_address()
    config = lab_config(tmp_path, {"maps": [A, B]}, connect_to=[f"wdcp.microsoft.com:443:{ip}:{port}",
                                                                 f"x.wdcp.microsoft.com:443:{ip}:{port}"])
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(config), "--web.listen-address",
                             f"127.0.0.1:{free_port()}"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not any("first round" in line for line in list(lines)):
            time.sleep(0.1)
        summary = next((line for line in list(lines) if "first round" in line), "")
        assert re.search(r"level=info .*first round: 2 probe jobs, 2 failing \(connect_refused: 2\); "
                         r"MAPS verdicts: 2 of 2 invalid", summary), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        reader.join(timeout=5)
    assert sum("probe of" in line for line in lines) == 0, "no line per probe at info level"
