"""Helpers for exporter tests: lab configs, one-shot probes, an exporter in a thread.

Configs are written as real YAML files and loaded through load_config, so the
tests exercise the same path a user does.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import selectors
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from lab.servers import Files, Ok, free_port, refused_address
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.assess import Outcome
from exporter.catalogue import catalogue_groups
from exporter.causes import VERDICT_TABLE
from exporter.config import Config, load_config

CATALOGUE_GROUPS = tuple(catalogue_groups())  # the built-in groups, which lab configs switch off


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a clock of its own that moves only when the loop would
    wait: a sleep of an hour returns at once, timers fire in order, and
    loop.time() says exactly when each one was due. Sockets still work (they are
    polled without waiting). Give a Scheduler clock=loop.time, and its schedule
    can be asserted to the microsecond, however loaded the machine is.

    stall(seconds) moves the clock as a loop blocked by a long callback would."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def stall(self, seconds: float) -> None:
        self._now += seconds


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop):
        super().__init__()
        self._loop = loop

    def select(self, timeout=None):
        ready = super().select(0)
        if not ready and timeout:  # nothing to do until the next timer: jump to it
            self._loop.stall(timeout)
        return ready


def run_virtual(main, *, start: float = 1000.0):
    """asyncio.run(main()) on a VirtualTimeLoop; main gets the loop."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


# Kernel receive timestamps (SO_TIMESTAMPNS with recvmsg) are Linux's.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="kernel receive timestamps (SO_TIMESTAMPNS) are Linux-only")


def event_loops() -> list:
    """Parameters for a `loop_factory` argument: the stdlib loop, and uvloop's
    (skipped where uvloop is not installed)."""
    try:
        import uvloop
    except ImportError:
        uvloop = None
    return [pytest.param(asyncio.SelectorEventLoop, id="stdlib"),
            pytest.param(uvloop.new_event_loop if uvloop else None, id="uvloop",
                         marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed"))]


class Marks:
    """A probe's trace callback that notes when each line was logged, on
    time.perf_counter()'s clock (the lab servers note their answers on it too):
    the lines around a phase boundary bound when it was crossed."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def __call__(self, message: str) -> None:
        self.lines.append((time.perf_counter(), message))

    def at(self, text: str) -> float:
        """When the first line with `text` in it was logged (just after what it says happened)."""
        return self.lines[self._first(text)][0]

    def before(self, text: str) -> float:
        """When the line before that one was logged."""
        return self.lines[self._first(text) - 1][0]

    def _first(self, text: str) -> int:
        found = next((i for i, (_, line) in enumerate(self.lines) if text in line), None)
        assert found, f"no trace line with {text!r} after the first: {[line for _, line in self.lines]}"
        return found


def wait_for(predicate, *, what: str, timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def recv_head(sock) -> bytes:
    """What a blocking socket (plain or TLS) gives up to and including the first
    blank line, or up to its close."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def invalid_files(table: str) -> list[Path]:
    """tests/testdata/<table>/invalid-*.yml: one bad file per error, each starting `# error: <message>`."""
    return sorted((Path(__file__).parent / "testdata" / table).glob("invalid-*.yml"))


def assert_table_message(path: Path, message: str) -> None:
    """`message` is the file's `# error:` line, once the file's directory is stripped from it."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{path.name} lacks its '# error:' line"
    assert message.replace(str(path.parent) + "/", "") == first[len("# error: "):]


def root_fingerprint(pki) -> str:
    return hashlib.sha256(pki.root.cert.public_bytes(Encoding.DER)).hexdigest()


def lab_config(
    tmp_path: Path,
    groups: dict[str, Iterable[str] | dict[str, Any]],
    *,
    routes: dict[str, str | None] | None = None,
    connect_to: Iterable[str] = (),
    ca_file: str | Path | None = None,
    ssl_options: int | None = None,
    timeout: str = "3s",
    interval: str = "60s",
    extra: dict[str, Any] | None = None,
    name: str = "config.yml",
) -> Path:
    """Write a config in which only `groups` are enabled; return its path.

    A group value is a list of target URLs, or a full group mapping.
    """
    data: dict[str, Any] = {"interval": interval, "timeout": timeout, "groups": {}}
    for group in CATALOGUE_GROUPS:
        if group not in groups:
            data["groups"][group] = {"enabled": False}
    for group, spec in groups.items():
        data["groups"][group] = dict(spec) if isinstance(spec, dict) else {"targets": list(spec)}
    if routes is not None:
        data["routes"] = {name: {"proxy": proxy} for name, proxy in routes.items()}
    if connect_to:
        data["connect_to"] = list(connect_to)
    tls: dict[str, Any] = {}
    if ca_file is not None:
        tls["ca_file"] = str(ca_file)
    if ssl_options is not None:
        tls["ssl_options"] = ssl_options
    if tls:
        data["tls"] = tls
    data.update(extra or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_jobs(config: Config) -> dict[tuple[str, str, str], Outcome]:
    """Probe and assess every job of `config` once; outcomes by (group, url, route)."""
    from exporter.assess import Assessor
    from exporter.probes import ProbeEnv

    async def main() -> dict:
        env = ProbeEnv.from_config(config)
        assessor = Assessor(config, trust=env.trust)
        try:
            outcomes = await asyncio.gather(*(assessor.run(job, env) for job in config.jobs()))
        finally:
            assessor.routes.close()
        return {job.key: o for job, o in zip(config.jobs(), outcomes)}

    return asyncio.run(main())


def outcome_for(path: Path, url: str, *, group: str | None = None, route: str | None = None) -> Outcome:
    config = load_config(path)
    outcomes = run_jobs(config)
    matches = [o for (g, u, r), o in outcomes.items() if u == url and (group in (None, g)) and (route in (None, r))]
    assert len(matches) == 1, f"expected one job for {url}, found {len(matches)}"
    return matches[0]


class ExporterThread:
    """The real Exporter served as the CLI serves it (web.serve) on a loopback
    port (a free one unless given), in a thread with its own loop."""

    def __init__(self, config_path: Path | None, *, port: int | None = None, web_config=None, probe_limits=None):
        self.config_path = config_path
        self.port = port if port is not None else free_port()
        self.web_config = web_config
        self.probe_limits = probe_limits
        self.loop = asyncio.new_event_loop()
        self.exporter = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "ExporterThread":
        self._thread.start()
        if not self._started.wait(20):
            raise RuntimeError("exporter did not start")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test thread
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        from exporter.runtime import Exporter
        from exporter.web import serve

        self._stop = asyncio.Event()
        self.exporter = Exporter(load_config(self.config_path), config_path=self.config_path)
        self.exporter.web_ssl_context = self.web_config.ssl_context() if self.web_config else None
        await serve(self.exporter, "127.0.0.1", self.port, self._stop, web_config=self.web_config,
                    probe_limits=self.probe_limits, started=self._started.set)

    def call(self, fn, *args):
        """Run fn(*args) on the exporter's loop (coroutine functions awaited) and return its value."""
        async def wrapper():
            value = fn(*args)
            if asyncio.iscoroutine(value):
                value = await value
            return value

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def wait_ready(self, timeout: float = 20.0) -> None:
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.call(lambda: self.exporter.ready):
                return
            time.sleep(0.05)
        raise AssertionError("exporter not ready in time")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


# ----------------------------------------------------------------------------- the MAPS lab
# (shared by test_maps, test_routes, test_inspection_proxy, test_forward_proxies, test_metric_values)

MAPS = "https://wdcp.microsoft.com/"
CRL_HOSTS = ("crl.microsoft.com", "www.microsoft.com")


def serve_published(lab_servers, files: dict[str, bytes], **files_kwargs) -> dict[str, object]:
    """One Files server on port 80 per host name of `files` (URL -> bytes)."""
    by_host: dict[str, dict[str, bytes]] = {}
    for url, data in files.items():
        parts = urlsplit(url)
        by_host.setdefault(parts.hostname, {})[parts.path] = data
    return {host: lab_servers.serve(Files(paths, **files_kwargs), port=80) for host, paths in by_host.items()}


class MapsLab:
    """Builds the scenario's config: who serves MAPS, CRLs, and which route goes where."""

    def __init__(self, tmp_path, lab_pki, lab_servers, *, leaf=None, files=None, crl_throttle=None):
        self.tmp_path = tmp_path
        self.pki = lab_pki
        self.leaf = leaf or lab_pki.issue_leaf("wdcp.microsoft.com")
        self.maps = lab_servers.serve(Ok(), port=443, tls=self.leaf)
        self.files = files if files is not None else lab_pki.published_files()
        self.crl = serve_published(lab_servers, self.files, **({"throttle": crl_throttle} if crl_throttle else {}))

    @property
    def hosts(self) -> dict[str, str]:
        """Squid's hosts file: every lab name to its server."""
        return {"wdcp.microsoft.com": self.maps.ip, **{h: s.ip for h, s in self.crl.items()}}

    def direct_maps(self) -> list[str]:
        return [self.maps.connect_to("wdcp.microsoft.com", 443)]

    def direct_crls(self) -> list[str]:
        return [server.connect_to(host, 80) for host, server in self.crl.items()]

    @staticmethod
    def refused_crls() -> list[str]:
        """CRL hosts pointed at addresses where nothing listens (a firewall's RST)."""
        rules = []
        for host in CRL_HOSTS:
            ip, port = refused_address()
            rules.append(f"{host}:80:{ip}:{port}")
        return rules

    def config(self, *, routes=None, connect_to=(), ssl_options=None, ca_file=None, extra=None,
               expected_roots=None) -> Path:
        group = {"targets": [MAPS], "expected_roots": expected_roots or [root_fingerprint(self.pki)]}
        return lab_config(
            self.tmp_path, {"maps": group}, routes=routes, connect_to=connect_to, ssl_options=ssl_options,
            ca_file=ca_file or self.pki.ca_bundle_path, extra=extra,
        )

    def outcome(self, **kwargs):
        return outcome_for(self.config(**kwargs), MAPS)


def samples_by_name(text: str) -> dict[str, list]:
    """The samples of an exposition, by sample name."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def scrape_samples(config_path: Path) -> dict[str, list]:
    """/metrics of an exporter on this config, once its first round is done, by sample name."""
    with ExporterThread(config_path) as exporter:
        exporter.wait_ready()
        status, text = exporter.get("/metrics")
    assert status == 200
    return samples_by_name(text)


def assert_invalid(outcome, *, reason: str, cause: str, hresult: str | None = None):
    verdict = outcome.maps
    assert verdict is not None
    assert not verdict.valid, "expected an invalid MAPS verdict"
    assert (verdict.reason, verdict.cause) == (reason, cause), verdict
    assert verdict.hresult == (hresult or VERDICT_TABLE[reason].hresult), verdict


# ----------------------------------------------------------------------------- host mode
# (test_hostside_wiring, test_host_routes)

STANDINS = Path(__file__).parent / "standins"


def host_config(tmp_path, **overrides):
    host = {
        "enabled": True, "mode": "windows", "interval": "1s", "timeout": "5s",
        "mpcmdrun": str(STANDINS / "MpCmdRun.exe"), "netsh": str(STANDINS / "netsh"),
        "reg": str(STANDINS / "reg"), "powershell": str(STANDINS / "powershell"),
    }
    host.update(overrides)
    return lab_config(tmp_path, {}, extra={"host": host})


def scrape_until(exporter, name, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, body = exporter.get("/metrics")
        samples = [s for f in text_string_to_metric_families(body) for s in f.samples]
        if any(s.name == name for s in samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"{name} never appeared")


# ----------------------------------------------------------------------------- rules and PromQL
# (test_alerts, test_dashboards, test_mixin)

SEVERITIES = {"critical", "warning", "info"}
# Metrics that are not the exporter's own but that rules may use.
FOREIGN_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2", "start", "end",
}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names a PromQL expression selects. A small lexer, not a parser."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def known_metric(name: str, recorded: set[str]) -> bool:
    exported = {spec.name for spec in metrics.ALL}
    histograms = {spec.name for spec in metrics.ALL if spec.type == "histogram"}
    if name in exported or name in FOREIGN_METRICS or name in recorded:
        return True
    return any(name == h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count"))


def lint_alert(alert: dict) -> list[str]:
    """What `mixtool lint` and the mixin guidelines (monitoring.mixins.dev) object to in an alert.

    Name in CamelCase; a `severity` label of critical, warning or info; a `summary` that is a
    headline (a sentence: capital letter, full stop, no templates, so that notifications grouped by
    alert can share it); a `description` that is a sentence too; a `runbook_url`; and a `for`.
    """
    name = alert.get("alert", "")
    problems = []
    if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
        problems.append("[alert-name-camelcase] name is not in CamelCase")
    if alert.get("labels", {}).get("severity") not in SEVERITIES:
        problems.append("[alert-severity-rule] severity must be one of " + ", ".join(sorted(SEVERITIES)))
    if not re.fullmatch(r"\d+[smhd]", str(alert.get("for", ""))):
        problems.append("[alert-for] no for: duration")
    annotations = alert.get("annotations", {})
    summary = str(annotations.get("summary", "")).strip()
    description = str(annotations.get("description", "")).strip()
    if not summary:
        problems.append("[alert-summary-missing-rule] no summary")
    elif not (summary[0].isupper() and summary.endswith(".")) or "{{" in summary:
        problems.append("[alert-summary-style] summary must be one sentence without templates")
    if not description:
        problems.append("[alert-description-missing-rule] no description")
    elif not ((description[0].isupper() or description.startswith("{{")) and description.endswith(".")):
        problems.append("[alert-description-style] description must start with a capital or a template "
                        "and end with a full stop")
    if not str(annotations.get("runbook_url", "")).startswith("https://"):
        problems.append("[alert-runbook-url] no runbook_url")
    return [f"{name}: {p}" for p in problems]
