"""Shared fixtures: the test lab (generated PKI, loopback servers, real Squid).

The lab lives in tests/lab and is imported as `lab` (tests/ has no __init__.py, so pytest puts
this directory on sys.path). Typical use together with the exporter's `connect_to` option:

    def test_reachable(lab_pki, lab_servers):
        leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
        srv = lab_servers.serve(Ok(), port=443, tls=leaf)          # own loopback address, real 443
        connect_to = srv.connect_to("wdcp.microsoft.com", 443)    # "wdcp.microsoft.com:443:127.x.y.z:443"
        ...

    def test_via_proxy(lab_pki, lab_servers, squid_factory):
        srv = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
        proxy = squid_factory({"wdcp.microsoft.com": srv.ip}, deny_domains=["x.microsoft.com"])
        ... proxy.url ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# pytest's default import mode already puts tests/ on sys.path; --import-mode=importlib does
# not, so make `import lab` work either way.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

# The console script and the tools of the environment that runs the tests (tests/run.sh's
# .venv, or any virtual environment) come first on PATH, for the tests and their subprocesses,
# so `defender-connectivity-exporter` is the one installed with this interpreter.
_bindir = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _bindir:
    os.environ["PATH"] = os.pathsep.join([_bindir, os.environ.get("PATH", os.defpath)])

from lab.pki import LabPKI  # noqa: E402
from lab.servers import LabServers  # noqa: E402
from lab.servers import free_port as _free_port  # noqa: E402
from lab.squid import Squid, SquidFactory  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # Declared here so `--strict-markers` works without touching pyproject.toml.
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "netns: runs in a private network namespace (unshare -n); needs root")
    config.addinivalue_line("markers", "squid: starts a real Squid proxy (Debian package squid)")


@pytest.fixture(params=["kernel", "portable"])
def probe_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test over the kernel-dated transport and again over the portable one (asyncio
    streams, what Windows gets), forced by DEFENDER_EXPORTER_TRANSPORT; modules opt in with
    `pytestmark = pytest.mark.usefixtures("probe_transport")`."""
    if request.param == "portable":
        monkeypatch.setenv("DEFENDER_EXPORTER_TRANSPORT", "portable")
    else:
        monkeypatch.delenv("DEFENDER_EXPORTER_TRANSPORT", raising=False)
    return request.param


@pytest.fixture(scope="session")
def lab_pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    """One Microsoft-shaped PKI for the session: root, issuing CA, leaves on demand."""
    return LabPKI.create(tmp_path_factory.mktemp("lab-pki"))


@pytest.fixture(scope="session")
def unknown_pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    """An unrelated hierarchy ("Unknown Root ..."): its leaves must not verify against lab_pki."""
    return LabPKI.create(tmp_path_factory.mktemp("unknown-pki"), name="Unknown")


@pytest.fixture
def lab_servers() -> Iterator[LabServers]:
    """Servers started in a test; all stopped (and held connections dropped) after it."""
    with LabServers() as servers:
        yield servers


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[..., int]:
    """free_port(ip="127.0.0.1"): a TCP port free on ip a moment ago (bind to 0, read it, close).
    ExporterThread picks one itself."""
    return _free_port


@pytest.fixture
def squid_factory(tmp_path: Path) -> Iterator[SquidFactory]:
    """`squid_factory(hosts, *, deny_domains=(), auth=None, port=None, extra_config=())` -> started Squid.

    Every Squid made is stopped at the end of the test.
    """
    started: list[Squid] = []

    def make(hosts: Mapping[str, str], **kwargs: Any) -> Squid:
        squid = Squid(tmp_path / f"squid-{len(started)}", hosts, **kwargs)
        squid.start()
        started.append(squid)
        return squid

    try:
        yield make
    finally:
        for squid in started:
            squid.stop()
