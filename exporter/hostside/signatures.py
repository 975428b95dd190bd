"""Parse the security intelligence age from ``Get-MpComputerStatus``.

Pure: no I/O, never raises. Either the bare property, from
``powershell -NoProfile -Command "(Get-MpComputerStatus).AntivirusSignatureAge"``::

    2

or the cmdlet's full list format::

    AMEngineVersion                  : 1.1.24080.9
    AntivirusEnabled                 : True
    AntivirusSignatureAge            : 2
    AntivirusSignatureLastUpdated    : 9/10/2024 3:24:51 AM

Result: ``days`` (int) or ``parsed=False`` with an ``error`` (e.g. a PowerShell
error text, an empty answer or a negative number). The value is passed on as
is; a very large one (e.g. 65535) means the intelligence was never updated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LIST = re.compile(r"^\s*AntivirusSignatureAge\s*:\s*(\S*)\s*$", re.I)
_BARE = re.compile(r"^\s*(\d+)\s*$")


@dataclass(frozen=True)
class SignatureAge:
    parsed: bool
    days: int | None = None
    error: str = ""


def parse_signature_age(text: str | None) -> SignatureAge:
    """Parse the bare integer or the ``AntivirusSignatureAge : N`` line."""
    if not isinstance(text, str) or not text.strip():
        return SignatureAge(parsed=False, error="empty output")
    lines = [ln for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    for ln in lines:
        if m := _LIST.match(ln):
            if m.group(1).isdigit():
                return SignatureAge(parsed=True, days=int(m.group(1)))
            return SignatureAge(parsed=False, error=f"AntivirusSignatureAge is not a number: {m.group(1)!r}")
    if len(lines) == 1 and (m := _BARE.match(lines[0])):
        return SignatureAge(parsed=True, days=int(m.group(1)))
    return SignatureAge(parsed=False, error=f"no AntivirusSignatureAge in output: {lines[0].strip()[:120]!r}")
