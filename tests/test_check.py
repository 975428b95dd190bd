"""`check` as a user runs it: a subprocess on lab configs (the lab servers and Squid run in
this pytest process, so the subprocess reaches them on loopback)."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from lab.servers import Files, Ok, refused_address
from support import lab_config, root_fingerprint

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "check-json.md"
MAPS = "https://wdcp.microsoft.com/"
OK_LINE = "ValidateMapsConnection successfully established a connection to MAPS"
TRAP_LINE = "ValidateMapsConnection failed to establish a connection to MAPS (hr=0x80072F8F httpcore=451)"


def run_check(*args: str, console_script: bool = False, **kwargs) -> subprocess.CompletedProcess:
    command = ["defender-connectivity-exporter"] if console_script else [sys.executable, "-m", "exporter"]
    return subprocess.run([*command, "check", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
                          **kwargs)


@pytest.fixture
def maps_lab(tmp_path, lab_pki, lab_servers):
    """A MAPS server and CRL servers; returns a function making a config for a route layout."""
    maps = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    by_host: dict[str, dict[str, bytes]] = {}
    for url, data in lab_pki.published_files().items():
        parts = urlsplit(url)
        by_host.setdefault(parts.hostname, {})[parts.path] = data
    crl = {host: lab_servers.serve(Files(paths), port=80) for host, paths in by_host.items()}

    def config(*, trap: bool = False, squid_factory=None, extra_groups=None, name="config.yml") -> Path:
        group = {"targets": [MAPS], "expected_roots": [root_fingerprint(lab_pki)]}
        groups = {"maps": group, **(extra_groups or {})}
        if not trap:
            connect_to = [maps.connect_to("wdcp.microsoft.com", 443)]
            connect_to += [s.connect_to(h, 80) for h, s in crl.items()]
            return lab_config(tmp_path, groups, connect_to=connect_to, ca_file=lab_pki.ca_bundle_path, name=name)
        squid = squid_factory({"wdcp.microsoft.com": maps.ip, **{h: s.ip for h, s in crl.items()}})
        refused = []
        for host in crl:
            ip, port = refused_address()
            refused.append(f"{host}:80:{ip}:{port}")
        return lab_config(tmp_path, groups, routes={"defender": squid.url}, connect_to=refused,
                          ca_file=lab_pki.ca_bundle_path, name=name)

    config.maps = maps
    return config


# ------------------------------------------------------------------ text


def test_all_pass_exit_0_and_mpcmdrun_words(maps_lab):
    result = run_check("--config.file", str(maps_lab()))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^maps: Cloud-delivered protection", out, re.MULTILINE)
    assert out.startswith("Catalogue: standard connectivity (the article's hosts), every region\n")
    assert re.search(r"RESULT\s+LATENCY\s+TARGET\s+ROUTE\s+REASON", out)
    assert re.search(r"^\s+ok\s+[\d.]+ms\s+https://wdcp\.microsoft\.com/\s+defender\s+HTTP 200", out, re.MULTILINE)
    assert OK_LINE in out
    assert out.splitlines()[-1] == "OK: the probe succeeded; the MAPS verdict is valid."
    assert "probing" not in result.stderr  # not a terminal: no progress


def test_the_trap_exit_1_with_cause_and_remedy(maps_lab, squid_factory):
    result = run_check("--config.file", str(maps_lab(trap=True, squid_factory=squid_factory)))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    # The probe itself is green: the trap is that only the verdict fails.
    assert re.search(r"^\s+ok\s+.*https://wdcp\.microsoft\.com/\s+defender\s+HTTP 200", out, re.MULTILINE)
    lines = out.splitlines()
    i = lines.index("  " + TRAP_LINE)
    assert lines[i + 1].startswith("  reason: crl_unreachable")
    assert lines[i + 2] == "  cause:  winhttp_proxy_missing"
    assert lines[i + 3].startswith("  fix:    ") and "netsh winhttp set proxy" in lines[i + 3]
    # The last line names what failed: the verdict, not "0 of 1 checks passed" under a green row.
    assert out.splitlines()[-1] == ("FAILED: the MAPS verdict is invalid (winhttp_proxy_missing, hr=0x80072F8F); "
                                    "the probe succeeded.")


def test_console_script_and_group_filter(maps_lab, lab_servers):
    plain = lab_servers.serve(Ok(status=404), port=80)
    config = maps_lab(extra_groups={"adl": ["http://go.microsoft.com/"]})
    # go.microsoft.com is not mapped: only --group maps must be probed (and pass).
    if shutil.which("defender-connectivity-exporter") is None:
        pytest.skip("console script not installed")
    result = run_check("--config.file", str(config), "--group", "maps", console_script=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "go.microsoft.com" not in result.stdout
    assert plain.connections == 0


# ------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("args, words", [
    (["--no-such-flag"], "unrecognized arguments"),
    (["--format", "xml"], "invalid choice"),
    (["--group", "nope"], "unknown group 'nope'"),
    (["--config.file", "/nonexistent/config.yml"], "cannot read file"),
])
def test_bad_usage_exit_2(args, words):
    result = run_check(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert result.stdout == ""


def test_invalid_config_exit_2_names_the_key(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("tls:\n  ssl_options: 7\n")
    result = run_check("--config.file", str(bad))
    assert result.returncode == 2
    assert "tls.ssl_options" in result.stderr and "0 to 3" in result.stderr


# ------------------------------------------------------------------ JSON


def _documented_keys(section: str) -> set[str]:
    """Keys in the first column of the table under the `## section` heading of check-json.md."""
    text = DOC.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, re.MULTILINE))


def test_json_is_stable_and_documented(maps_lab, squid_factory):
    result = run_check("--config.file", str(maps_lab(trap=True, squid_factory=squid_factory)), "--format", "json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == _documented_keys("Top level")
    assert data["format"] == 1 and data["success"] is False
    (group,) = data["groups"]
    assert set(group) == _documented_keys("Groups")
    (target,) = group["targets"]
    assert set(target) == _documented_keys("Targets")
    assert set(target["phases"]) == {"resolve", "connect", "proxy_connect", "tls", "processing", "transfer"}
    assert target["success"] is True and target["reason"] is None and target["http_status"] == 200
    assert target["tls_verified"] is True and target["revoked"] is False and target["intercepted"] is False
    (verdict,) = data["maps"]
    assert set(verdict) == _documented_keys("MAPS verdicts")
    assert verdict == {**verdict, "target": MAPS, "route": "defender", "source": "emulated", "valid": False,
                       "hresult": "0x80072F8F", "cause": "winhttp_proxy_missing", "reason": "crl_unreachable",
                       "message": TRAP_LINE}
    assert "netsh winhttp" in verdict["remedy"] and verdict["detail"]


def test_json_when_valid(maps_lab):
    result = run_check("--config.file", str(maps_lab()), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["success"] is True
    (verdict,) = data["maps"]
    assert verdict["valid"] is True and verdict["message"] == OK_LINE
    assert verdict["hresult"] is None and verdict["cause"] is None and verdict["remedy"] is None


# ------------------------------------------------------------------ progress on a terminal


def test_progress_only_on_a_terminal(maps_lab):
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "exporter", "check", "--config.file", str(maps_lab())],
                                stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=os.environ.copy())
        os.close(slave)
        slave = -1
        stdout, _ = proc.communicate(timeout=60)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert b"probing: 1/1 done" in b"".join(chunks)
    assert b"probing" not in stdout


def test_streamlined_profile_validates_the_tenant_geographys_mdav_host(tmp_path, lab_pki, lab_servers):
    """`connectivity: streamlined` + `region: eu`: the only MAPS target is mdav.eu..., judged as MAPS."""
    host = "mdav.eu.endpoint.security.microsoft.com"
    maps = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf(host))
    by_host: dict[str, dict[str, bytes]] = {}
    for url, data in lab_pki.published_files().items():
        parts = urlsplit(url)
        by_host.setdefault(parts.hostname, {})[parts.path] = data
    connect_to = [maps.connect_to(host, 443)]
    connect_to += [lab_servers.serve(Files(paths), port=80).connect_to(h, 80) for h, paths in by_host.items()]
    config = lab_config(tmp_path, {"maps": {"expected_roots": [root_fingerprint(lab_pki)]}}, connect_to=connect_to,
                        ca_file=lab_pki.ca_bundle_path, extra={"connectivity": "streamlined", "region": "eu"})
    result = run_check("--config.file", str(config), "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["connectivity"], data["region"]) == ("streamlined", "eu")
    (verdict,) = data["maps"]
    assert verdict["target"] == f"https://{host}/mdav/test" and verdict["valid"] is True
    text = run_check("--config.file", str(config)).stdout
    assert text.startswith("Catalogue: streamlined connectivity (*.endpoint.security.microsoft.com), region eu\n")


def test_summary_line_counts_with_plurals_and_failures_first():
    from types import SimpleNamespace as NS

    from exporter.check import summary_line

    def row(success=True, reason=None, verdict=None):
        return (None, NS(probe=NS(success=success, reason=reason), maps=verdict))

    def verdict(valid, cause="", hresult=""):
        return NS(valid=valid, cause=cause, hresult=hresult)

    assert summary_line([row(), row(), row(verdict=verdict(True))]) == \
        "OK: all 3 probes succeeded; the MAPS verdict is valid."
    assert summary_line([row(False, "dns_error")]) == "FAILED: the probe failed (dns_error: 1)."
    dns = verdict(False, "dns_failure", "0x80072EE7")
    assert summary_line([row(False, "dns_error", dns), row(False, "dns_error", dns), row(False, "connect_timeout")]) == \
        ("FAILED: 3 of 3 probes failed (dns_error: 2, connect_timeout: 1); "
         "2 of 2 MAPS verdicts are invalid (dns_failure, hr=0x80072EE7).")
    assert summary_line([row(), row(verdict=verdict(True)), row(verdict=verdict(True))]) == \
        "OK: all 3 probes succeeded; all 2 MAPS verdicts are valid."


@pytest.mark.netns
def test_the_documented_example_has_the_shape_and_values_of_real_output():
    """docs/check-json.md's example against `check --format json` on the built-in catalogue
    (offline, in a network namespace of its own): the same keys at every level, and for the
    example's target the same published `pattern` (the catalogue's wildcard, not the URL)."""
    example = json.loads(re.search(r"## Example[^\n]*\n+```json\n(.*?)```", DOC.read_text(), re.S).group(1))
    command = shlex.join([sys.executable, "-m", "exporter", "check", "--group", "maps", "--format", "json"])
    result = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {command}"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    real = json.loads(result.stdout)
    assert set(example) == set(real)
    (example_group,), real_group = example["groups"], real["groups"][0]
    assert set(example_group) == set(real_group)
    (example_target,) = example_group["targets"]
    real_targets = {t["target"]: t for t in real_group["targets"]}
    real_target = real_targets[example_target["target"]]
    assert set(example_target) == set(real_target)
    assert set(example_target["phases"]) == set(real_target["phases"])
    assert example_target["pattern"] == real_target["pattern"], "the example's pattern is not what check prints"
    assert set(example["maps"][0]) == set(real["maps"][0])
