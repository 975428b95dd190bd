"""The README's two commands, the way a new machine sees them.

The first screen of the README gives one command that installs and runs the exporter and one
that runs the tests. Both are run here as written, with the Debian system interpreter
`/usr/bin/python3` (externally managed, PEP 668) as `python3`, in a fresh copy of the checkout,
so the README cannot drift from what works. `.ci/run` must run exactly the test command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
HERE = Path(__file__).parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
CI_SCRIPT = REPO / ".ci" / "run"


def readme_commands() -> tuple[str, str]:
    """(install-and-run command, test command): the first ```sh block of the README, comments dropped."""
    block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md: no ```sh block with the two commands"
    lines = [line.strip() for line in block.group(1).splitlines()]
    commands = [re.sub(r"\s+#\s.*$", "", line) for line in lines if line and not line.startswith("#")]
    assert len(commands) == 2, f"README.md: expected two commands, found {commands}"
    return commands[0], commands[1]


def first_screen() -> str:
    text = (REPO / "README.md").read_text()
    return text[:text.index("Contents:")]


def test_ci_runs_exactly_the_readme_test_command():
    _, test_command = readme_commands()
    execs = [line.strip()[len("exec "):] for line in CI_SCRIPT.read_text().splitlines()
             if line.strip().startswith("exec ")]
    assert execs, f"{CI_SCRIPT}: no exec line"
    assert shlex.split(execs[-1]) == shlex.split(test_command)


def test_first_screen_says_which_python_is_needed():
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(3\.\d+)", required).group(1)
    screen = first_screen()
    assert re.search(rf"Python {re.escape(minimum)} or newer|Python >= ?{re.escape(minimum)}", screen), \
        f"the README's first screen must say that Python {minimum} or newer is needed"
    install, _ = readme_commands()
    assert "pip install" not in install.split("&&")[0], "pip before a virtual environment hits PEP 668"


def fresh_copy(dest: Path) -> Path:
    """The checkout's files as a clean clone has them (tracked and new, nothing ignored)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def system_python_path(tmp_path: Path, *extra: Path) -> dict[str, str]:
    """An environment where `python3` is the Debian system interpreter, as on a new machine."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "python3").symlink_to(SYSTEM_PYTHON)
    path = os.pathsep.join([*map(str, extra), str(bindir), "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PYENV"))}
    return {**env, "PATH": path, "HOME": os.environ.get("HOME", str(tmp_path))}


needs_system_python = pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no Debian system interpreter here")


@pytest.mark.slow
@pytest.mark.netns
@needs_system_python
def test_readme_install_command_serves_metrics_with_the_system_python(tmp_path):
    """The install-and-run command, as written, in a fresh copy, in a network namespace of its own.

    Inside the namespace there is no network, so pip is given a wheelhouse built beforehand
    (PIP_NO_INDEX, PIP_FIND_LINKS: the command itself is unchanged)."""
    install, _ = readme_commands()
    unshare = shutil.which("unshare")
    assert unshare, "unshare missing (Debian package util-linux)"
    copy = fresh_copy(tmp_path / "checkout")
    env = system_python_path(tmp_path)
    wheel_env = tmp_path / "wheel-venv"
    wheels = tmp_path / "wheels"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(wheel_env)], check=True, timeout=120)
    subprocess.run([str(wheel_env / "bin" / "pip"), "wheel", "--quiet", "--wheel-dir", str(wheels),
                    str(copy), "setuptools>=68", "wheel"], check=True, timeout=300, env=env)

    out = tmp_path / "out"
    out.mkdir()
    env = {**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    result = subprocess.run([unshare, "-n", str(SYSTEM_PYTHON), str(HERE / "helpers" / "netns_scrape.py"),
                             str(out), install], cwd=copy, env=env, capture_output=True, text=True, timeout=400)
    log = (out / "stderr.txt").read_text() if (out / "stderr.txt").exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    assert (out / "ready.txt").read_text().startswith("Ready")
    body = (out / "metrics.txt").read_text()
    assert "defender_probe_success{" in body and 'reason="dns_error"' in body
    assert "Traceback" not in log
    venv_python = copy / ".venv" / "bin" / "python"
    base = subprocess.run([str(venv_python), "-c", "import sys; print(sys.base_prefix)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert base == "/usr", f"the README's venv was made by {base}, not the system interpreter"


@pytest.mark.slow
@needs_system_python
def test_test_command_uses_its_own_venv_and_leaves_services_alone(tmp_path):
    """`bash tests/run.sh` in a fresh copy: a .venv made by the system interpreter, the package
    installed there (not in the system Python), and no service stopped or started.

    systemctl, service and apt-get are stand-ins that only record being called (the outer run
    already installed the Debian packages). One real test runs at the end, through the venv."""
    _, test_command = readme_commands()
    copy = fresh_copy(tmp_path / "checkout")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("systemctl", "service", "apt-get", "invoke-rc.d"):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(calls))}\nexit 1\n')
        stub.chmod(0o755)
    env = system_python_path(tmp_path, stubs)
    args = shlex.split(test_command) + ["-q", "tests/test_readme_commands.py::test_ci_runs_exactly_the_readme_test_command"]
    result = subprocess.run(args, cwd=copy, env=env, capture_output=True, text=True, timeout=400)
    output = result.stdout + result.stderr
    assert not calls.exists(), f"{test_command} called: {calls.read_text()}"
    assert result.returncode == 0, output[-3000:]
    assert "1 passed" in output, output[-3000:]
    venv_python = copy / ".venv" / "bin" / "python"
    assert venv_python.exists(), f"{test_command} did not create .venv"
    probe = "import sys, exporter; print(sys.base_prefix, exporter.__file__)"
    base, where = subprocess.run([str(venv_python), "-c", probe], capture_output=True, text=True,
                                 check=True, cwd=tmp_path, env=env).stdout.split()
    assert base == "/usr" and where.startswith(str(copy)), (base, where)
    assert (copy / ".venv" / "bin" / "defender-connectivity-exporter").exists()
    system = subprocess.run([str(SYSTEM_PYTHON), "-c", "import exporter"], capture_output=True, cwd=tmp_path, env=env)
    assert system.returncode != 0, "the package ended up in the system Python"


def test_install_scripts_share_the_venv_step_and_stop_no_service():
    """bench/run.sh installs like tests/run.sh: through tests/setup.sh, into .venv."""
    for script in (REPO / "tests" / "run.sh", REPO / "bench" / "run.sh"):
        text = script.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert ". tests/setup.sh" in code and "ensure_venv" in code, script
        assert not re.search(r"systemctl\s+stop|service\s+\S+\s+stop", code), f"{script} stops services"
        assert not re.search(r"(^|\s)python3 -m pip", code), f"{script} installs into the system Python"
