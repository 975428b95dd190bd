"""Real VictoriaMetrics components (Debian's `victoria-metrics` package) for end-to-end tests.

    with vmlab.victoria_metrics(tmp_path / "vm") as vm:                 # single-node store
        with vmlab.vmagent(tmp_path / "agent", scrape_configs, [vm.write_url]):
            with vmlab.vmalert(tmp_path / "alert", rule_files, vm, notifier_url=am.url):
                vm.query("defender:maps_connection_valid:min")      # the Prometheus query API

Everything listens on 127.0.0.1 with free ports and temporary storage, and stops when its context
exits; the building blocks of tests/promlab.py (processes with logs, readiness waits) are shared.
VictoriaMetrics answers Prometheus' /api/v1/query and accepts Prometheus remote write at
/api/v1/write, so `VictoriaMetrics` is a promlab.Prometheus for queries.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import yaml

import promlab

VM_BIN = "victoria-metrics"
VMAGENT_BIN = "vmagent"
VMALERT_BIN = "vmalert"
PACKAGE = "apt-get install -y victoria-metrics"


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise promlab.PromLabError(f"{binary} not found: {PACKAGE}")
    return path


@dataclass
class VictoriaMetrics(promlab.Prometheus):
    @property
    def write_url(self) -> str:
        """Prometheus remote-write endpoint."""
        return f"{self.url}/api/v1/write"


@dataclass
class Agent:
    url: str
    process: promlab._Process

    def stop(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def _component(binary: str, args: Sequence[str], workdir: Path, startup_timeout: float) -> Iterator[tuple[str, promlab._Process]]:
    """Run one VictoriaMetrics binary on a free loopback port until its /health answers."""
    port = promlab.free_port()
    process = promlab._Process(binary, [_require(binary), *args, f"-httpListenAddr=127.0.0.1:{port}",
                                        "-loggerLevel=WARN"], workdir / f"{binary}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        promlab._wait_ready(process, f"{url}/health", startup_timeout)
        yield url, process
    finally:
        process.stop()


def _workdir(path: Path | str) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def victoria_metrics(workdir: Path | str, *, startup_timeout: float = 30.0) -> Iterator[VictoriaMetrics]:
    """Single-node VictoriaMetrics. Queries see samples as soon as they are written
    (-search.latencyOffset=0s; the default hides the last 30 s, which suits production)."""
    workdir = _workdir(workdir)
    args = [f"-storageDataPath={workdir / 'data'}", "-retentionPeriod=1d", "-search.latencyOffset=0s",
            "-search.disableCache"]
    with _component(VM_BIN, args, workdir, startup_timeout) as (url, process):
        yield VictoriaMetrics(url, process, workdir)


@contextlib.contextmanager
def vmagent(workdir: Path | str, scrape_configs: Sequence[dict], remote_write: Sequence[str], *,
            scrape_interval: str = "1s", labels: Mapping[str, str] | None = None,
            startup_timeout: float = 30.0) -> Iterator[Agent]:
    """vmagent scraping `scrape_configs` (Prometheus syntax) and writing to every `remote_write`
    URL; `labels` are added to every series it sends (its counterpart of external_labels)."""
    workdir = _workdir(workdir)
    config = workdir / "scrape.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": scrape_interval},
                                      "scrape_configs": list(scrape_configs)}, sort_keys=False))
    args = [f"-promscrape.config={config}", "-promscrape.config.strictParse",
            *[f"-remoteWrite.url={url}" for url in remote_write],
            *[f"-remoteWrite.label={k}={v}" for k, v in (labels or {}).items()],
            "-remoteWrite.flushInterval=500ms", f"-remoteWrite.tmpDataPath={workdir / 'queue'}"]
    with _component(VMAGENT_BIN, args, workdir, startup_timeout) as (url, process):
        yield Agent(url, process)


@contextlib.contextmanager
def vmalert(workdir: Path | str, rule_files: Sequence[Path | str], store: VictoriaMetrics, *,
            notifier_url: str, evaluation_interval: str = "1s", startup_timeout: float = 30.0) -> Iterator[Agent]:
    """vmalert evaluating `rule_files` against `store`, writing recording rules' results and the
    ALERTS series back into it, and sending alerts to the Alertmanager at `notifier_url`."""
    workdir = _workdir(workdir)
    args = [*[f"-rule={Path(p).resolve()}" for p in rule_files], f"-datasource.url={store.url}",
            f"-remoteWrite.url={store.url}", f"-remoteRead.url={store.url}", f"-notifier.url={notifier_url}",
            f"-evaluationInterval={evaluation_interval}", "-remoteWrite.flushInterval=500ms"]
    with _component(VMALERT_BIN, args, workdir, startup_timeout) as (url, process):
        yield Agent(url, process)
