r"""Parse the proxy settings a Windows endpoint really has, for Defender and for SYSTEM.

Pure: no I/O, never raises. Sources (KB2623724 and the Defender proxy policies):

- Defender's policy values ``ProxyPacUrl`` and ``ProxyBypass`` (REG_SZ) under
  ``HKLM\SOFTWARE\Policies\Microsoft\Windows Defender`` (``ProxyServer`` is in registry.py);
- ``netsh winhttp show advproxy``: newer Windows prints the advanced WinHTTP settings as a
  JSON object after a heading (the keys ``netsh winhttp set advproxy settings=`` takes:
  ``Proxy``, ``ProxyBypass``, ``AutoconfigUrl``, ``AutoDetect``). Keys are matched without
  regard to case, text around the object is ignored; "not recognised" output (older Windows)
  is ``parsed=False``;
- SYSTEM's Internet settings: ``reg query "HKU\S-1-5-18\Software\Microsoft\Windows\CurrentVersion\Internet Settings"``
  (``ProxyEnable`` REG_DWORD, ``ProxyServer``, ``ProxyOverride``, ``AutoConfigURL`` REG_SZ), and
  auto-detection from the ``DefaultConnectionSettings`` REG_BINARY under its ``Connections``
  subkey: byte 8 holds the flags, 0x08 = "Automatically detect settings".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .registry import DEFENDER_KEY, parse_reg_query

SYSTEM_INTERNET_SETTINGS = r"HKU\S-1-5-18\Software\Microsoft\Windows\CurrentVersion\Internet Settings"
SYSTEM_CONNECTIONS = SYSTEM_INTERNET_SETTINGS + r"\Connections"
AUTODETECT_FLAG = 0x08

_VALUE = re.compile(r"^\s*(?P<name>\S.*?)\s+(?P<type>REG_[A-Z_0-9]+)(?:\s+(?P<data>.*?))?\s*$")


@dataclass(frozen=True)
class ProxySettings:
    """One source's proxy configuration, normalised. ``parsed=False``: see ``error``."""

    parsed: bool
    proxy: str = ""  # host:port (or per-scheme list as written), "" for none
    bypass: str = ""  # as written, "" for none
    pac_url: str = ""
    autodetect: bool = False
    error: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.proxy or self.pac_url or self.autodetect)

    def describe(self) -> str:
        """'proxy host:port', 'pac URL', 'wpad' or 'direct' (what a route would be)."""
        if self.proxy:
            return f"proxy {_host_port(self.proxy)}"
        if self.pac_url:
            return f"pac {self.pac_url}"
        if self.autodetect:
            return "wpad"
        return "direct"


def parse_policy_string(text: str | None, name: str, *, exit_code: int | None = None, stderr: str = "") -> tuple[bool, str, str]:
    """(parsed, value or "", error) for a REG_SZ Defender policy value (absent -> "")."""
    r = parse_reg_query(text, name, exit_code=exit_code, stderr=stderr)
    if not r.parsed:
        return False, "", r.error
    if not r.present:
        return True, "", ""
    if not isinstance(r.value, str):
        return False, "", f"{name} is {r.reg_type}, expected REG_SZ"
    return True, r.value.strip(), ""


def parse_advproxy(text: str | None) -> ProxySettings:
    """``netsh winhttp show advproxy`` -> its JSON settings."""
    if not isinstance(text, str) or not text.strip():
        return ProxySettings(parsed=False, error="empty output")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return ProxySettings(parsed=False, error=f"no JSON settings in netsh output: {first[:120]!r}")
    try:
        data = json.loads(text[start:end + 1])
    except ValueError as exc:
        return ProxySettings(parsed=False, error=f"advproxy settings are not valid JSON: {exc}")
    if not isinstance(data, dict):
        return ProxySettings(parsed=False, error="advproxy settings are not a JSON object")
    values = {str(k).lower(): v for k, v in data.items()}

    def text_of(key: str) -> str:
        v = values.get(key)
        return v.strip() if isinstance(v, str) else ""

    enabled = values.get("proxyisenabled", True) is not False
    return ProxySettings(
        parsed=True,
        proxy=text_of("proxy") if enabled else "",
        bypass=text_of("proxybypass"),
        pac_url=text_of("autoconfigurl") if values.get("autoconfigisenabled", True) is not False else "",
        autodetect=values.get("autodetect") is True,
    )


def parse_internet_settings(text: str | None, connections: str | None = None, *,
                            exit_code: int | None = None) -> ProxySettings:
    """SYSTEM's Internet settings from ``reg query <key>`` (all values) and, if given, the
    ``Connections`` key's ``DefaultConnectionSettings`` (auto-detect)."""
    if not isinstance(text, str) or not text.strip():
        if exit_code == 1:  # the key does not exist: nothing configured
            return ProxySettings(parsed=True, autodetect=_autodetect(connections))
        return ProxySettings(parsed=False, error=f"empty output (exit code {exit_code})")
    values: dict[str, tuple[str, str]] = {}
    for line in text.replace("\r", "\n").split("\n"):
        if (m := _VALUE.match(line)) is not None:
            values[m.group("name").lower()] = (m.group("type"), m.group("data") or "")
    if not values and "HKEY_" not in text.upper():
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return ProxySettings(parsed=False, error=f"unrecognised reg output: {first[:120]!r}")
    enable = values.get("proxyenable", ("REG_DWORD", "0x0"))[1]
    try:
        enabled = int(enable, 0) != 0
    except ValueError:
        enabled = False
    return ProxySettings(
        parsed=True,
        proxy=values.get("proxyserver", ("", ""))[1].strip() if enabled else "",
        bypass=values.get("proxyoverride", ("", ""))[1].strip() if enabled else "",
        pac_url=values.get("autoconfigurl", ("", ""))[1].strip(),
        autodetect=_autodetect(connections),
    )


def _autodetect(connections: str | None) -> bool:
    """Bit 0x08 of byte 8 of DefaultConnectionSettings (REG_BINARY, hex as reg prints it)."""
    if not isinstance(connections, str):
        return False
    for line in connections.replace("\r", "\n").split("\n"):
        m = _VALUE.match(line)
        if m and m.group("name").lower() == "defaultconnectionsettings" and m.group("type") == "REG_BINARY":
            data = re.sub(r"[^0-9A-Fa-f]", "", m.group("data") or "")
            if len(data) >= 18:
                return bool(int(data[16:18], 16) & AUTODETECT_FLAG)
    return False


def defender_settings(proxy_server: str | None, pac_url: str, bypass: str) -> ProxySettings:
    return ProxySettings(parsed=True, proxy=proxy_server or "", bypass=bypass, pac_url=pac_url)


def _host_port(proxy: str) -> str:
    """'http://proxy:8080' or 'proxy:8080' -> 'proxy:8080' (per-scheme lists kept as written)."""
    text = proxy.strip()
    if "=" in text or ";" in text:
        return text
    text = re.sub(r"^[a-z]+://", "", text, flags=re.I).rstrip("/")
    text = text.rpartition("@")[2]
    return text if ":" in text else f"{text}:80"


__all__ = ["DEFENDER_KEY", "SYSTEM_CONNECTIONS", "SYSTEM_INTERNET_SETTINGS", "ProxySettings",
           "defender_settings", "parse_advproxy", "parse_internet_settings", "parse_policy_string"]
