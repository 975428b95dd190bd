"""A real Prometheus and Alertmanager for end-to-end tests of the rules and dashboards.

Import it as `import promlab` (tests/ is on sys.path, see tests/conftest.py).

No dependency on the exporter: point it at any exposition (a running exporter or a static page
served by `exposition_server`). Everything runs on 127.0.0.1 with free ports and temporary
storage, with a 1 s scrape and evaluation interval, and stops when its context exits.

    with promlab.lab(tmp_path, targets=[exposition.address],
                     rule_files=promlab.shorten_for(promlab.SHIPPED_RULE_FILES, tmp_path / "rules"),
                     labels={"site": "stockholm"}) as lab:
        lab.wait_for_alert("DefenderMAPSConnectionFailed", state="firing")
        lab.query('defender_maps_connection_valid == 0')     # /api/v1/query -> result list
        lab.alerts()                                         # /api/v1/alerts -> pending and firing
        lab.wait_for_webhook("DefenderMAPSConnectionFailed") # what Alertmanager delivered

The building blocks (`prometheus`, `alertmanager`, `webhook_receiver`, `exposition_server`) are
context managers of their own. Needs the Debian packages `prometheus` and `prometheus-alertmanager`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Self, Sequence, TypeVar

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RULE_FILES = (
    ROOT / "alerts" / "defender-connectivity-recording.rules.yml",
    ROOT / "alerts" / "defender-connectivity.rules.yml",
)
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"

T = TypeVar("T")


class PromLabError(RuntimeError):
    pass


# --- small helpers -----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2,
               message: str | Callable[[], str] = "condition") -> T:
    """Call `predicate` until it returns something truthy; return that, or raise after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, PromLabError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout}s waiting for {text}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def _get_json(url: str, *, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise PromLabError(f"{binary} not found: apt-get install -y prometheus prometheus-alertmanager")
    return path


def shorten_for(rule_files: Iterable[Path | str], dest_dir: Path | str, *, for_: str = "0s") -> list[Path]:
    """Copy rule files into `dest_dir` with every alert's `for:` set to `for_` (e.g. "0s", "1s").

    Everything else (expressions, labels, annotations, recording rules) is kept as shipped.
    Returns the new paths in the given order.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in map(Path, rule_files):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    rule["for"] = for_
        target = dest / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=10_000), encoding="utf-8")
        out.append(target)
    return out


class _Process:
    """A child process with its log in a file, stopped on exit."""

    def __init__(self, name: str, argv: Sequence[str], log: Path):
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise PromLabError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def _wait_ready(process: _Process, url: str, timeout: float) -> None:
    def ready() -> bool:
        process.check_alive()
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    try:
        wait_until(ready, timeout=timeout, message=f"{process.name} at {url}")
    except TimeoutError as exc:
        raise PromLabError(f"{exc}\n{process.log_tail()}") from None


# --- small HTTP servers of the lab ----------------------------------------------------

class _LoopbackServer:
    """A ThreadingHTTPServer for `handler` on a free loopback port, served by a daemon
    thread from start() to stop(); as a context manager, started on entry, stopped on exit."""

    def _listen(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a static exposition -------------------------------------------------------------

class StaticExposition(_LoopbackServer):
    """An HTTP server answering every GET with the current exposition text."""

    def __init__(self, text: str = ""):
        self._text = text
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._listen(Handler, "promlab-exposition")

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def set(self, text: str) -> None:
        """Replace the exposition; the next scrape sees the new text."""
        with self._lock:
            self._text = text

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


def exposition_server(text: str = "") -> StaticExposition:
    """`with exposition_server(text) as exposition:` serves it for the block."""
    return StaticExposition(text)


# --- the webhook receiver ------------------------------------------------------------

class WebhookReceiver(_LoopbackServer):
    """Collects what Alertmanager posts (webhook_configs payloads, version 4)."""

    def __init__(self) -> None:
        self._payloads: list[dict] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"invalid": body.decode(errors="replace")}
                with owner._lock:
                    owner._payloads.append(payload)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._listen(Handler, "promlab-webhook")

    @property
    def url(self) -> str:
        return f"http://{self.address}/alerts"

    def payloads(self) -> list[dict]:
        with self._lock:
            return list(self._payloads)

    def alerts(self, *, status: str | None = None) -> list[dict]:
        """Every alert received, in order (each has status, labels, annotations, startsAt, ...)."""
        out = [alert for payload in self.payloads() for alert in payload.get("alerts", [])]
        return [a for a in out if status is None or a.get("status") == status]

    def alertnames(self, *, status: str | None = "firing") -> set[str]:
        return {a["labels"].get("alertname", "") for a in self.alerts(status=status)}

    def clear(self) -> None:
        with self._lock:
            self._payloads.clear()

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def webhook_receiver() -> WebhookReceiver:
    """`with webhook_receiver() as receiver:` collects for the block."""
    return WebhookReceiver()


# --- Alertmanager ------------------------------------------------------------------------

@dataclass
class Alertmanager:
    url: str
    process: _Process

    def alerts(self) -> list[dict]:
        """Alerts Alertmanager holds (`/api/v2/alerts`)."""
        return _get_json(f"{self.url}/api/v2/alerts")

    def stop(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def alertmanager(workdir: Path | str, webhook_url: str, *, group_wait: str = "1s", group_interval: str = "1s",
                 repeat_interval: str = "1h", startup_timeout: float = 30.0) -> Iterator[Alertmanager]:
    """A real Alertmanager (clustering off) routing every alert, ungrouped, to `webhook_url`."""
    binary = _require(ALERTMANAGER_BIN)
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": ["..."],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = _Process("alertmanager", [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ], workdir / "alertmanager.log")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, f"{url}/-/ready", startup_timeout)
        yield Alertmanager(url, process)
    finally:
        process.stop()


# --- Prometheus -----------------------------------------------------------------------------

@dataclass
class Prometheus:
    url: str
    process: _Process
    config_path: Path

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = _get_json(f"{self.url}{path}{query}")
        if body.get("status") != "success":
            raise PromLabError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str, *, time: float | None = None) -> list[dict]:
        """Evaluate `expr` (`/api/v1/query`); the result list (vector: [{metric, value}, ...]).

        Raises PromLabError on a bad expression, with Prometheus' message.
        """
        params = {"query": expr}
        if time is not None:
            params["time"] = repr(time)
        try:
            data = self._api("/api/v1/query", **params)
        except urllib.error.HTTPError as exc:
            raise PromLabError(f"{expr!r}: {exc.read().decode(errors='replace')}") from None
        result = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def query_value(self, expr: str) -> float | None:
        """The single value of an expression, or None if it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PromLabError(f"{expr!r} returned {len(result)} series")
        return float(result[0]["value"][1])

    def alerts(self, *, state: str | None = None) -> list[dict]:
        """Pending and firing alerts (`/api/v1/alerts`), optionally only one state."""
        alerts = self._api("/api/v1/alerts")["alerts"]
        return [a for a in alerts if state is None or a.get("state") == state]

    def alertnames(self, *, state: str | None = "firing") -> set[str]:
        return {a["labels"]["alertname"] for a in self.alerts(state=state)}

    def rules(self) -> list[dict]:
        return self._api("/api/v1/rules")["groups"]

    def targets(self) -> list[dict]:
        return self._api("/api/v1/targets")["activeTargets"]

    def wait_for_targets_up(self, *, timeout: float = 30.0) -> None:
        wait_until(lambda: (t := self.targets()) and all(x["health"] == "up" for x in t),
                   timeout=timeout, message=lambda: f"targets up: {self.targets()}")

    def wait_for_alert(self, alertname: str, *, state: str = "firing", timeout: float = 30.0) -> list[dict]:
        return wait_until(lambda: [a for a in self.alerts(state=state) if a["labels"]["alertname"] == alertname],
                          timeout=timeout, message=lambda: f"{alertname} {state}; have {self.alertnames(state=None)}")

    def stop(self) -> None:
        self.process.stop()


def _static_configs(targets: Sequence[str | Mapping[str, Any]], labels: Mapping[str, str] | None) -> list[dict]:
    configs: list[dict] = []
    plain = [t for t in targets if isinstance(t, str)]
    if plain:
        configs.append({"targets": plain, **({"labels": dict(labels)} if labels else {})})
    for item in targets:
        if not isinstance(item, str):
            merged = {**(labels or {}), **item.get("labels", {})}
            configs.append({"targets": list(item["targets"]), **({"labels": merged} if merged else {})})
    return configs


@contextlib.contextmanager
def prometheus(workdir: Path | str, targets: Sequence[str | Mapping[str, Any]], *,
               rule_files: Sequence[Path | str] = (), alertmanager_url: str | None = None,
               job: str = "defender-connectivity", labels: Mapping[str, str] | None = None,
               metrics_path: str = "/metrics", scrape_interval: str = "1s", evaluation_interval: str = "1s",
               extra_scrape_configs: Sequence[dict] = (), startup_timeout: float = 30.0,
               remote_write: Sequence[str] = (), external_labels: Mapping[str, str] | None = None,
               agent: bool = False, remote_write_receiver: bool = False) -> Iterator[Prometheus]:
    """A real Prometheus scraping `targets` ("host:port", or {"targets": [...], "labels": {...}})
    as `job` with target `labels` (e.g. {"site": "stockholm"}), evaluating `rule_files`, and
    sending alerts to `alertmanager_url` if given.

    `remote_write` URLs get every sample (flushed within a second); `agent=True` runs it in agent
    mode (scrape and remote-write only: no rules, no queries); `remote_write_receiver=True`
    accepts remote writes at /api/v1/write. No targets: no scrape job."""
    binary = _require(PROMETHEUS_BIN)
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   **({} if agent else {"evaluation_interval": evaluation_interval}),
                   **({"external_labels": dict(external_labels)} if external_labels else {})},
        **({} if agent else {"rule_files": [str(Path(p).resolve()) for p in rule_files]}),
        "scrape_configs": ([{"job_name": job, "metrics_path": metrics_path,
                             "static_configs": _static_configs(targets, labels)}] if targets else [])
                          + list(extra_scrape_configs),
    }
    if remote_write:
        config["remote_write"] = [{"url": url, "queue_config": {"batch_send_deadline": "500ms"}}
                                  for url in remote_write]
    if alertmanager_url:
        config["alerting"] = {"alertmanagers": [{
            "api_version": "v2",
            "static_configs": [{"targets": [urllib.parse.urlsplit(alertmanager_url).netloc]}],
        }]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    storage = (["--enable-feature=agent", f"--storage.agent.path={workdir / 'data'}"] if agent
               else [f"--storage.tsdb.path={workdir / 'data'}"])
    process = _Process("prometheus", [
        binary,
        f"--config.file={config_path}",
        *storage,
        *(["--web.enable-remote-write-receiver"] if remote_write_receiver else []),
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ], workdir / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, f"{url}/-/ready", startup_timeout)
        yield Prometheus(url, process, config_path)
    finally:
        process.stop()


# --- everything together ----------------------------------------------------------------------

@dataclass
class Lab:
    prometheus: Prometheus
    alertmanager: Alertmanager | None
    webhook: WebhookReceiver | None
    rule_files: list[Path] = field(default_factory=list)

    def query(self, expr: str, **kwargs: Any) -> list[dict]:
        return self.prometheus.query(expr, **kwargs)

    def alerts(self, **kwargs: Any) -> list[dict]:
        return self.prometheus.alerts(**kwargs)

    def webhook_alerts(self, **kwargs: Any) -> list[dict]:
        if self.webhook is None:
            raise PromLabError("this lab runs without Alertmanager")
        return self.webhook.alerts(**kwargs)

    def wait_for_alert(self, alertname: str, **kwargs: Any) -> list[dict]:
        return self.prometheus.wait_for_alert(alertname, **kwargs)

    def wait_for_webhook(self, alertname: str, *, status: str = "firing", timeout: float = 30.0) -> list[dict]:
        return wait_until(
            lambda: [a for a in self.webhook_alerts(status=status) if a["labels"].get("alertname") == alertname],
            timeout=timeout,
            message=lambda: f"{alertname} {status} at the webhook; have {self.webhook.alertnames(status=None)}")


@contextlib.contextmanager
def lab(workdir: Path | str, targets: Sequence[str | Mapping[str, Any]], *,
        rule_files: Sequence[Path | str] = (), with_alertmanager: bool = True, **prometheus_kwargs: Any) -> Iterator[Lab]:
    """Prometheus (+ Alertmanager + webhook receiver) around `targets`; see the module docstring."""
    workdir = Path(workdir)
    with contextlib.ExitStack() as stack:
        receiver = manager = None
        if with_alertmanager:
            receiver = stack.enter_context(webhook_receiver())
            manager = stack.enter_context(alertmanager(workdir / "alertmanager", receiver.url))
        prom = stack.enter_context(prometheus(
            workdir / "prometheus", targets, rule_files=rule_files,
            alertmanager_url=manager.url if manager else None, **prometheus_kwargs))
        yield Lab(prom, manager, receiver, [Path(p) for p in rule_files])
