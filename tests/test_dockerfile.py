"""The container image's recipe, checked without a Docker engine: pinned base, multi-stage,
non-root, EXPOSE, a HEALTHCHECK that really works over HTTP and HTTPS, no secrets, and the
entry point is the console script."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from lab.servers import Ok
from support import ExporterThread, lab_config

from exporter.webconfig import parse_web_config

REPO = Path(__file__).parent.parent
CONFIG_PATH = "/etc/defender-connectivity-exporter/config.yml"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL", re.I)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def of(keyword: str) -> list[str]:
    return [args for k, args in instructions() if k == keyword]


def test_base_images_are_slim_python_pinned_by_version_and_digest():
    froms = of("FROM")
    assert len(froms) >= 2, "multi-stage: a build stage and a final stage"
    images = {args.split()[0] for args in froms}
    for image in images:
        assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-(bookworm|trixie)@sha256:[0-9a-f]{64}", image), image
    assert len(images) == 1, f"both stages must build on the same image: {images}"
    text = (REPO / "Dockerfile").read_text()
    head = text[:text.index("\nFROM ")]
    assert re.search(r"(?m)^#.*refresh", head, re.I) and re.search(r"(?m)^#.*(imagetools inspect|crane digest)", head), \
        "the Dockerfile must say, before its first FROM, how to refresh the pinned digest"
    assert froms[0].split()[-2:][0].upper() == "AS"
    build_stage = froms[0].split()[-1]
    run_steps = " ".join(of("RUN") + of("COPY"))
    assert f"from={build_stage}" in run_steps or f"--from={build_stage}" in run_steps
    assert any("pip wheel" in r for r in of("RUN"))
    assert any("--no-index" in r for r in of("RUN")), "the final stage installs only the built wheels"


def test_runs_as_non_root():
    users = of("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any("useradd" in r and user in r for r in of("RUN"))


def test_exposes_the_default_port():
    from exporter.cli import DEFAULT_LISTEN

    assert DEFAULT_LISTEN.rsplit(":", 1)[1] in " ".join(of("EXPOSE")).split()


def container_argv(*args: str, env_config: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """What `docker run IMAGE ARGS...` executes, here: ENTRYPOINT + (ARGS or CMD), with the
    entry point script that COPY puts on the image's PATH taken from the repository, and the
    image's ENV (its config path pointed at `env_config` when given, as a mount would)."""
    entrypoint, cmd = json.loads(of("ENTRYPOINT")[0]), json.loads(of("CMD")[0]) if of("CMD") else []
    copied = {Path(a.split()[-1]).name: a.split()[-2] for a in of("COPY") if not a.split()[-2].startswith("--")}
    script = entrypoint[0]
    assert script in copied, f"ENTRYPOINT {script}: not COPYed into the image"
    assert any(f"/usr/local/bin/{script}" in a for a in of("COPY")), f"{script} must be on the image's PATH"
    image_env = dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", " ".join(of("ENV"))))
    env = {**os.environ, **image_env}
    if env_config is not None:
        env["DEFENDER_EXPORTER_CONFIG"] = str(env_config)
    return ["sh", str(REPO / copied[script]), *entrypoint[1:], *(args or cmd)], env


def test_config_path_is_the_documented_one():
    image_env = dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", " ".join(of("ENV"))))
    assert image_env["DEFENDER_EXPORTER_CONFIG"] == CONFIG_PATH
    assert CONFIG_PATH in (REPO / "docker-entrypoint.sh").read_text()
    assert CONFIG_PATH in (REPO / "docs" / "operations.md").read_text()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"exec {next(iter(scripts))} " in (REPO / "docker-entrypoint.sh").read_text()


@pytest.mark.netns
def test_no_arguments_and_no_config_serve_the_builtin_catalogue(tmp_path):
    """`docker run IMAGE`, nothing mounted: the built-in catalogue, like the binary with no flags."""
    argv, env = container_argv(env_config=tmp_path / "not-mounted" / "config.yml")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(["unshare", "-n", sys.executable, str(REPO / "tests" / "helpers" / "netns_scrape.py"),
                             str(out), " ".join(map(shlex.quote, argv))], env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr + (out / "stderr.txt").read_text()
    body = (out / "metrics.txt").read_text()
    from exporter.config import load_config

    assert body.count("defender_target_info{") == len(load_config(None).jobs())
    assert "Traceback" not in (out / "stderr.txt").read_text()


def test_a_mounted_config_is_used_and_an_explicit_flag_wins(tmp_path, config):
    argv, env = container_argv("--config.check", env_config=config)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"{config}: valid"), result.stdout + result.stderr

    other = tmp_path / "other.yml"
    other.write_text("interval: 1m\n")
    argv, env = container_argv("--config.check", f"--config.file={other}", env_config=config)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"{other}: valid"), result.stdout + result.stderr

    argv, env = container_argv("check", "--group", "nosuchgroup", env_config=config)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "configured: maps" in result.stderr, "check must read the mounted config"


def test_a_broken_mounted_config_is_an_error_not_the_catalogue(tmp_path):
    broken = tmp_path / "config.yml"
    broken.write_text("groups: [\n")
    argv, env = container_argv("--config.check", env_config=broken)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and str(broken) in result.stderr, result.stdout + result.stderr


def test_no_secrets_in_the_image():
    for args in of("ENV") + of("ARG"):
        for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args) or [(args.split()[0], "")]:
            assert not SECRET_NAME.search(name), f"{name} looks like a secret baked into the image"
    copies = of("COPY") + of("ADD")
    assert not of("ADD"), "use COPY, never ADD (no remote URLs or archives)"
    for args in copies:
        sources = [a for a in args.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert not re.search(r"\.(key|p12|pfx|env)$|id_rsa|secret|web.*\.ya?ml$", source, re.I), source
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for pattern in ("**/*.key", ".git", "tests"):
        assert pattern in ignored
    # nothing the build needs is ignored
    for needed in ("pyproject.toml", "README.md", "exporter/cli.py", "exporter/catalogue.yaml",
                   "exporter/roots/digicert-global-root-g2.pem"):
        assert not any(fnmatch.fnmatch(needed, p.replace("**/", "*")) or needed.startswith(p + "/") or needed == p
                       for p in ignored), needed


def healthcheck_command() -> list[str]:
    (args,) = of("HEALTHCHECK")
    assert "--interval=" in args and "--timeout=" in args
    command = json.loads(args[args.index("CMD") + 3:].strip())
    assert command[0] == "python" and "/-/healthy" in command[-1]
    return [sys.executable] + command[1:]


def run_healthcheck(port: int) -> int:
    env = {**os.environ, "HEALTHCHECK_PORT": str(port)}
    return subprocess.run(healthcheck_command(), env=env, timeout=15, capture_output=True).returncode


@pytest.fixture
def config(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    return lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]}, ca_file=lab_pki.ca_bundle_path,
                      connect_to=[server.connect_to("wdcp.microsoft.com", 443)], ssl_options=0)


def test_healthcheck_works_over_http_and_https_with_basic_auth(tmp_path, config, lab_pki, free_port):
    import bcrypt

    assert run_healthcheck(free_port()) == 1  # nothing listening
    with ExporterThread(config) as exp:
        assert run_healthcheck(exp.port) == 0
    leaf = lab_pki.issue_leaf("exporter.internal")
    web = parse_web_config({
        "tls_server_config": {"cert_file": str(leaf.chain_path), "key_file": str(leaf.key_path)},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()},
    }, str(tmp_path / "web.yml"))
    with ExporterThread(config, web_config=web) as exp:
        assert run_healthcheck(exp.port) == 0


def test_operations_doc_has_a_scrape_config():
    text = (REPO / "docs" / "operations.md").read_text()
    block = re.search(r"```yaml\n(scrape_configs:.*?)```", text, re.S)
    assert block, "docs/operations.md: no Prometheus scrape_configs example"
    scrape = yaml.safe_load(block.group(1))["scrape_configs"]
    assert any(job.get("metrics_path", "/metrics") == "/metrics" for job in scrape)
