r"""Parse the output of ``MpCmdRun.exe -ValidateMapsConnection``.

Pure: no I/O, never raises. Microsoft's article documents this failure output
(the same with ``0x80072F8F`` or ``0x80072EFE``)::

    Start Time: <Day_of_the_week> MM DD YYYY HH:MM:SS
    MpEnsureProcessMitigationPolicy: hr = 0x1
    ValidateMapsConnection
    ValidateMapsConnection failed to establish a connection to MAPS (hr=0x80070006 httpcore=451)
    MpCmdRun.exe: hr = 0x80070006

and on success::

    ValidateMapsConnection
    ValidateMapsConnection successfully established a connection to MAPS

Rules, in order:

1. A line containing ``successfully established a connection to MAPS`` means valid.
2. A ``ValidateMapsConnection ... (hr=... httpcore=...)`` line means failed; its ``hr``
   is the hresult. ``httpcore=`` and ``httpcode=`` are both accepted, values with or
   without ``0x``, a trailing period or ``**``, CRLF line endings, and a translated
   sentence (only the ``ValidateMapsConnection`` prefix and ``hr=`` are keyed on). Without
   ``hr=``, a bare failure code on that line counts (``ValidateMapsConnection failed
   (800106BA)``, as Microsoft's MpCmdRun page shows it).
3. Else a ``MpCmdRun.exe: hr = 0x...`` line with a failure hresult (top bit set).
4. Else the exit code, when it looks like a failure hresult (Windows returns the
   hresult as exit code: 2147942406 or -2147024890 both mean ``0x80070006``). On
   Linux exit codes are 8 bits, so rule 4 only ever helps on Windows.
5. Anything else: ``parsed=False`` with an ``error``.

``cause`` is a value of :class:`exporter.causes.Cause` or ``""``, from
:func:`exporter.causes.cause_for`, the same function the emulation uses: the hresult's
row in ``causes.HRESULTS`` (documented by Microsoft or inferred, each row says), refined
by the ``Evidence`` the caller has at that moment (the emulation's finding for the same
hresult, interception seen by the emulation, a WinHTTP proxy shown by netsh). An hresult
no row names gives ``""`` (the cause set is closed, so "unknown" is an empty label rather
than a guess).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.causes import Evidence, cause_for

_SUCCESS = re.compile(r"successfully\s+established\s+a\s+connection\s+to\s+MAPS", re.I)
_HR = re.compile(r"\bhr\s*=\s*(0x)?([0-9a-f]{1,8})\b", re.I)
# "ValidateMapsConnection failed (800106BA)", as the MpCmdRun page prints it: a bare code.
_BARE_HR = re.compile(r"(?:\(\s*(?:0x)?|\b0x)([0-9a-f]{8})\b", re.I)
_HTTP = re.compile(r"\bhttpco(?:re|de)\s*=\s*(0x[0-9a-f]+|\d+)\b", re.I)
_TOOL_HR = re.compile(r"^\s*MpCmdRun(?:\.exe)?\s*:\s*hr\s*=\s*(0x)?([0-9a-f]{1,8})\b", re.I)


@dataclass(frozen=True)
class MapsValidation:
    """What ``-ValidateMapsConnection`` said.

    ``hresult`` is ``"0x80072F8F"`` style (uppercase, 8 digits) while failing, ``""``
    while valid or unknown. ``source_of_hresult`` is ``line``, ``tool_line`` or
    ``exit_code`` (``""`` if none).
    """

    parsed: bool
    valid: bool
    hresult: str = ""
    httpcore: int | None = None
    cause: str = ""
    error: str = ""
    source_of_hresult: str = ""


def format_hresult(value: int) -> str:
    """``-2147024890`` or ``2147942406`` -> ``"0x80070006"`` (unsigned 32-bit, uppercase)."""
    return f"0x{value & 0xFFFFFFFF:08X}"


def cause_for_hresult(hresult: str, evidence: Evidence = Evidence()) -> str:
    """causes.cause_for as a label value: the cause, or ``""`` for an unknown hresult."""
    if not hresult:
        return ""
    cause = cause_for(hresult, evidence)
    return "" if cause is None else cause.value


def _hr(digits: str) -> str:
    return format_hresult(int(digits, 16))


def parse_validate_maps(text: str | None, exit_code: int | None = None, *,
                        evidence: Evidence = Evidence()) -> MapsValidation:
    """Parse the stdout of ``MpCmdRun.exe -ValidateMapsConnection`` and its exit code."""
    if not isinstance(text, str):
        text = ""
    lines = [ln.strip().rstrip("*").strip() for ln in text.replace("\r", "\n").split("\n")]
    lines = [ln for ln in lines if ln]

    for ln in lines:
        if _SUCCESS.search(ln):
            return MapsValidation(parsed=True, valid=True)

    httpcore: int | None = None
    for ln in lines:
        if not ln.lower().startswith("validatemapsconnection"):
            continue
        m = _HR.search(ln)
        if m:
            hres = _hr(m.group(2))
        elif (bare := _BARE_HR.search(ln)) and int(bare.group(1), 16) & 0x80000000:
            hres = _hr(bare.group(1))
        else:
            continue
        h = _HTTP.search(ln)
        if h:
            raw = h.group(1)
            httpcore = int(raw, 16) if raw.lower().startswith("0x") else int(raw)
        return MapsValidation(parsed=True, valid=False, hresult=hres, httpcore=httpcore,
                              cause=cause_for_hresult(hres, evidence), source_of_hresult="line")

    for ln in lines:
        m = _TOOL_HR.match(ln)
        if m and int(m.group(2), 16) & 0x80000000:
            hres = _hr(m.group(2))
            return MapsValidation(parsed=True, valid=False, hresult=hres,
                                  cause=cause_for_hresult(hres, evidence), source_of_hresult="tool_line")

    if isinstance(exit_code, int) and not isinstance(exit_code, bool) and exit_code & 0x80000000:
        hres = format_hresult(exit_code)
        return MapsValidation(parsed=True, valid=False, hresult=hres,
                              cause=cause_for_hresult(hres, evidence), source_of_hresult="exit_code")

    failed_line = any(ln.lower().startswith("validatemapsconnection") and "fail" in ln.lower()
                      for ln in lines)
    if failed_line:
        return MapsValidation(parsed=True, valid=False,
                              error="MAPS validation failed without an hresult")
    if not lines:
        return MapsValidation(parsed=False, valid=False,
                              error=f"empty output (exit code {exit_code})")
    return MapsValidation(parsed=False, valid=False,
                          error=f"no ValidateMapsConnection result in output (exit code {exit_code})")
