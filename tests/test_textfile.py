"""Textfile mode (`host --textfile DIR`): the file, its readers, and the command's exit status.

The readers are real where they can be: Debian's node_exporter (textfile collector only, on a
private loopback port) reads what we write; windows_exporter cannot run here, so its rules that
differ from node_exporter's (from its textfile collector: UTF-8 byte order mark skipped, UTF-16 and
UTF-32 rejected, carriage returns dropped) are a small model checked row by row against a table,
and the rows both readers share are checked against node_exporter too.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import nodelab
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import CATALOGUE_GROUPS

from exporter.cli import build_host_parser
from exporter.config import HostConfig, parse_config
from exporter.hostside import collect_host
from exporter.hostside.textfile import (
    EXIT_COLLECTOR_FAILED, EXIT_OK, EXIT_USAGE, EXIT_WRITE_FAILED, FILENAME, TextfileError, render,
    write_atomically,
)
from exporter.runtime import Exporter

STANDINS = Path(__file__).parent / "standins"
TEXTFILE_ONLY = ("defender_host_textfile_collector_success", "defender_host_textfile_last_run_timestamp_seconds")
WINDOWS_COLLECTORS = {"mpcmdrun", "netsh", "reg_ssloptions", "reg_proxyserver", "powershell", "reg_proxypacurl",
                      "reg_proxybypass", "netsh_advproxy", "reg_system_internet_settings"}


def _windows_host(**overrides) -> dict:
    host = {"mode": "windows", "timeout": "10s", "mpcmdrun": str(STANDINS / "MpCmdRun.exe"),
            "netsh": str(STANDINS / "netsh"), "reg": str(STANDINS / "reg"),
            "powershell": str(STANDINS / "powershell")}
    host.update(overrides)
    return host


def _snapshot(monkeypatch, scenario: str, mode: str = "windows"):
    monkeypatch.setenv("STANDIN_SCENARIO", scenario)
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    host = _windows_host() if mode == "windows" else {"mode": "mdatp", "mdatp": str(STANDINS / "mdatp")}
    host["timeout"] = 10.0
    return asyncio.run(collect_host(HostConfig(**host)))


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


# --------------------------------------------------------------------------- windows_exporter's rules


def windows_exporter_error(data: bytes) -> str:
    """What windows_exporter's textfile collector says of a file ("" if it reads it).

    Its rules, in its order: a UTF-8 byte order mark is skipped, any other (UTF-16, UTF-32) fails
    the file; carriage returns are dropped; the text format parser (the one node_exporter uses too)
    needs a newline at the end; a sample with a timestamp fails the whole file; so does a series
    that appears twice."""
    if data.startswith((b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")):
        return "UTF-32 byte order mark"
    if data.startswith((b"\xfe\xff", b"\xff\xfe")):
        return "UTF-16 byte order mark"
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    data = data.replace(b"\r", b"")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if text and not text.endswith("\n"):
        return "no newline at the end"
    seen = set()
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.timestamp is not None:
                    return "textfile contains unsupported client-side timestamps"
                key = (s.name, tuple(sorted(s.labels.items())))
                if key in seen:
                    return "duplicate metrics detected"
                seen.add(key)
    except ValueError as exc:
        return f"parse error: {exc}"
    return ""


GOOD = b"# HELP a_metric A metric.\n# TYPE a_metric gauge\na_metric{x=\"1\"} 1\n"
# (row, file bytes, windows_exporter reads it, node_exporter reads it or None: not checked there)
RULES = [
    ("ASCII, LF, newline at the end", GOOD, True, True),
    ("UTF-8 label value", "a_metric{x=\"Göteborg\"} 1\n".encode(), True, True),
    ("UTF-8 byte order mark (skipped by windows_exporter only)", b"\xef\xbb\xbf" + GOOD, True, False),
    ("UTF-16LE with byte order mark", GOOD.decode().encode("utf-16"), False, False),
    ("UTF-16BE with byte order mark", b"\xfe\xff" + GOOD.decode().encode("utf-16-be"), False, False),
    ("UTF-32 with byte order mark", GOOD.decode().encode("utf-32"), False, False),
    ("CRLF line endings (dropped by windows_exporter only)", GOOD.replace(b"\n", b"\r\n"), True, None),
    ("one sample of several has a timestamp", GOOD + b"b_metric 2 1700000000000\n", False, False),
    ("the same series twice", GOOD + b"a_metric{x=\"1\"} 2\n", False, False),
    ("no newline at the end", GOOD.rstrip(b"\n"), False, False),
]


@pytest.mark.parametrize("row, data, windows_ok, node_ok", RULES, ids=[r[0] for r in RULES])
def test_windows_exporter_rules_table(row, data, windows_ok, node_ok):
    assert (windows_exporter_error(data) == "") is windows_ok, windows_exporter_error(data)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    directory = tmp_path_factory.mktemp("textfiles")
    with nodelab.node_exporter(directory) as exporter:
        exporter.directory = directory
        yield exporter


def _scrape_error(node) -> float:
    return _samples(node.scrape())[("node_textfile_scrape_error", ())]


def _node_reads_it_whole(node, path: Path, data: bytes) -> bool:
    """node_exporter served every sample of the file, as written, with no scrape error.
    (A series twice is no scrape error there: it keeps the first and logs the second.)"""
    path.write_bytes(data)
    served = _samples(node.scrape())
    if served[("node_textfile_scrape_error", ())] != 0:
        return False
    try:
        written = [((s.name, tuple(sorted(s.labels.items()))), s.value)
                   for f in text_string_to_metric_families(data.decode("utf-8")) for s in f.samples]
    except (UnicodeDecodeError, ValueError):
        return True
    return all(served.get(key) == value for key, value in written)


def test_rules_table_rows_against_the_real_node_exporter(node):
    """The rows node_exporter shares with windows_exporter, read by node_exporter itself."""
    path = node.directory / "rules.prom"
    try:
        for row, data, _, node_ok in RULES:
            if node_ok is not None:
                assert _node_reads_it_whole(node, path, data) is node_ok, \
                    f"{row}: node_exporter {'did not read' if node_ok else 'read'} it whole"
    finally:
        path.unlink(missing_ok=True)


SCENARIOS = [("windows", "winhttp_missing"), ("windows", "healthy"), ("windows", "ssl_workaround"),
             ("windows", "garbage"), ("mdatp", "winhttp_missing"), ("mdatp", "healthy")]


@pytest.mark.parametrize("mode, scenario", SCENARIOS)
def test_the_file_meets_both_readers_rules(monkeypatch, mode, scenario):
    snapshot = _snapshot(monkeypatch, scenario, mode)
    data = render(snapshot, finished_at=1_800_000_000.5)
    assert windows_exporter_error(data) == ""
    assert not data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"))
    assert data.endswith(b"\n") and b"\r" not in data
    data.decode("ascii")  # no byte a reader could take for another encoding
    samples = _samples(data.decode())  # no duplicates (asserted), no timestamps:
    assert all(s.timestamp is None for f in text_string_to_metric_families(data.decode()) for s in f.samples)
    assert samples[("defender_host_textfile_last_run_timestamp_seconds", ())] == 1_800_000_000.5
    lint = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True, timeout=30, check=False)
    # The one lint finding is the published name defender_host_signature_age_days (a contract
    # older than textfile mode: Defender counts the age in days). Anything else is ours.
    problems = [line for line in (lint.stdout + lint.stderr).decode().splitlines()
                if line != 'defender_host_signature_age_days use base unit "seconds" instead of "days"']
    assert problems == [], problems


def test_per_collector_success_gauges(monkeypatch):
    ok = _samples(render(_snapshot(monkeypatch, "healthy")).decode())
    success = {dict(k[1])["collector"]: v for k, v in ok.items() if k[0] == "defender_host_textfile_collector_success"}
    assert success == {name: 1.0 for name in WINDOWS_COLLECTORS}
    bad = _samples(render(_snapshot(monkeypatch, "garbage")).decode())
    success = {dict(k[1])["collector"]: v for k, v in bad.items() if k[0] == "defender_host_textfile_collector_success"}
    assert success == {name: 0.0 for name in WINDOWS_COLLECTORS}
    assert {k[0] for k in bad} == set(TEXTFILE_ONLY)  # nothing understood: no host series


@pytest.mark.parametrize("mode, scenario", [("windows", "winhttp_missing"), ("windows", "ssl_workaround"),
                                            ("mdatp", "winhttp_missing")])
def test_same_series_as_the_exporter(monkeypatch, mode, scenario):
    """Every host-side series the exporter would serve for this collection, with the same name,
    labels and value, and nothing else but the two textfile-only families."""
    snapshot = _snapshot(monkeypatch, scenario, mode)
    off = ", ".join(f"{g}: {{enabled: false}}" for g in CATALOGUE_GROUPS)
    exporter = Exporter(parse_config(f"groups: {{{off}}}\n"))
    exporter.host_snapshot = snapshot
    served = _samples(exporter.collector.render_exposition().decode())
    served = {k: v for k, v in served.items()
              if k[0].startswith("defender_host_") or dict(k[1]).get("source") in ("mpcmdrun", "mdatp")}
    written = _samples(render(snapshot).decode())
    assert served, "the exporter served no host-side series"
    assert {k: v for k, v in written.items() if k[0] not in TEXTFILE_ONLY} == served


# --------------------------------------------------------------------------- writing


def test_write_atomically_leaves_no_temporary_file(tmp_path):
    path = write_atomically(tmp_path, GOOD)
    assert path == tmp_path / FILENAME and path.read_bytes() == GOOD
    write_atomically(tmp_path, GOOD + b"b_metric 2\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]
    assert (tmp_path / FILENAME).stat().st_mode & 0o044 == 0o044  # node_exporter may run as another user


def test_write_atomically_errors_name_the_path(tmp_path):
    with pytest.raises(TextfileError, match="no-such-dir: not a directory"):
        write_atomically(tmp_path / "no-such-dir", GOOD)
    (tmp_path / FILENAME).mkdir()  # the target cannot be replaced
    with pytest.raises(TextfileError, match=f"cannot write {tmp_path / FILENAME}"):
        write_atomically(tmp_path, GOOD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]  # the temporary file was removed


def test_node_exporter_reads_our_file(node, monkeypatch):
    snapshot = _snapshot(monkeypatch, "winhttp_missing")
    write_atomically(node.directory, render(snapshot))
    try:
        samples = _samples(node.scrape())
        assert samples[("node_textfile_scrape_error", ())] == 0
        mp = {"group": "maps", "target": "MpCmdRun -ValidateMapsConnection", "route": "defender", "source": "mpcmdrun"}
        assert samples[("defender_maps_connection_valid", tuple(sorted(mp.items())))] == 0
        info = dict(mp, hresult="0x80072F8F", cause="winhttp_proxy_missing", reason="mpcmdrun_failed")
        assert samples[("defender_maps_validation_info", tuple(sorted(info.items())))] == 1
        assert samples[("defender_host_winhttp_proxy_configured", ())] == 0
        assert samples[("defender_host_textfile_collector_success", (("collector", "mpcmdrun"),))] == 1
        assert ("node_textfile_mtime_seconds", (("file", str(node.directory / FILENAME)),)) in samples
    finally:
        (node.directory / FILENAME).unlink(missing_ok=True)


def _naive_write(directory: Path, data: bytes) -> None:
    """What an in-place writer does: truncate, write, with the reader free to look in between."""
    with open(directory / FILENAME, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.002)
        f.write(data[len(data) // 2:])


def _reads_while_writing(node, write, versions: list[bytes], *, seconds: float, stop_at_first_partial: bool):
    """Scrape node_exporter while `write` alternates `versions`; (scrapes, partial reads)."""
    complete = [{k: v for k, v in _samples(v.decode()).items()} for v in versions]
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            write(node.directory, versions[i % len(versions)])
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    write(node.directory, versions[0])
    thread.start()
    scrapes, partial = 0, []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            samples = _samples(node.scrape())
            scrapes += 1
            ours = {k: v for k, v in samples.items() if k[0].startswith("defender_")}
            if samples[("node_textfile_scrape_error", ())] != 0 or ours not in complete:
                partial.append(ours)
                if stop_at_first_partial:
                    break
    finally:
        stop.set()
        thread.join(timeout=10)
        (node.directory / FILENAME).unlink(missing_ok=True)
    return scrapes, partial


def _two_versions(monkeypatch) -> list[bytes]:
    return [render(_snapshot(monkeypatch, "winhttp_missing"), finished_at=1.0),
            render(_snapshot(monkeypatch, "healthy"), finished_at=2.0)]


def test_no_partial_file_is_ever_read(node, monkeypatch):
    scrapes, partial = _reads_while_writing(node, write_atomically, _two_versions(monkeypatch), seconds=3.0,
                                            stop_at_first_partial=False)
    assert scrapes >= 20 and partial == []


def test_the_partial_read_check_catches_an_in_place_writer(node, monkeypatch):
    """Without the rename the same check sees half-written files (so the test above can fail)."""
    scrapes, partial = _reads_while_writing(node, _naive_write, _two_versions(monkeypatch), seconds=10.0,
                                            stop_at_first_partial=True)
    assert partial, f"{scrapes} scrapes saw no partial file"


# --------------------------------------------------------------------------- the command


def _run(tmp_path, *args, host: dict | None = None, scenario: str = "winhttp_missing"):
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"host": host if host is not None else _windows_host()}))
    env = dict(os.environ, STANDIN_SCENARIO=scenario)
    return subprocess.run([sys.executable, "-m", "exporter", "host", "--config.file", str(config), *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_command_writes_the_file_and_exits_0(tmp_path):
    out = tmp_path / "textfiles"
    out.mkdir()
    result = _run(tmp_path, "--textfile", str(out))
    assert result.returncode == EXIT_OK, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [FILENAME]
    samples = _samples((out / FILENAME).read_text())
    assert abs(samples[("defender_host_textfile_last_run_timestamp_seconds", ())] - time.time()) < 60
    assert "wrote" in result.stderr and result.stdout == ""


def test_command_exits_1_when_a_collector_fails(tmp_path):
    out = tmp_path / "textfiles"
    out.mkdir()
    result = _run(tmp_path, "--textfile", str(out), host=_windows_host(powershell=str(tmp_path / "nope")))
    assert result.returncode == EXIT_COLLECTOR_FAILED, result.stderr
    samples = _samples((out / FILENAME).read_text())
    assert samples[("defender_host_textfile_collector_success", (("collector", "powershell"),))] == 0
    assert samples[("defender_host_textfile_collector_success", (("collector", "mpcmdrun"),))] == 1
    assert ("defender_host_signature_age_days", ()) not in samples
    assert "powershell: not found" in result.stderr


def test_command_exits_3_when_the_file_cannot_be_written(tmp_path):
    result = _run(tmp_path, "--textfile", str(tmp_path / "missing"))
    assert result.returncode == EXIT_WRITE_FAILED
    assert f"{tmp_path / 'missing'}: not a directory" in result.stderr and "Traceback" not in result.stderr


def test_command_exits_2_on_bad_configuration(tmp_path):
    result = _run(tmp_path, "--textfile", str(tmp_path), host={"mode": "solaris"})
    assert result.returncode == EXIT_USAGE and "host.mode" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / FILENAME).exists()
    result = _run(tmp_path, "--no-such-flag")
    assert result.returncode == EXIT_USAGE and "unrecognized arguments" in result.stderr


def test_command_without_textfile_prints_the_series(tmp_path):
    result = _run(tmp_path, scenario="healthy")
    assert result.returncode == EXIT_OK, result.stderr
    assert windows_exporter_error(result.stdout.encode()) == ""
    assert _samples(result.stdout)[("defender_host_winhttp_proxy_configured", ())] == 1


# --------------------------------------------------------------------------- shipped schedules

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify, on copies whose ExecStart points at the installed console script
    (it checks that the program exists); any message, even a warning about a key, fails."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing (Debian package systemd; tests/run.sh installs it)"
    exe = shutil.which("defender-connectivity-exporter")
    assert exe, "console script not installed: pip install -e . (tests/run.sh does)"
    names = ["defender-connectivity-textfile.service", "defender-connectivity-textfile.timer"]
    for name in names:
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/defender-connectivity-exporter", exe))
    result = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in names)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def _exec_start_args(service_text: str) -> list[str]:
    line = next(ln for ln in service_text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_shipped_command_lines_are_valid_host_invocations():
    service = (DEPLOY / "systemd" / "defender-connectivity-textfile.service").read_text()
    argv = _exec_start_args(service)
    assert argv[0].endswith("/defender-connectivity-exporter") and argv[1] == "host"
    assert build_host_parser().parse_args(argv[2:]).textfile == "/var/lib/prometheus/node-exporter"
    assert "SuccessExitStatus=1" in service.splitlines()

    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    task = ET.parse(DEPLOY / "windows" / "defender-connectivity-textfile.xml").getroot()
    assert task.tag == "{%s}Task" % ns["t"]
    command = task.findtext("t:Actions/t:Exec/t:Command", namespaces=ns)
    arguments = shlex.split(task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=ns))
    assert command.endswith("\\defender-connectivity-exporter.exe") and arguments[0] == "host"
    assert build_host_parser().parse_args(arguments[1:]).textfile == r"C:\Program Files\windows_exporter\textfile_inputs"
    assert task.findtext("t:Principals/t:Principal/t:UserId", namespaces=ns) == "S-1-5-18"  # SYSTEM
    assert task.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=ns) == "IgnoreNew"
    assert task.findtext("t:Triggers/t:TimeTrigger/t:Repetition/t:Interval", namespaces=ns) == "PT10M"
    # The task's time limit outlasts the collectors' own (host.timeout, 2 minutes by default).
    assert task.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=ns) == "PT5M"
