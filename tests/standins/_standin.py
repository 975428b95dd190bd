"""Shared helpers of the stand-in executables (imported from the script's own folder).

Scenario: ``STANDIN_SCENARIO_<TOOL>`` (TOOL = MPCMDRUN, NETSH, REG, POWERSHELL,
MDATP) or else ``STANDIN_SCENARIO``, default ``winhttp_missing``:

- ``winhttp_missing``: the article's failure (hresult from ``STANDIN_HRESULT``,
  default 0x80072F8F, httpcore=451), no WinHTTP proxy, SSLOptions unset, age 2.
- ``healthy``: MAPS validates, a WinHTTP proxy is set, SSLOptions unset, age 0.
- ``ssl_workaround``: MAPS validates, no WinHTTP proxy, SSLOptions = 2,
  ProxyServer set, age 9 (full Get-MpComputerStatus list form).
- ``pac_system``: no WinHTTP proxy (`show proxy`), but `show advproxy` and SYSTEM's Internet
  settings name a PAC URL, Defender's policy has ProxyPacUrl and ProxyBypass, auto-detect on.
- ``hang``: sleep for an hour (the caller's timeout must kill it).
- ``garbage``: print something that is not the tool's output, exit 0.
"""

import os
import sys
import time

TOOLS = ("MPCMDRUN", "NETSH", "REG", "POWERSHELL", "MDATP")


def scenario(tool: str) -> str:
    return (os.environ.get(f"STANDIN_SCENARIO_{tool}") or os.environ.get("STANDIN_SCENARIO")
            or "winhttp_missing")


def emit(lines, *, crlf=True, stream=None) -> None:
    out = stream or sys.stdout.buffer
    out.write(("\r\n" if crlf else "\n").join(lines).encode() + (b"\r\n" if crlf else b"\n"))
    out.flush()


def common(tool: str) -> str:
    """Handle the scenarios every stand-in shares; return the scenario otherwise."""
    s = scenario(tool)
    if s == "hang":
        sys.stdout.write("started\n")
        sys.stdout.flush()
        time.sleep(3600)
        sys.exit(0)
    if s == "garbage":
        emit(["\x00\x07 not what you expected", "lorem ipsum"])
        sys.exit(0)
    return s
