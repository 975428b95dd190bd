r"""Parse ``reg query <key> /v <name>`` for the two Defender policy values.

Pure: no I/O, never raises. A present value::

    HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Windows Defender\Spynet
        SSLOptions    REG_DWORD    0x3

    HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Windows Defender
        ProxyServer    REG_SZ    http://proxy.contoso.com:8080

An absent value or key: nothing on stdout, exit code 1, and on stderr
``ERROR: The system was unable to find the specified registry key or value.``
That is ``parsed=True, present=False``; :func:`parse_ssl_options` then reports
the default 3 (revocation checks and pinning on) and :func:`parse_proxy_server`
reports ``None``. Any other output gives ``parsed=False`` with an ``error``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import SSL_OPTIONS_DEFAULT

SPYNET_KEY = r"HKLM\SOFTWARE\Policies\Microsoft\Windows Defender\Spynet"
DEFENDER_KEY = r"HKLM\SOFTWARE\Policies\Microsoft\Windows Defender"

_VALUE = re.compile(r"^\s*(?P<name>\S.*?)\s+(?P<type>REG_[A-Z_0-9]+)(?:\s+(?P<data>.*?))?\s*$")
_ABSENT = re.compile(r"unable\s+to\s+find\s+the\s+specified\s+registry\s+key\s+or\s+value", re.I)


@dataclass(frozen=True)
class RegValue:
    parsed: bool
    present: bool = False
    name: str = ""
    reg_type: str = ""
    value: int | str | None = None
    error: str = ""


def parse_reg_query(text: str | None, name: str, *, exit_code: int | None = None,
                    stderr: str = "") -> RegValue:
    """Find value ``name`` in ``reg query`` output; DWORD/QWORD data become ints."""
    text = text if isinstance(text, str) else ""
    for ln in text.replace("\r", "\n").split("\n"):
        m = _VALUE.match(ln)
        if not m or m.group("name").lower() != name.lower():
            continue
        rtype, data = m.group("type"), m.group("data") or ""
        if rtype in ("REG_DWORD", "REG_QWORD", "REG_DWORD_BIG_ENDIAN"):
            try:
                value: int | str = int(data, 0) if data.lower().startswith("0x") else int(data)
            except ValueError:
                return RegValue(parsed=False, name=name, reg_type=rtype,
                                error=f"{name}: bad {rtype} data {data!r}")
        else:
            value = data
        return RegValue(parsed=True, present=True, name=name, reg_type=rtype, value=value)
    if _ABSENT.search(text) or _ABSENT.search(stderr or "") or (exit_code == 1 and not text.strip()):
        return RegValue(parsed=True, present=False, name=name)
    if not text.strip():
        return RegValue(parsed=False, name=name, error=f"{name}: empty output (exit code {exit_code})")
    return RegValue(parsed=False, name=name, error=f"{name}: value not found in reg output")


def parse_ssl_options(text: str | None, *, exit_code: int | None = None, stderr: str = "") -> RegValue:
    """Spynet ``SSLOptions`` (REG_DWORD); absent -> ``value=3``, ``present=False``."""
    r = parse_reg_query(text, "SSLOptions", exit_code=exit_code, stderr=stderr)
    if r.parsed and not r.present:
        return RegValue(parsed=True, present=False, name="SSLOptions", value=SSL_OPTIONS_DEFAULT)
    if r.parsed and not isinstance(r.value, int):
        return RegValue(parsed=False, name="SSLOptions", reg_type=r.reg_type,
                        error=f"SSLOptions is {r.reg_type}, expected REG_DWORD")
    return r


def parse_proxy_server(text: str | None, *, exit_code: int | None = None, stderr: str = "") -> RegValue:
    """Defender policy ``ProxyServer`` (REG_SZ); absent or empty -> ``value=None``."""
    r = parse_reg_query(text, "ProxyServer", exit_code=exit_code, stderr=stderr)
    if r.parsed and (not r.present or r.value == ""):
        return RegValue(parsed=True, present=r.present, name="ProxyServer", reg_type=r.reg_type, value=None)
    if r.parsed and not isinstance(r.value, str):
        return RegValue(parsed=False, name="ProxyServer", reg_type=r.reg_type,
                        error=f"ProxyServer is {r.reg_type}, expected REG_SZ")
    return r
