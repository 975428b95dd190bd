"""Parse ``mdatp connectivity test`` (Defender for Endpoint on Linux and macOS).

Pure: no I/O, never raises. Sample output::

    Testing connection with https://cdn.x.cp.wd.microsoft.com/ping ... [OK]
    Testing connection with https://eu-cdn.x.cp.wd.microsoft.com/ping ... [OK]
    Testing connection with https://x.cp.wd.microsoft.com/api/report ... [ERROR]
    Testing connection with https://winatp-gw-cus.microsoft.com/test ... [OK]

Each ``Testing connection with <url> ... [STATUS]`` line becomes a
:class:`UrlCheck` (``ok`` only for ``[OK]``; ``[ERROR]``, ``[FAILED]`` or any
other status is a failure). Other lines (summaries, blank lines) are ignored.
``valid`` is True when at least one URL was tested and all passed. No test line
at all gives ``parsed=False`` with an ``error`` (the first line of the output,
e.g. mdatp's own error message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^\s*Testing\s+connection\s+with\s+(\S+)\s*(?:\.\.\.|…)?\s*\[\s*([A-Za-z_ ]+?)\s*\]", re.I)


@dataclass(frozen=True)
class UrlCheck:
    url: str
    ok: bool
    status: str  # as printed, upper case: OK, ERROR, ...


@dataclass(frozen=True)
class MdatpConnectivity:
    parsed: bool
    valid: bool = False
    checks: tuple[UrlCheck, ...] = ()
    error: str = ""

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.url for c in self.checks if not c.ok)


def parse_connectivity_test(text: str | None, exit_code: int | None = None) -> MdatpConnectivity:
    """Parse the stdout of ``mdatp connectivity test``."""
    if not isinstance(text, str):
        text = ""
    lines = [ln for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    checks = []
    for ln in lines:
        if m := _LINE.match(ln):
            status = m.group(2).strip().upper()
            checks.append(UrlCheck(url=m.group(1), ok=status == "OK", status=status))
    if not checks:
        what = repr(lines[0].strip()[:120]) if lines else "empty output"
        return MdatpConnectivity(parsed=False, error=f"no connectivity test lines (exit code {exit_code}): {what}")
    return MdatpConnectivity(parsed=True, valid=all(c.ok for c in checks), checks=tuple(checks))
