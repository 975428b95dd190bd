"""A TLS server that staples an OCSP response: OpenSSL's own `openssl s_server -status_file`.

The standard library's ssl cannot staple, so the lab uses the real OpenSSL server: it presents the
leaf and its chain, sends the DER response in the file to every client that asks for a staple
(status_request), and answers `GET /` with its status page (HTTP 200). One per test:

    server = StaplingServer.start(tmp_path, leaf, staple=der)   # staple=None: asks nothing stapled
    ... aim wdcp.microsoft.com:443 at server.address
    server.stop()
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .pki import LeafBundle
from .servers import alloc_ip


@dataclass
class StaplingServer:
    process: subprocess.Popen
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return self.ip, self.port

    def connect_to(self, name: str, port: int = 443) -> str:
        return f"{name}:{port}:{self.ip}:{self.port}"

    @classmethod
    def start(cls, directory: Path, leaf: LeafBundle, *, staple: bytes | None, port: int = 443) -> "StaplingServer":
        ip = alloc_ip()
        argv = ["openssl", "s_server", "-accept", f"{ip}:{port}", "-cert", str(leaf.cert_path),
                "-cert_chain", str(leaf.issuer.cert_path), "-key", str(leaf.key_path), "-www", "-quiet", "-no_ticket"]
        if staple is not None:
            path = Path(directory) / f"staple-{ip}.der"
            path.write_bytes(staple)
            argv += ["-status_file", str(path)]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        server = cls(process, ip, port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"openssl s_server exited: {process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection((ip, port), timeout=0.2).close()
                return server
            except OSError:
                time.sleep(0.05)
        server.stop()
        raise RuntimeError("openssl s_server did not start listening within 10 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
