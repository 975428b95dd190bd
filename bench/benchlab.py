"""The bench's lab: a PKI, nginx, the exporter, blackbox_exporter, process accounting.

Everything runs as its own process on a private loopback address (127.x.y.1)
so that the bench never clashes with tests running beside it, and nothing
leaves the machine. Every process started here is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the project's lab (LabPKI)
sys.path.insert(0, str(ROOT))

from exporter.catalogue import catalogue_groups  # noqa: E402
from lab.pki import LabPKI, LeafBundle  # noqa: E402

DOMAIN = "bench.lab"
CATALOGUE_GROUPS = tuple(catalogue_groups())  # the built-in groups, switched off in bench configs
CLK_TCK = os.sysconf("SC_CLK_TCK")


def host_name(i: int) -> str:
    return f"t{i:05d}.{DOMAIN}"


# ----------------------------------------------------------------------------- process accounting


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """utime + stime of a process (and its waited-for children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def pick_address(ports: tuple[int, ...] = (443, 80)) -> str:
    """A loopback address of our own on which the given ports are free."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        ip = f"127.{rng.randint(100, 250)}.{rng.randint(0, 255)}.1"
        try:
            for port in ports:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((ip, port))
        except OSError:
            continue
        return ip
    raise RuntimeError("no free loopback address found")


def wait_port(ip: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {ip}:{port} after {timeout} s")


def _wait_listening(proc: "Proc", port: int, *, timeout: float) -> None:
    """Wait until proc listens on 127.0.0.1:port; fail at once if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        proc.check_alive()
        try:
            wait_port("127.0.0.1", port, timeout=0.5)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise


class Proc:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, name: str, argv: list[str], *, log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_peak(self) -> float:
        return peak_rss_mb(self.pid)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log_file.close()


# ----------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    """A work folder with the PKI, the wildcard leaf and the CRL tree."""

    workdir: Path
    pki: LabPKI
    leaf: LeafBundle
    ip: str  # nginx's address; every bench name is aimed here
    processes: list[Proc]

    @classmethod
    def create(cls, *, keep: bool = False, key_type: str = "rsa") -> "Lab":
        workdir = Path(tempfile.mkdtemp(prefix="defender-bench-"))
        os.chmod(workdir, 0o755)
        pki = LabPKI.create(workdir / "pki", key_type=key_type)
        leaf = pki.issue_leaf([f"*.{DOMAIN}", DOMAIN])
        www = workdir / "www"
        for url, body in pki.published_files().items():
            path = www / urlsplit(url).path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        for p in [www, *www.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        lab = cls(workdir, pki, leaf, pick_address(), [])
        lab.keep = keep
        return lab

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_bundle_path

    def start(self, proc: Proc) -> Proc:
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if not getattr(self, "keep", False):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ nginx

    def start_nginx(self, *, workers: int = 1) -> Proc:
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/nginx-error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {self.workdir}/nginx-tmp;
    ssl_session_cache off;
    ssl_session_tickets off;
    keepalive_timeout 0;
    server {{
        listen {self.ip}:443 ssl backlog=8192;
        server_name *.{DOMAIN} {DOMAIN};
        ssl_certificate {self.leaf.chain_path};
        ssl_certificate_key {self.leaf.key_path};
        location / {{ return 200 "OK\\n"; }}
    }}
    server {{
        listen {self.ip}:80 backlog=1024;
        root {self.workdir}/www;
        location / {{ }}
    }}
}}
""")
        proc = self.start(Proc("nginx", ["nginx", "-c", str(conf), "-p", str(self.workdir)],
                               log=self.workdir / "nginx.out"))
        wait_port(self.ip, 443)
        wait_port(self.ip, 80)
        return proc

    # ------------------------------------------------------------------ our exporter

    def write_exporter_config(self, urls: list[str], *, interval: float, timeout: float = 10.0,
                              concurrency: int = 64, connect_ip: str | None = None, name: str = "bench",
                              pac: bool = False) -> Path:
        """pac=True: the `defender` route is a PAC file (every target DIRECT after a shExpMatch),
        so each probe goes through the per-URL route evaluation (cached per target)."""
        lines = [
            f"interval: {int(interval * 1000)}ms",
            f"timeout: {int(min(timeout, interval) * 1000)}ms",
            f"concurrency: {concurrency}",
            "connect_to:",
            f'  - "::{connect_ip or self.ip}:"',
            "tls:",
            f"  ca_file: {self.ca_file}",
        ]
        if pac:
            script = self.workdir / f"{name}.pac"
            script.write_text('function FindProxyForURL(url, host) {\n'
                              '  if (shExpMatch(host, "*.nowhere.invalid")) return "PROXY 127.0.0.1:9";\n'
                              '  return "DIRECT";\n}\n')
            lines += ["routes:", "  defender:", f"    pac: {script}"]
        lines += ["groups:"]
        lines += [f"  {g}: {{enabled: false}}" for g in CATALOGUE_GROUPS]
        lines += ["  bench:", "    route: defender", "    targets:"]
        lines += [f'      - "{url}"' for url in urls]
        path = self.workdir / f"{name}-config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_exporter(self, config: Path, *, event_loop: str = "auto", name: str = "exporter",
                       batch_size: int | None = None) -> tuple[Proc, int]:
        """Our exporter on `config`; batch_size overrides the scheduler's BATCH_SIZE."""
        port = free_port()
        args = ["--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn",
                "--event-loop", event_loop]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if batch_size is not None:
            env["BENCH_BATCH_SIZE"] = str(batch_size)
        # exporter_variant.py is `python -m exporter` plus the BENCH_* knobs it reads (none set: none).
        argv = [sys.executable, str(ROOT / "bench" / "exporter_variant.py"), *args]
        proc = self.start(Proc(name, argv, log=self.workdir / f"{name}.log", env=env, cwd=ROOT))
        _wait_listening(proc, port, timeout=60)
        return proc, port

    # ------------------------------------------------------------------ blackbox_exporter

    def start_blackbox(self, names: list[str], *, timeout: float = 10.0, ip: str | None = None) -> tuple[Proc, int]:
        """blackbox_exporter in a private mount namespace whose /etc/hosts aims the
        bench names at nginx (its Go resolver reads /etc/hosts in-process)."""
        hosts = self.workdir / "blackbox-hosts"
        target_ip = ip or self.ip
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{target_ip} {n}\n" for n in names))
        conf = self.workdir / "blackbox.yml"
        conf.write_text(f"""modules:
  https_2xx:
    prober: http
    timeout: {int(timeout)}s
    http:
      method: GET
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config:
        ca_file: {self.ca_file}
""")
        port = free_port()
        script = (f'mount --bind "{hosts}" /etc/hosts && exec prometheus-blackbox-exporter '
                  f'--config.file="{conf}" --web.listen-address=127.0.0.1:{port} --log.level=warn')
        proc = self.start(Proc("blackbox", ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                               log=self.workdir / "blackbox.log"))
        _wait_listening(proc, port, timeout=30)
        return proc, port
