"""A real node_exporter (Debian's prometheus-node-exporter) reading a textfile directory.

    with nodelab.node_exporter(tmp_path / "textfiles") as node:
        text = node.scrape()                    # its /metrics
        node.address                            # "127.0.0.1:PORT", for a Prometheus scrape config

Only the textfile collector runs (--collector.disable-defaults), on a private loopback port, so a
test sees exactly what that collector made of the files. Needs `apt-get install prometheus-node-exporter`.
"""

from __future__ import annotations

import contextlib
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import promlab

BINARY = "prometheus-node-exporter"


@dataclass
class NodeExporter:
    address: str
    process: promlab._Process

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return response.read().decode()


@contextlib.contextmanager
def node_exporter(textfile_dir: Path | str, *, log_dir: Path | str | None = None,
                  startup_timeout: float = 30.0) -> Iterator[NodeExporter]:
    binary = shutil.which(BINARY)
    if not binary:
        raise promlab.PromLabError(f"{BINARY} not found: apt-get install -y prometheus-node-exporter")
    textfile_dir = Path(textfile_dir)
    log_dir = Path(log_dir) if log_dir is not None else textfile_dir.parent
    port = promlab.free_port()
    address = f"127.0.0.1:{port}"
    process = promlab._Process("node_exporter", [
        binary,
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfile_dir}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ], log_dir / f"node-exporter-{port}.log")
    try:
        promlab._wait_ready(process, f"http://{address}/metrics", startup_timeout)
        yield NodeExporter(address, process)
    finally:
        process.stop()
