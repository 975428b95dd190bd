"""Host side of routes: the proxy settings an endpoint really has, and the mismatch with the config.

Parsers on the documented output formats; the wiring through the real exporter with the stand-ins
of tests/standins (scenario pac_system: `netsh winhttp show proxy` says direct, but SYSTEM and
Defender get a PAC file).
"""

from __future__ import annotations

from exporter.config import parse_config
from exporter.hostside.collector import HostSnapshot, host_samples
from exporter.hostside.proxysettings import parse_advproxy, parse_internet_settings, parse_policy_string
from exporter.hostside.winhttp import parse_winhttp_proxy
from exporter.routes import host_route_checks
from support import host_config, scrape_until

from support import ExporterThread

ADVPROXY = """
Current WinHTTP advanced proxy settings:

{
        "ProxyIsEnabled":       true,
        "Proxy":        "proxy.contoso.com:8080",
        "ProxyBypass":  "*.contoso.com;<local>",
        "AutoconfigIsEnabled":  false,
        "AutoconfigUrl":        "",
        "AutoDetect":   false
}
"""


def test_advproxy_json_is_read_case_insensitively():
    s = parse_advproxy(ADVPROXY)
    assert s.parsed and s.proxy == "proxy.contoso.com:8080" and s.bypass == "*.contoso.com;<local>"
    assert s.describe() == "proxy proxy.contoso.com:8080"
    s = parse_advproxy('{"autoconfigurl": "https://pac.contoso.com/x.pac", "autodetect": true}')
    assert s.pac_url == "https://pac.contoso.com/x.pac" and s.autodetect and s.describe().startswith("pac ")
    for bad in ("", "The following command was not found: winhttp show advproxy.", "{not json}", "[1]"):
        assert not parse_advproxy(bad).parsed


def test_system_internet_settings_and_autodetect():
    text = ("\r\nHKEY_USERS\\S-1-5-18\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\r\n"
            "    ProxyEnable    REG_DWORD    0x1\r\n    ProxyServer    REG_SZ    10.0.0.1:3128\r\n"
            "    ProxyOverride    REG_SZ    <local>\r\n")
    connections = ("HKEY_USERS\\S-1-5-18\\...\\Connections\r\n"
                   "    DefaultConnectionSettings    REG_BINARY    46000000020000000B000000\r\n")
    s = parse_internet_settings(text, connections)
    assert s.parsed and s.proxy == "10.0.0.1:3128" and s.bypass == "<local>" and s.autodetect
    assert s.describe() == "proxy 10.0.0.1:3128"
    off = parse_internet_settings(text.replace("0x1", "0x0"), connections.replace("0B000000", "01000000"))
    assert off.proxy == "" and not off.autodetect and off.describe() == "direct"
    assert parse_internet_settings("", None, exit_code=1).parsed  # no such key: nothing set
    assert not parse_internet_settings("garbage", None).parsed


def test_policy_strings():
    out = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows Defender\r\n    ProxyPacUrl    REG_SZ    http://wpad/x.pac\r\n"
    assert parse_policy_string(out, "ProxyPacUrl") == (True, "http://wpad/x.pac", "")
    absent = "ERROR: The system was unable to find the specified registry key or value."
    assert parse_policy_string("", "ProxyBypass", exit_code=1, stderr=absent) == (True, "", "")


def test_route_checks_compare_config_with_the_host():
    config = parse_config("routes:\n  defender: {pac: 'http://wpad.contoso.com/proxy.pac'}\n"
                          "  system: {}\n")
    snapshot = HostSnapshot(
        mode="windows", taken_at=0,
        winhttp=parse_winhttp_proxy("Current WinHTTP proxy settings:\n\n    Direct access (no proxy server).\n"),
        defender_proxy=parse_advproxy('{"AutoconfigUrl": "http://wpad.contoso.com/proxy.pac"}'),
        system_internet=parse_internet_settings("HKEY_USERS\\S-1-5-18\n    AutoConfigURL    REG_SZ    http://wpad/x.pac\n"),
    )
    checks = host_route_checks(snapshot, config.routes)
    assert checks == (("defender", "pac http://wpad.contoso.com/proxy.pac", "pac http://wpad.contoso.com/proxy.pac"),
                      ("system", "direct", "pac http://wpad/x.pac"))
    samples = host_samples(HostSnapshot(**{**snapshot.__dict__, "route_checks": checks}))
    mismatch = {values[0]: value for spec, values, value in samples if spec.name == "defender_host_route_mismatch"}
    assert mismatch == {"defender": 0.0, "system": 1.0}


def test_host_mode_reports_settings_and_the_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO", "pac_system")
    path = host_config(tmp_path)
    text = path.read_text() + "routes:\n  defender:\n    pac: http://wpad.contoso.com/proxy.pac\n"
    path.write_text(text)
    with ExporterThread(path) as exporter:
        samples = scrape_until(exporter, "defender_host_route_mismatch")
    settings = {s.labels["source"]: s.labels for s in samples if s.name == "defender_host_proxy_settings_info"}
    assert settings["defender_policy"]["pac_url"] == "http://wpad.contoso.com/proxy.pac"
    assert settings["defender_policy"]["bypass"] == "<local>;*.contoso.com"
    assert settings["winhttp"]["proxy"] == ""
    assert settings["winhttp_advproxy"]["pac_url"] == "http://wpad.contoso.com/proxy.pac"
    assert settings["system_internet_settings"]["autodetect"] == "1"
    mismatch = {s.labels["route"]: (s.labels["expected"], s.labels["found"], s.value)
                for s in samples if s.name == "defender_host_route_mismatch"}
    assert mismatch["defender"] == ("pac http://wpad.contoso.com/proxy.pac", "pac http://wpad.contoso.com/proxy.pac", 0.0)
    # `netsh winhttp show proxy` says direct, the config says direct, but SYSTEM gets a PAC: flagged.
    assert mismatch["system"] == ("direct", "pac http://wpad.contoso.com/proxy.pac", 1.0)
