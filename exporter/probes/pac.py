"""Proxy auto-config: evaluate FindProxyForURL in a sandbox, parse its answer.

The engine is pypac's PACFile (dukpy's embedded JavaScript interpreter with
the standard PAC helper functions), run in a worker process of its own
(pacworker.py) with an address-space bound (MEMORY_LIMIT) and, per call, a
wall-clock bound (TIME_LIMIT, 1 s): a script that loops is killed with its
worker, one that allocates without end fails inside its bound; both are a
PacError (the probe reason `pac_error`) and the exporter goes on serving. The
next call starts a fresh worker.

    sandbox = PacSandbox()
    value = await sandbox.evaluate(script, "https://wdcp.microsoft.com/", "wdcp.microsoft.com")
    entries = parse_result(value)       # (PacEntry(proxy=None) is DIRECT, ...)

Calls are serialised (one worker); callers cache results per target URL, so
the sandbox runs once per target and script version, never once per probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from ..config import ProxyURL

TIME_LIMIT = 1.0  # seconds per FindProxyForURL call (and per script load)
MEMORY_LIMIT = 512 << 20  # address space of the worker process, bytes
STARTUP_LIMIT = 20.0  # seconds for a fresh worker to import its engine
MAX_ANSWER = 64 * 1024  # bytes of one answer line
MAX_SCRIPT = 1 << 20  # bytes of a PAC file (fetch cap)


class PacError(Exception):
    """The script could not give a usable answer: what went wrong, in words."""


class PacTimeout(PacError):
    """The script ran past TIME_LIMIT and its worker was killed."""


@dataclass(frozen=True)
class PacEntry:
    """One element of a PAC answer: DIRECT (proxy None) or an HTTP proxy."""

    proxy: ProxyURL | None

    @property
    def label(self) -> str:
        return proxy_label(self.proxy)


def proxy_label(proxy: ProxyURL | None) -> str:
    """How a hop is named in the `proxy` label of metrics.ROUTE_PROXY_INFO: DIRECT or host:port."""
    if proxy is None:
        return "DIRECT"
    host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
    return f"{host}:{proxy.port}"


_ENTRY = re.compile(r"^\s*([A-Za-z0-9]+)(?:\s+(\S+))?\s*$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")


def parse_result(value: object) -> tuple[PacEntry, ...]:
    """FindProxyForURL's answer -> entries in order. WinHTTP uses `PROXY host:port`
    (HTTP, a synonym some PAC files use, is read the same; a missing port is 80)
    and `DIRECT`; SOCKS and HTTPS entries are skipped, as WinHTTP cannot use them.
    An answer with no usable entry is a PacError, never a silent DIRECT."""
    if not isinstance(value, str):
        raise PacError(f"FindProxyForURL returned {_shown(value)}, not a string")
    entries: list[PacEntry] = []
    skipped: list[str] = []
    for element in value.split(";"):
        if not element.strip():
            continue
        match = _ENTRY.match(element)
        keyword = match.group(1).upper() if match else ""
        if keyword == "DIRECT" and match and match.group(2) is None:
            entries.append(PacEntry(None))
            continue
        if keyword in ("PROXY", "HTTP") and match and match.group(2):
            address = _HOST_PORT.match(match.group(2))
            port = int(address.group(2)) if address and address.group(2) else 80
            if address and 0 < port < 65536:
                entries.append(PacEntry(ProxyURL(address.group(1).strip("[]"), port)))
                continue
        skipped.append(element.strip()[:60])
    if not entries:
        why = f" (skipped: {', '.join(repr(s) for s in skipped[:3])})" if skipped else ""
        raise PacError(f"FindProxyForURL returned {_shown(value)}: no PROXY or DIRECT entry WinHTTP can use{why}")
    return tuple(entries)


def _shown(value: object) -> str:
    if value is None:
        return "nothing (null or undefined)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def script_digest(script: str) -> str:
    return hashlib.sha256(script.encode("utf-8", "surrogatepass")).hexdigest()


class PacSandbox:
    """One worker process, started on first use and again after a kill."""

    def __init__(self, *, time_limit: float = TIME_LIMIT, memory_limit: int = MEMORY_LIMIT):
        self.time_limit = time_limit
        self.memory_limit = memory_limit
        self._proc: subprocess.Popen[bytes] | None = None
        self._loaded: set[str] = set()
        self._buffer = b""
        self._lock = threading.Lock()
        self.kills = 0  # workers killed for running past their bound (for tests and logs)

    async def evaluate(self, script: str, url: str, host: str) -> str:
        """FindProxyForURL(url, host) of `script`; PacError when it throws, runs
        past TIME_LIMIT, exhausts MEMORY_LIMIT or the engine fails."""
        return await asyncio.to_thread(self._evaluate, script, script_digest(script), url, host)

    def close(self) -> None:
        with self._lock:
            self._stop()

    # ------------------------------------------------------------------ worker side (threads)

    def _evaluate(self, script: str, digest: str, url: str, host: str) -> object:
        with self._lock:
            self._ensure_worker()
            if digest not in self._loaded:
                self._call({"op": "load", "digest": digest, "script": script}, "loading the script")
                self._loaded.add(digest)
            answer = self._call({"op": "eval", "digest": digest, "url": url, "host": host},
                                f"FindProxyForURL({url!r})")
            if answer.get("unloaded"):  # evicted by the worker: load again once
                self._call({"op": "load", "digest": digest, "script": script}, "loading the script")
                answer = self._call({"op": "eval", "digest": digest, "url": url, "host": host},
                                    f"FindProxyForURL({url!r})")
            return answer.get("value") if answer.get("type") == "str" else None

    def _ensure_worker(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.probes.pacworker", str(self.memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
            start_new_session=True,
        )
        self._buffer = b""
        ready = self._read_line(time.monotonic() + STARTUP_LIMIT)
        if ready is None or b'"ready"' not in ready:
            self._stop()
            raise PacError("the PAC engine did not start (is the `pypac` package installed?)")

    def _call(self, request: dict, what: str) -> dict:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
        except OSError:
            self._stop()
            raise PacError(f"the PAC engine stopped before {what}") from None
        line = self._read_line(time.monotonic() + self.time_limit)
        if line is None:
            running = self._proc is not None and self._proc.poll() is None
            self._stop()
            if running:
                self.kills += 1
                raise PacTimeout(f"{what} ran past its bound of {self.time_limit:g} s (stopped)")
            raise PacError(f"the PAC engine stopped during {what}: the script exceeded its memory bound "
                           f"of {self.memory_limit >> 20} MiB or crashed it")
        try:
            answer = json.loads(line)
        except ValueError:
            self._stop()
            raise PacError(f"the PAC engine gave an unreadable answer to {what}") from None
        if not answer.get("ok") and not answer.get("unloaded"):
            raise PacError(f"{what} failed: {answer.get('error') or 'unknown error'}")
        return answer

    def _read_line(self, deadline: float) -> bytes | None:
        """A line from the worker by `deadline`, or None (timeout, end of output, oversized)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or len(self._buffer) > MAX_ANSWER:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._loaded = set()
        self._buffer = b""
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        proc.wait(5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
