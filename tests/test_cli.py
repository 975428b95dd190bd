"""The installed console script end to end: serve, scrape, promtool, shut down.

The built-in catalogue is probed only inside a network namespace of its own
(`unshare -n`), so nothing leaves the machine: there every Microsoft name
fails to resolve, clearly, and nothing crashes.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lab.servers import Ok
from prometheus_client.parser import text_string_to_metric_families
from support import lab_config

from exporter import metrics as m

HERE = Path(__file__).parent


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _promtool_check(text: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus (tests/run.sh does)"
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).strip()


def _console_script() -> str:
    exe = shutil.which("defender-connectivity-exporter")
    assert exe, "console script not installed: pip install -e . (tests/run.sh does)"
    return exe


def test_console_script_serves_lab_metrics_and_shuts_down(tmp_path, lab_pki, lab_servers, free_port):
    server = lab_servers.serve(Ok(status=404), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    config = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                        connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                        ca_file=lab_pki.ca_bundle_path, extra={"tls": {"ca_file": str(lab_pki.ca_bundle_path),
                                                                        "ssl_options": 0}})
    port = free_port()
    proc = subprocess.Popen([_console_script(), "--config.file", str(config),
                             "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json"],
                            stderr=subprocess.PIPE, text=True)
    try:
        body = ""
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert "metrics" in response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=5) as response:
            assert response.status == 200
    finally:
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        stopped_in = time.time() - started
        stderr = proc.stderr.read()
    assert code == 0, stderr
    assert stopped_in < 5
    assert '"level": "info"' in stderr and "Traceback" not in stderr
    labels = {"group": "maps", "target": "https://wdcp.microsoft.com/", "route": "defender"}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in _samples(body)}
    assert values[(m.PROBE_SUCCESS.name, tuple(sorted(labels.items())))] == 1
    assert values[(m.PROBE_HTTP_STATUS.name, tuple(sorted(labels.items())))] == 404
    assert values[("defender_probes_total", tuple(sorted({**labels, "result": "success"}.items())))] >= 1
    assert _promtool_check(body) == ""
    assert "# HELP defender_probe_success" in body and "Cached from the background scheduler" in body


def test_every_metric_in_the_contract_is_documented_with_its_type_and_labels():
    """The README's metrics table says what metrics.py defines: name, type, and
    the labels besides group, target and route (or, for series without them,
    all their labels)."""
    readme = (HERE.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`defender_\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    for spec in m.ALL:
        assert spec.name in rows, f"README's metrics table lacks {spec.name}"
        _, type_, labels_cell, _ = rows[spec.name]
        assert type_ == spec.type, f"README gives {spec.name} the type {type_}"
        # Parenthesised words are values or notes, not label names.
        documented = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels_cell)))
        per_target = set(m.TARGET_LABELS) <= set(spec.labels)
        expected = set(spec.labels) - set(m.TARGET_LABELS) if per_target else set(spec.labels)
        assert documented == expected, f"README gives {spec.name} the labels {documented}, metrics.py {expected}"
        if not per_target and spec.labels:
            assert "(no " in labels_cell or spec.name.startswith(("defender_crl_", "defender_exporter_")), \
                f"README must say {spec.name} lacks the per-target labels"


def test_help_shows_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    usage = result.stdout.split("\n\n")[0]
    assert re.search(r"^\s+defender-connectivity-exporter check ", usage, re.M), usage
    assert re.search(r"^commands:\n  check\s+probe every target once", result.stdout, re.M), result.stdout


def test_every_dispatched_subcommand_is_in_the_help():
    """A subcommand added to cli.py's dispatch must be listed in COMMANDS (and so in --help)."""
    from exporter import cli

    source = Path(cli.__file__).read_text()
    dispatched = set(re.findall(r"argv\[0\] == \"(\w+)\"", source))
    assert dispatched and dispatched <= set(cli.COMMANDS), (dispatched, cli.COMMANDS)


@pytest.mark.parametrize("args, hint", [
    (["chekc"], "'chekc' is not a command; did you mean 'check'?"),
    (["status"], "'status' is not a command; commands: check"),
    (["--config-file", "x.yml"], "did you mean --config.file?"),
    (["check", "--formt", "json"], "did you mean --format?"),
])
def test_an_unknown_word_gets_a_hint(args, hint):
    result = subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    assert hint in result.stderr and "--help" in result.stderr, result.stderr


def _reader_gone(args: list[str]) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader has already gone (what `| head -1` becomes once head
    exits), deterministically: the read end is closed before the program writes."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    # With PYTHONUNBUFFERED every write reaches the pipe at once, and argparse's own printing
    # swallows the EPIPE of --help/--version (it ignores OSError): quiet, but exit 0. The
    # test asks for the ordinary, buffered interpreter a user's shell runs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        return subprocess.run([sys.executable, "-m", "exporter", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=env)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["check", "--help"], ["--config.check"]],
                         ids=["help", "version", "check-help", "config-check"])
def test_a_closed_pipe_ends_quietly(args):
    result = _reader_gone(args)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 128 + signal.SIGPIPE, result.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_check_into_a_closed_pipe_ends_quietly(tmp_path, lab_pki, lab_servers, fmt):
    """`check | head -1`, `check --format json | head -c 10`."""
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    config = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                        connect_to=[server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path,
                        ssl_options=0)
    result = _reader_gone(["check", "--config.file", str(config), "--format", fmt])
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 128 + signal.SIGPIPE, result.stderr
    # and through a real shell pipeline, as a user types it
    head = "head -1" if fmt == "text" else "head -c 10"
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {shlex.join([sys.executable, '-m', 'exporter'])} check "
                            f"--config.file {shlex.quote(str(config))} --format {fmt} | {head}"],
                           capture_output=True, text=True, timeout=60)
    assert "Traceback" not in piped.stderr and piped.returncode in (0, 128 + signal.SIGPIPE), piped.stderr
    assert piped.stdout


def test_counts_are_worded_in_the_singular_and_plural(tmp_path):
    one = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]}, name="one.yml")
    two = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/", "https://x.wdcp.microsoft.com/"],
                                "adl": ["http://go.microsoft.com/"]}, name="two.yml")
    for config, words in ((one, "(1 probe job in 1 group)"), (two, "(3 probe jobs in 2 groups)")):
        result = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.strip().endswith(words), result.stdout + result.stderr


def test_an_ipv6_listen_address_is_logged_in_brackets(tmp_path, free_port):
    config = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                        connect_to=["wdcp.microsoft.com:443:127.0.0.1:9"])
    port = free_port("::1")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(config),
                             "--web.listen-address", f"[::1]:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 30
        while "listening" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        assert f"listening on http://[::1]:{port} with 1 probe job from" in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_bad_usage_exits_2():
    result = subprocess.run([sys.executable, "-m", "exporter", "--no-such-flag"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    result = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address", "nonsense"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--web.listen-address" in result.stderr


@pytest.mark.netns
def test_builtin_catalogue_in_an_isolated_network_namespace(tmp_path):
    """No config, no network: every catalogue target is served, failing with dns_error."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare missing (Debian package util-linux)"
    result = subprocess.run([unshare, "-n", sys.executable, str(HERE / "helpers" / "netns_scrape.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    body = (tmp_path / "metrics.txt").read_text()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr
    assert (tmp_path / "ready.txt").read_text().startswith("Ready")
    seconds, code = (tmp_path / "shutdown_seconds.txt").read_text().split()
    assert float(seconds) < 5 and code == "0"

    from exporter.config import load_config

    jobs = load_config(None).jobs()
    samples = _samples(body)
    info = [s for s in samples if s.name == m.TARGET_INFO.name]
    assert len(info) == len(jobs) == 61
    reasons = [s for s in samples if s.name == m.PROBE_FAILURE_REASON.name]
    assert len(reasons) == len(jobs)
    assert {s.labels["reason"] for s in reasons} == {"dns_error"}
    success = [s for s in samples if s.name == m.PROBE_SUCCESS.name]
    assert len(success) == len(jobs) and all(s.value == 0 for s in success)
    maps = [s for s in samples if s.name == m.MAPS_VALIDATION_INFO.name]
    assert maps and all(s.labels["cause"] == "dns_failure" and s.labels["hresult"] == "0x80072EE7" for s in maps)
    assert _promtool_check(body) == ""
    # The 2026 catalogue: the certificate engine's groups on the system route, every entry with its source.
    by_group = {}
    for s in info:
        by_group.setdefault(s.labels["group"], set()).add((s.labels["route"], s.labels["source"]))
    assert by_group["ctl"] == {("system", "article")}
    assert by_group["revocation"] == {("system", "azure-ca-details"), ("system", "microsoft-tls-g2-chain")}
    assert by_group["maps"] == {("defender", "article")}


@pytest.mark.netns
def test_streamlined_profile_in_an_isolated_network_namespace(tmp_path):
    """`connectivity: streamlined`, offline: MAPS is judged on the mdav hosts, sources named."""
    config = tmp_path / "config.yml"
    config.write_text("connectivity: streamlined\nregion: uk\n")
    exe = shutil.which("defender-connectivity-exporter")
    assert exe, "console script not installed: pip install -e . (tests/run.sh does)"
    result = subprocess.run([shutil.which("unshare"), "-n", sys.executable, str(HERE / "helpers" / "netns_scrape.py"),
                             str(tmp_path), f"exec {exe} --config.file {config}"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    samples = _samples((tmp_path / "metrics.txt").read_text())
    info = {(s.labels["group"], s.labels["target"]): s.labels["source"] for s in samples if s.name == m.TARGET_INFO.name}
    maps = {t for g, t in info if g == "maps"}
    assert maps == {"https://mdav.uk.endpoint.security.microsoft.com/mdav/test"}
    assert {info[("maps", t)] for t in maps} == {"mde-client-analyzer"}
    assert {t for g, t in info if g == "submission"} == {
        "https://mdav.uk.endpoint.security.microsoft.com/storage/ussuk1southprod/",
        "https://mdav.uk.endpoint.security.microsoft.com/storage/ussuk1westprod/",
    }
    verdicts = [s for s in samples if s.name == m.MAPS_VALIDATION_INFO.name]
    assert {s.labels["target"] for s in verdicts} == maps
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


LATER = {"*after a TLS handshake:*", "*after a CRL fetch:*", "*after an OCSP fetch:*",
         "*after an OCSP or CRL fetch:*", "*with a PAC route:*", "*for checked content:*"}


@pytest.mark.netns
def test_readme_marks_the_series_that_do_not_exist_offline(tmp_path):
    """A user looking offline for defender_tls_* or defender_crl_* finds none: the README's table
    must say, for exactly those series, when they appear (host-mode series say "host mode")."""
    result = subprocess.run(["unshare", "-n", sys.executable, str(HERE / "helpers" / "netns_scrape.py"),
                             str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    offline = {f.name for f in text_string_to_metric_families((tmp_path / "metrics.txt").read_text()) if f.samples}
    readme = (HERE.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`defender_\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells[3]
    for spec in m.ALL:
        meaning = rows[spec.name]
        family = spec.name.removesuffix("_total") if spec.type == "counter" else spec.name
        marked = any(meaning.startswith(mark) for mark in LATER) or meaning.startswith("host mode")
        if family in offline:
            assert not marked, f"{spec.name} is there offline, yet the README says it comes later"
        else:
            assert marked, f"{spec.name} is absent offline: the README must say when it appears"
