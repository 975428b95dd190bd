"""Run a host command without a shell, with a deadline and an output cap.

``await run_command(["netsh", "winhttp", "show", "proxy"], timeout=60)`` returns a
:class:`RunResult`; it never raises for the command's sake and never blocks the
event loop (``asyncio.create_subprocess_exec`` plus stream readers).

- The program is looked up on ``PATH`` unless ``argv[0]`` is a path.
- On expiry the process is killed (on POSIX its whole session, since it is
  started in a new one) and ``error`` is ``"timed out after 60s"``.
- stdout and stderr are each kept up to ``max_output`` bytes (default 1 MiB);
  the rest is read and discarded (``truncated=True``) so the child never stalls.
- Bytes are decoded as UTF-8 (``errors="replace"``), or UTF-16 when the output
  starts with a UTF-16 byte order mark or looks like UTF-16-LE (PowerShell and
  some Windows tools write it when redirected).
- Errors: ``"not found: <prog>"``, ``"permission denied: <prog>"``,
  ``"could not start <prog>: <reason>"``, ``"timed out after <n>s"``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

MAX_OUTPUT = 1 << 20
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # "" when the command ran to completion (whatever its exit code)
    truncated: bool = False
    duration: float = 0.0

    @property
    def ran(self) -> bool:
        return not self.error


def decode_output(data: bytes) -> str:
    """Bytes from a tool -> text (UTF-8 or UTF-16, never raises)."""
    if data.startswith(b"\xff\xfe") or data.startswith(b"\xfe\xff"):
        return data.decode("utf-16", errors="replace")
    if len(data) >= 4 and data[1:2] == b"\x00" and data[3:4] == b"\x00" and data[0:1] != b"\x00":
        return data.decode("utf-16-le", errors="replace")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="replace")


async def _drain(stream: asyncio.StreamReader | None, cap: int) -> tuple[bytes, bool]:
    if stream is None:
        return b"", False
    kept = bytearray()
    truncated = False
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return bytes(kept), truncated
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > max(room, 0):
            truncated = True


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        if sys.platform != "win32":
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: the child and its children
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def run_command(argv: Sequence[str], *, timeout: float, max_output: int = MAX_OUTPUT,
                      env: Mapping[str, str] | None = None) -> RunResult:
    """Run ``argv`` (no shell); see the module docstring for the result."""
    args = tuple(str(a) for a in argv)
    loop = asyncio.get_running_loop()
    started = loop.time()
    if not args:
        return RunResult(argv=args, error="empty command")
    prog = args[0]
    kwargs = {}
    if sys.platform != "win32":
        kwargs["start_new_session"] = True
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=dict(env) if env is not None else None, **kwargs)
    except FileNotFoundError:
        return RunResult(argv=args, error=f"not found: {prog}")
    except PermissionError:
        return RunResult(argv=args, error=f"permission denied: {prog}")
    except OSError as exc:
        return RunResult(argv=args, error=f"could not start {prog}: {exc.strerror or exc}")

    readers = (asyncio.ensure_future(_drain(proc.stdout, max_output)),
               asyncio.ensure_future(_drain(proc.stderr, max_output)))
    try:
        async with asyncio.timeout(timeout):
            (out, t1), (err, t2) = await asyncio.gather(*readers)
            code = await proc.wait()
    except TimeoutError:
        _kill(proc)
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            pass
        return RunResult(argv=args, exit_code=proc.returncode, error=f"timed out after {timeout:g}s",
                         duration=loop.time() - started)
    except BaseException:
        _kill(proc)
        for r in readers:
            r.cancel()
        raise
    return RunResult(argv=args, exit_code=code, stdout=decode_output(out), stderr=decode_output(err),
                     truncated=t1 or t2, duration=loop.time() - started)
