"""Parse ``netsh winhttp show proxy``.

Pure: no I/O, never raises. Without a system-wide proxy::

    Current WinHTTP proxy settings:

        Direct access (no proxy server).

With one::

    Current WinHTTP proxy settings:

        Proxy Server(s) :  proxy.contoso.com:8080
        Bypass List     :  *.contoso.com;<local>

``configured`` is True only for the second form. The bypass list is split on
``;`` (and blanks); ``(none)`` gives an empty tuple. Output in another
language, or anything else, gives ``parsed=False`` with an ``error``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIRECT = re.compile(r"direct\s+access\s*\(\s*no\s+proxy\s+server\s*\)", re.I)
_PROXY = re.compile(r"^\s*proxy\s+server\(s\)\s*:\s*(.*?)\s*$", re.I)
_BYPASS = re.compile(r"^\s*bypass\s+list\s*:\s*(.*?)\s*$", re.I)


@dataclass(frozen=True)
class WinHttpProxy:
    parsed: bool
    configured: bool = False
    proxy: str | None = None
    bypass: tuple[str, ...] = ()
    error: str = ""


def parse_winhttp_proxy(text: str | None) -> WinHttpProxy:
    """Parse the stdout of ``netsh winhttp show proxy``."""
    if not isinstance(text, str) or not text.strip():
        return WinHttpProxy(parsed=False, error="empty output")
    lines = text.replace("\r", "\n").split("\n")
    proxy: str | None = None
    bypass: tuple[str, ...] = ()
    for ln in lines:
        if m := _PROXY.match(ln):
            proxy = m.group(1) or None
        elif m := _BYPASS.match(ln):
            raw = m.group(1)
            if raw and raw.lower() != "(none)":
                bypass = tuple(p for p in re.split(r"[;\s]+", raw) if p)
    if proxy:
        return WinHttpProxy(parsed=True, configured=True, proxy=proxy, bypass=bypass)
    if any(_DIRECT.search(ln) for ln in lines):
        return WinHttpProxy(parsed=True, configured=False)
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    return WinHttpProxy(parsed=False, error=f"unrecognised netsh output: {first[:120]!r}")
