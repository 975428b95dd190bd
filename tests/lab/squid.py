"""A real Squid (Debian package `squid`, 5.x) as the proxy of a route, on loopback.

    with Squid(tmp_path / "squid", {"wdcp.microsoft.com": "127.101.0.2"},
               deny_domains=["blocked.microsoft.com"], auth=("alice", "secret")) as proxy:
        proxy.url                  # http://127.0.0.1:PORT
        proxy.proxy_url            # http://alice:secret@127.0.0.1:PORT
        proxy.access_log_lines()

Name resolution: `hosts_file` maps the given names to lab addresses; every other name goes to a
private loopback resolver that answers NXDOMAIN (so Squid answers 503 ERR_DNS_FAIL at once and
never asks a real resolver). Policy: CONNECT only to port 443; plain HTTP (absolute-URI requests, as CRL fetches
through a proxy use) to 80, 443 and 1025-65535; only loopback clients.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

SQUID_BINARY = "squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"


_SERVICE_NUMBERS = itertools.count()  # per-process service names for lab Squids

class SquidError(RuntimeError):
    pass


# What the `squid_factory` fixture hands out: (hosts, **Squid keyword arguments) -> started Squid.
SquidFactory = Callable[..., "Squid"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_resolver() -> _NxDomainResolver | None:
    # Port 53 needs root (the lab runs as root); otherwise fall back to "nothing listens".
    from .servers import alloc_ip

    for _ in range(5):
        try:
            return _NxDomainResolver(alloc_ip())
        except PermissionError:
            return None
        except OSError:
            continue  # address taken by a parallel test process: try the next one
    return None


def _apr1_hash(password: str) -> str:
    # The `crypt` module is deprecated (gone in 3.13); openssl is always there with squid.
    out = subprocess.run(["openssl", "passwd", "-apr1", password], check=True, capture_output=True, text=True)
    return out.stdout.strip()


class _NxDomainResolver:
    """A tiny UDP DNS server answering NXDOMAIN to everything, on `ip`:53.

    Squid can only be given nameserver addresses, not ports. With nothing listening, it takes
    seconds and reports ERR_READ_ERROR/ERR_CANNOT_FORWARD; with this, unknown names fail at once
    with 503 ERR_DNS_FAIL, as behind a real corporate proxy. Nothing ever leaves loopback.
    """

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((ip, 53))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lab-dns-{ip}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = _nxdomain(query)
            if answer:
                self._sock.sendto(answer, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def _nxdomain(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    # Walk the question's name (labels up to a zero byte), then QTYPE and QCLASS.
    end = 12
    while end < len(query) and query[end] != 0:
        end += 1 + query[end]
    end += 1 + 4
    if end > len(query):
        return None
    rd = query[2] & 0x01
    flags = bytes([0x80 | rd, 0x83])  # QR=1, RD copied; RA=1, RCODE=3 (NXDOMAIN)
    counts = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # one question, no records (EDNS dropped)
    return query[:2] + flags + counts + query[12:end]


class Squid:
    """Squid in the foreground (`squid -N`) with a private config in `workdir`."""

    def __init__(
        self,
        workdir: str | Path,
        hosts: Mapping[str, str],
        *,
        deny_domains: Iterable[str] = (),
        auth: tuple[str, str] | None = None,
        port: int | None = None,
        extra_config: Sequence[str] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir)
        # Where Squid's files really live: workdir itself, unless the `proxy` user cannot reach
        # it (pytest's tmp_path sits under a 0700 directory); see _prepare_rundir.
        self.rundir = self.workdir
        self.hosts = dict(hosts)
        self.deny_domains = tuple(deny_domains)
        self.auth = auth
        self._fixed_port = port
        self.port = port or 0
        self.extra_config = tuple(extra_config)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._resolver: _NxDomainResolver | None = None
        self._service = ""  # Squid's service name (-n), set at launch

    # ---------------------------------------------------------------- public

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_url(self) -> str:
        """The URL with credentials when auth is on (what a client's proxy setting holds)."""
        if self.auth is None:
            return self.url
        user, password = self.auth
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def access_log_path(self) -> Path:
        return self.rundir / "access.log"

    @property
    def cache_log_path(self) -> Path:
        return self.rundir / "cache.log"

    def access_log_lines(self) -> list[str]:
        """Squid-format lines, e.g. `... TCP_TUNNEL/200 4000 CONNECT wdcp.microsoft.com:443 - HIER_DIRECT/127.101.0.2 -`."""
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def __enter__(self) -> Squid:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        binary = shutil.which(SQUID_BINARY) or shutil.which(SQUID_BINARY, path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise SquidError("squid is not installed: install the Debian package `squid` (apt-get install -y squid)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_rundir()
        if self._resolver is None:
            self._resolver = _start_resolver()
        # A free port can be taken between our check and Squid's bind: retry a few times.
        attempts = 1 if self._fixed_port else 4
        last_error = ""
        for _ in range(attempts):
            self.port = self._fixed_port or _free_port()
            self._write_files()
            try:
                self._launch(binary)
                return
            except SquidError as exc:
                last_error = str(exc)
                self._kill()
                if "Address already in use" not in last_error:
                    break
        self.stop()
        raise SquidError(last_error)

    def stop(self) -> None:
        """Stop at once: Squid's graceful shutdown takes ~2 s even with shutdown_lifetime 0,
        and nothing here needs it (logs are written unbuffered). Kill the whole process group,
        helpers (basic_ncsa_auth) included."""
        self._kill()
        if self._service:  # the kill leaves its shared-memory segments behind
            for segment in Path("/dev/shm").glob(f"{self._service}-*"):
                segment.unlink(missing_ok=True)
        if self._resolver is not None:
            self._resolver.close()
            self._resolver = None
        if self.rundir != self.workdir:
            # Keep the logs and config with the test's files, drop the private copy.
            for name in ("squid.conf", "access.log", "cache.log", "stderr.log", "hosts"):
                if (self.rundir / name).exists():
                    shutil.copyfile(self.rundir / name, self.workdir / name)
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = self.workdir

    def _kill(self) -> None:
        proc = self.process
        if proc is None:
            return
        self.process = None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(5)

    # ---------------------------------------------------------------- internals

    def _prepare_rundir(self) -> None:
        """Squid reads hosts/passwd and writes logs as `proxy`: every parent must be searchable."""
        if self.rundir != self.workdir:
            return  # already prepared (restart)
        if all(p.stat().st_mode & 0o001 for p in self.workdir.resolve().parents):
            return
        self.rundir = Path(tempfile.mkdtemp(prefix="lab-squid-"))

    def _conf_path(self) -> Path:
        return self.rundir / "squid.conf"

    def _write_files(self) -> None:
        w = self.rundir
        (w / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in self.hosts.items()))
        conf = [
            f"http_port 127.0.0.1:{self.port}",
            "visible_hostname lab-squid",
            "workers 1",
            f"pid_filename {w / 'squid.pid'}",
            f"cache_log {w / 'cache.log'}",
            f"access_log stdio:{w / 'access.log'}",
            "logfile_rotate 0",
            f"coredump_dir {w}",
            # No caching at all, no ICMP pinger: faster start, and every request reaches the lab.
            "cache deny all",
            "cache_mem 0 MB",
            "pinger_enable off",
            "shutdown_lifetime 0 seconds",
            # Names come from our hosts file; nothing listens on 127.0.0.1:53, so any other name
            # fails fast and no query ever leaves the machine.
            f"hosts_file {w / 'hosts'}",
            f"dns_nameservers {self._resolver.ip if self._resolver else '127.0.0.1'}",
            "dns_timeout 2 seconds",
            "dns_retransmit_interval 1 seconds",
            "negative_dns_ttl 1 seconds",
            "positive_dns_ttl 1 seconds",
            "ipcache_size 0",
            # Lab servers may refuse or hang on purpose: do not let Squid retry other paths.
            "connect_retries 0",
            "forward_max_tries 1",
            "acl SSL_ports port 443",
            "acl Safe_ports port 80 443 1025-65535",
            "acl CONNECT method CONNECT",
            "acl lab_clients src 127.0.0.0/8",
            "http_access deny CONNECT !SSL_ports",
            "http_access deny !Safe_ports",
            "http_access deny !lab_clients",
        ]
        if self.auth is not None:
            user, password = self.auth
            passwd = w / "passwd"
            passwd.write_text(f"{user}:{_apr1_hash(password)}\n")
            conf += [
                f"auth_param basic program {NCSA_AUTH} {passwd}",
                "auth_param basic children 2 startup=1 idle=1",
                "auth_param basic realm lab-squid",
                "acl authed proxy_auth REQUIRED",
                # Authenticate before the domain policy, as corporate proxies do.
                "http_access deny !authed",
            ]
        if self.deny_domains:
            conf.append("acl blocked dstdomain " + " ".join(self.deny_domains))
            conf.append("http_access deny blocked")
        conf.append("http_access allow lab_clients")
        conf.append("http_access deny all")
        conf += list(self.extra_config)
        self._conf_path().write_text("\n".join(conf) + "\n")
        for name in ("access.log", "cache.log"):
            (w / name).unlink(missing_ok=True)
        # Squid drops to the `proxy` user: it must be able to write logs and the pid file here.
        proxy = pwd.getpwnam("proxy")
        os.chown(w, proxy.pw_uid, proxy.pw_gid)
        for path in w.iterdir():
            os.chown(path, proxy.pw_uid, proxy.pw_gid)
        w.chmod(0o755)

    def _launch(self, binary: str) -> None:
        stderr_path = self.rundir / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            # -N: foreground, no daemon; its own session so stop() can kill helpers with it.
            # -n: a service name of its own, so its shared-memory segments (/dev/shm/<name>-cf__*)
            # never meet another lab Squid's, nor the stale ones a killed Squid leaves behind
            # ("shm_open /squid-cf__metadata.shm: File exists").
            self._service = service = f"lab{os.getpid()}x{next(_SERVICE_NUMBERS)}"
            self.process = subprocess.Popen(
                [binary, "-N", "-n", service, "-f", str(self._conf_path())],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        # Wait for Squid to say it listens: connecting to test readiness would leave an
        # "error:transaction-end-before-headers" line in the access log.
        needle = "Accepting HTTP Socket connections at conn"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SquidError(f"squid exited with {self.process.returncode}:\n{self._diagnostics()}")
            try:
                if needle in self.cache_log_path.read_text(errors="replace"):
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise SquidError(f"squid did not start listening within {self.startup_timeout} s:\n{self._diagnostics()}")

    def _diagnostics(self) -> str:
        parts = []
        for name in ("stderr.log", "cache.log"):
            try:
                text = (self.rundir / name).read_text(errors="replace")
            except FileNotFoundError:
                continue
            parts.append(f"--- {name}\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(parts)
