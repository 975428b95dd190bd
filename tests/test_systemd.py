"""The systemd unit and the reload commands of docs/operations.md, run for real.

systemd itself does not run here (no init in CI's container), so the unit is checked with
`systemd-analyze verify` and its ExecReload is executed as systemd would (argv, $MAINPID
replaced) against a running console script; the documented `pkill -f` pattern is tried with
`pgrep -f` (the same matching, but it signals nothing: other exporters may run on this machine).
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import lab_config


REPO = Path(__file__).parent.parent
UNIT = REPO / "deploy" / "systemd" / "defender-connectivity-exporter.service"
OPERATIONS = REPO / "docs" / "operations.md"
INSTALLED_BIN = "/opt/defender-connectivity-exporter/bin/"


def unit_settings() -> dict[str, str]:
    """Key=value of the unit, continuation lines joined (the last setting of a key wins)."""
    settings, pending = {}, ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("#") or not line.strip() and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if "=" in line and not line.startswith("["):
            key, _, value = line.partition("=")
            settings[key.strip()] = " ".join(value.split())
    return settings


def console_script() -> str:
    exe = shutil.which("defender-connectivity-exporter")
    assert exe, "console script not installed"
    return exe


def test_unit_runs_the_console_script_and_reloads_with_sighup():
    settings = unit_settings()
    argv = shlex.split(settings["ExecStart"])
    assert argv[0] == INSTALLED_BIN + "defender-connectivity-exporter"
    assert "--config.file=/etc/defender-connectivity-exporter/config.yml" in argv
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify also checks that ExecStart exists: point it at this environment's console script.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(Path(console_script()).parent) + "/"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@pytest.fixture
def running_exporter(tmp_path, free_port):
    config = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                        connect_to=["wdcp.microsoft.com:443:127.0.0.1:9"])
    proc = subprocess.Popen([console_script(), "--config.file", str(config),
                             "--web.listen-address", f"127.0.0.1:{free_port()}"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.time() + 30
    while not any("listening" in line for line in list(lines)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert any("listening" in line for line in list(lines)), "".join(lines)
    yield proc, lines
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    reader.join(timeout=5)


def test_exec_reload_reloads_the_running_exporter(running_exporter):
    proc, lines = running_exporter
    argv = [proc.pid if a == "$MAINPID" else a for a in shlex.split(unit_settings()["ExecReload"])]
    subprocess.run([str(a) for a in argv], check=True, timeout=10)
    deadline = time.time() + 15
    while not any("config reloaded" in line for line in list(lines)) and time.time() < deadline:
        time.sleep(0.05)
    assert any("config reloaded" in line for line in list(lines)), "".join(lines)
    assert proc.poll() is None


def documented_reload_commands() -> list[str]:
    text = OPERATIONS.read_text()
    section = text[text.index("## Reloading the configuration"):]
    section = section[:section.index("\n## ", 1)]
    return [re.sub(r"\s+#.*$", "", line.strip()) for line in section.splitlines() if line.startswith("    ")]


def test_the_documented_pkill_pattern_finds_the_console_script(running_exporter):
    proc, _ = running_exporter
    commands = documented_reload_commands()
    assert not any("pidof" in c for c in commands), "pidof finds nothing for a console script"
    assert "systemctl reload defender-connectivity-exporter" in commands
    assert any(c.startswith("curl -X POST ") and c.endswith("/-/reload") for c in commands)
    (pkill,) = [c for c in commands if c.startswith("pkill ")]
    args = shlex.split(pkill)
    assert args[:3] == ["pkill", "-HUP", "-f"]
    found = subprocess.run(["pgrep", "-f", args[3]], capture_output=True, text=True, timeout=10).stdout.split()
    assert str(proc.pid) in found, f"{pkill!r} would not reach the exporter (pid {proc.pid}); pgrep found {found}"
    # ... and not a process that merely names the unit file (an editor, a `less`)
    others = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                               "/etc/systemd/system/bin/defender-connectivity-exporter.service"])
    try:
        found = subprocess.run(["pgrep", "-f", args[3]], capture_output=True, text=True, timeout=10).stdout.split()
        assert str(others.pid) not in found
    finally:
        others.kill()
        others.wait()
