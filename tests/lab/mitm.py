"""A real TLS-inspecting proxy: mitmproxy's mitmdump (Debian package `mitmproxy`).

It re-signs every TLS connection with its own CA, exactly like a corporate
inspection box. Chained to a lab Squid (upstream mode), Squid's hosts_file does
the name mapping, and mitmdump verifies the real (lab) server against `upstream_ca`.

    with Mitmdump(workdir, upstream=squid.url, upstream_ca=lab_pki.ca_bundle_path) as mitm:
        mitm.url          # http://127.0.0.1:PORT, a proxy for the `defender` route
        mitm.ca_path      # its CA certificate (PEM), to trust via tls.ca_file
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .servers import free_port


class MitmdumpError(RuntimeError):
    pass


class Mitmdump:
    def __init__(self, workdir: Path, *, upstream: str, upstream_ca: Path, startup_timeout: float = 20.0):
        self.workdir = Path(workdir)
        self.upstream = upstream
        self.upstream_ca = Path(upstream_ca)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.confdir = self.workdir / "mitmproxy"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def __enter__(self) -> "Mitmdump":
        exe = shutil.which("mitmdump")
        if exe is None:
            raise MitmdumpError("mitmdump not found: install the Debian package mitmproxy (tests/run.sh does)")
        self.confdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "mitmdump.log", "wb")
        self._proc = subprocess.Popen(
            [exe, "--listen-host", "127.0.0.1", "-p", str(self.port), "--mode", f"upstream:{self.upstream}",
             "--set", f"confdir={self.confdir}", "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}",
             "-q"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MitmdumpError(f"mitmdump exited: {(self.workdir / 'mitmdump.log').read_text()[-2000:]}")
            if self.ca_path.exists() and _accepts(self.port):
                return self
            time.sleep(0.1)
        self.__exit__()
        raise MitmdumpError("mitmdump did not start in time")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                import os

                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(10)
        if self._log is not None:
            self._log.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
