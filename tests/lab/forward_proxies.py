"""Real forward proxies besides Squid, from Debian: tinyproxy and Apache httpd (mod_proxy).

    with Tinyproxy(workdir, {"go.microsoft.com": "127.101.0.2"}, deny_domains=["blocked.microsoft.com"],
                   auth=("noc", "s3cret")) as proxy:
        proxy.url          # http://127.0.0.1:PORT (no credentials; put them in the route's URL)
    ApacheProxy(...)       # the same surface

Both resolve names with the C library, so each runs in a mount namespace of its
own (`unshare -m`) where /etc/hosts is the given mapping and /etc/resolv.conf
points at Squid's NXDOMAIN lab resolver (or nowhere): a name not mapped fails
at once, and nothing ever leaves loopback. Policy: CONNECT to 443 only; deny
rules by domain; basic authentication when `auth` is given. An unreachable
upstream is a name mapped to an address where nothing listens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .mitm import _accepts
from .servers import free_port
from .squid import _apr1_hash, _start_resolver


class ProxyError(RuntimeError):
    pass


class _ForwardProxy:
    binary = ""
    package = ""

    def __init__(self, workdir: str | Path, hosts: Mapping[str, str], *, deny_domains: Iterable[str] = (),
                 auth: tuple[str, str] | None = None, startup_timeout: float = 10.0) -> None:
        self.workdir = Path(workdir)
        self.hosts = dict(hosts)
        self.deny_domains = tuple(deny_domains)
        self.auth = auth
        self.startup_timeout = startup_timeout
        self.port = 0
        # The proxies drop privileges: their files live in a directory every user can read.
        self.rundir = Path(tempfile.mkdtemp(prefix=f"lab-{self.package}-"))
        self.rundir.chmod(0o755)
        self._process: subprocess.Popen[bytes] | None = None
        self._resolver = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        exe = shutil.which(self.binary) or shutil.which(self.binary, path="/usr/sbin:/usr/bin")
        if exe is None:
            raise ProxyError(f"{self.binary} not found: install the Debian package {self.package} (tests/run.sh does)")
        self._resolver = _start_resolver()
        (self.rundir / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in self.hosts.items()))
        nameserver = self._resolver.ip if self._resolver else "127.0.0.1"
        (self.rundir / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:1 attempts:1\n")
        self.port = free_port()
        command = self._write_config(exe)
        script = (f"mount --bind {self.rundir / 'hosts'} /etc/hosts && "
                  f"mount --bind {self.rundir / 'resolv.conf'} /etc/resolv.conf && exec \"$@\"")
        log = open(self.rundir / "stderr.log", "wb")
        try:
            self._process = subprocess.Popen(["unshare", "-m", "sh", "-c", script, "sh", *command],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ProxyError(f"{self.binary} exited with {self._process.returncode}: {self.diagnostics()}")
            if _accepts(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise ProxyError(f"{self.binary} did not listen within {self.startup_timeout} s: {self.diagnostics()}")

    def stop(self) -> None:
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
        if self._resolver is not None:
            self._resolver.close()
            self._resolver = None
        if self.rundir.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            for path in self.rundir.iterdir():
                if path.is_file():
                    shutil.copyfile(path, self.workdir / path.name)
            shutil.rmtree(self.rundir, ignore_errors=True)

    def diagnostics(self) -> str:
        parts = []
        for path in sorted(self.rundir.glob("*.log")):
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)

    def _write_config(self, exe: str) -> list[str]:
        raise NotImplementedError


class Tinyproxy(_ForwardProxy):
    """tinyproxy 1.11 in the foreground (-d) with a private config."""

    binary = "tinyproxy"
    package = "tinyproxy"

    def _write_config(self, exe: str) -> list[str]:
        w = self.rundir
        conf = [
            "User nobody", "Group nogroup",
            f"Port {self.port}", "Listen 127.0.0.1", "Timeout 10",
            f'LogFile "{w / "tinyproxy.log"}"', "LogLevel Info",
            f'PidFile "{w / "tinyproxy.pid"}"',
            "MaxClients 50", "Allow 127.0.0.0/8", "ConnectPort 443",
            'ViaProxyName "lab-tinyproxy"',
            'DefaultErrorFile "/usr/share/tinyproxy/default.html"',
        ]
        if self.deny_domains:
            (w / "filter").write_text("".join(f"^{d.replace('.', r'[.]')}$\n" for d in self.deny_domains))
            conf += [f'Filter "{w / "filter"}"', "FilterType ere", "FilterDefaultDeny No"]
        if self.auth is not None:
            user, password = self.auth
            conf.append(f"BasicAuth {user} {password}")
        (w / "tinyproxy.conf").write_text("\n".join(conf) + "\n")
        (w / "tinyproxy.log").touch()
        os.chmod(w / "tinyproxy.log", 0o666)
        return [exe, "-d", "-c", str(w / "tinyproxy.conf")]


class ApacheProxy(_ForwardProxy):
    """Apache httpd 2.4 as a forward proxy (mod_proxy, mod_proxy_http, mod_proxy_connect), `-X`."""

    binary = "apache2"
    package = "apache2"
    modules = "/usr/lib/apache2/modules"

    def _write_config(self, exe: str) -> list[str]:
        w = self.rundir
        mods = ["mpm_event", "authz_core", "authz_host", "authn_core", "authn_file", "authz_user",
                "auth_basic", "proxy", "proxy_http", "proxy_connect"]
        conf = [f"LoadModule {m}_module {self.modules}/mod_{m}.so" for m in mods]
        conf += [
            f"ServerRoot {w}", "ServerName lab-apache", f"Listen 127.0.0.1:{self.port}",
            f"PidFile {w / 'apache.pid'}", f"ErrorLog {w / 'error.log'}", "LogLevel warn",
            "User nobody", "Group nogroup", f"DefaultRuntimeDir {w}", "Mutex file:" + str(w),
            "ProxyRequests On", "AllowCONNECT 443", "ProxyTimeout 5",
            "ServerSignature On",  # Debian's default (conf-available/security.conf)
        ]
        conf.append("<Proxy \"*\">")
        if self.auth is not None:
            user, password = self.auth
            (w / "htpasswd").write_text(f"{user}:{_apr1_hash(password)}\n")
            os.chmod(w / "htpasswd", 0o644)
            conf += ["  AuthType Basic", "  AuthName lab-apache", f"  AuthUserFile {w / 'htpasswd'}",
                     "  Require valid-user"]
        else:
            conf.append("  Require ip 127.0.0.0/8")
        conf.append("</Proxy>")
        if self.deny_domains:  # after <Proxy *>: the later section's Require wins
            pattern = "|".join(d.replace(".", r"\.") for d in self.deny_domains)
            # Matches "http://name/..." and CONNECT's "name:443" alike.
            conf += [f'<ProxyMatch "^(?:http://)?(?:{pattern})(?::\\d+)?(?:/|$)">', "  Require all denied",
                     "</ProxyMatch>"]
        (w / "apache.conf").write_text("\n".join(conf) + "\n")
        return [exe, "-X", "-f", str(w / "apache.conf")]
