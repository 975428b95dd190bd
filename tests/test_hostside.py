"""Host-side collectors: parsers on the article's outputs, the runner, collect_host end to end."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from exporter.causes import ARTICLE_HRESULTS, Cause
from exporter.config import ConfigError, HostConfig, parse_config
from exporter.hostside import HostSnapshot, collect_host, host_samples
from exporter.hostside.collector import HostMaps, MDATP_TARGET, MPCMDRUN_TARGET
from exporter.hostside.mdatp import parse_connectivity_test
from exporter.hostside.mpcmdrun import cause_for_hresult, format_hresult, parse_validate_maps
from exporter.hostside.registry import parse_proxy_server, parse_reg_query, parse_ssl_options
from exporter.hostside.runner import decode_output, run_command
from exporter.hostside.signatures import parse_signature_age
from exporter.hostside.winhttp import parse_winhttp_proxy

STANDINS = Path(__file__).parent / "standins"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="stand-ins are POSIX scripts")


def article_failure(hr: str) -> str:
    return (
        "Start Time: Mon Jun 03 2024 10:15:42\n"
        "MpEnsureProcessMitigationPolicy: hr = 0x1\n"
        "ValidateMapsConnection\n"
        f"ValidateMapsConnection failed to establish a connection to MAPS (hr={hr} httpcore=451)\n"
        f"MpCmdRun.exe: hr = {hr}\n"
    )


# --- MpCmdRun ---------------------------------------------------------------
@pytest.mark.parametrize("hr", ARTICLE_HRESULTS)
def test_mpcmdrun_article_outputs(hr):
    v = parse_validate_maps(article_failure(hr), 1)
    assert v.parsed and not v.valid
    assert v.hresult == hr.upper().replace("0X", "0x")
    assert v.httpcore == 451
    assert v.cause == Cause.WINHTTP_PROXY_MISSING == "winhttp_proxy_missing"
    assert v.source_of_hresult == "line" and v.error == ""


def test_mpcmdrun_success():
    v = parse_validate_maps("ValidateMapsConnection\r\nValidateMapsConnection successfully established "
                            "a connection to MAPS\r\n", 0)
    assert v.parsed and v.valid and v.hresult == "" and v.cause == ""


@pytest.mark.parametrize("text", [
    "ValidateMapsConnection failed to establish a connection to MAPS (hr=0x80072F8F httpcode=451)",
    "ValidateMapsConnection failed to establish a connection to MAPS (hr=80072f8f httpcore=451)",
    "ValidateMapsConnection failed to establish a connection to MAPS (hr=0x80072f8f httpcore=451).",
    "ValidateMapsConnection failed to establish a connection to MAPS (hr = 0x80072F8F httpcore = 0x1C3)",
    article_failure("0x80072F8F").replace("\n", "\r\n"),
    # the Swedish rendering of the article, with its stray markup
    "ValidateMapsConnection kunde inte upprätta en anslutning till MAPS (hr=0x80072F8F httpcore=451)\n"
    "MpCmdRun.exe: hr = 0x80072F8F**",
])
def test_mpcmdrun_variants(text):
    v = parse_validate_maps(text, 1)
    assert (v.parsed, v.valid, v.hresult, v.httpcore) == (True, False, "0x80072F8F", 451)
    assert v.cause == "winhttp_proxy_missing"


def test_mpcmdrun_mitigation_line_is_not_the_result():
    v = parse_validate_maps("MpEnsureProcessMitigationPolicy: hr = 0x1\nMpCmdRun.exe: hr = 0x80070006\n", 1)
    assert v.parsed and not v.valid and v.hresult == "0x80070006" and v.source_of_hresult == "tool_line"
    assert v.httpcore is None


@pytest.mark.parametrize("code", [2147942406, -2147024890])
def test_mpcmdrun_exit_code_fallback(code):
    v = parse_validate_maps("Start Time: Mon Jun 03 2024 10:15:42\r\n", code)
    assert v.parsed and not v.valid and v.hresult == "0x80070006"
    assert v.source_of_hresult == "exit_code" and v.cause == "winhttp_proxy_missing"


def test_mpcmdrun_printed_hresult_wins_over_exit_code():
    v = parse_validate_maps(article_failure("0x80072EFE"), 1)
    assert v.hresult == "0x80072EFE"
    v = parse_validate_maps(article_failure("0x80072EFE"), -2147024890)
    assert v.hresult == "0x80072EFE"


def test_mpcmdrun_other_hresults_causes():
    assert cause_for_hresult("0x80072EE7") == "dns_failure"  # the MpCmdRun page lists it
    assert cause_for_hresult("0x80072f0d") == "tls_inspection"  # "firewall ... or conducting SSL inspection"
    assert cause_for_hresult("0x80070020") == ""  # unknown: empty, the cause set is closed
    v = parse_validate_maps("ValidateMapsConnection failed to establish a connection to MAPS "
                            "(hr=0x80070020 httpcore=0)", None)
    assert v.parsed and not v.valid and v.hresult == "0x80070020" and v.cause == ""
    assert format_hresult(-1) == "0xFFFFFFFF" and format_hresult(6) == "0x00000006"


@pytest.mark.parametrize("text,code", [("", 0), ("", None), (None, None), ("\x00\xff garbage\n", 0),
                                       ("Start Time: x\r\nMpEnsureProcessMitigationPolicy: hr = 0x1", 1),
                                       (12345, 0)])
def test_mpcmdrun_malformed(text, code):
    v = parse_validate_maps(text, code)
    assert not v.parsed and not v.valid and v.error


def test_mpcmdrun_failed_without_hresult():
    v = parse_validate_maps("ValidateMapsConnection failed to establish a connection to MAPS", 1)
    assert v.parsed and not v.valid and v.hresult == "" and "without an hresult" in v.error


# --- netsh ------------------------------------------------------------------
def test_winhttp_direct():
    w = parse_winhttp_proxy("\r\nCurrent WinHTTP proxy settings:\r\n\r\n    Direct access (no proxy server).\r\n\r\n")
    assert w.parsed and not w.configured and w.proxy is None and w.bypass == ()


def test_winhttp_proxy():
    w = parse_winhttp_proxy("Current WinHTTP proxy settings:\n\n"
                            "    Proxy Server(s) :  proxy.contoso.com:8080\n"
                            "    Bypass List     :  *.contoso.com;<local>\n")
    assert w.parsed and w.configured and w.proxy == "proxy.contoso.com:8080"
    assert w.bypass == ("*.contoso.com", "<local>")
    w = parse_winhttp_proxy("    Proxy Server(s) :  http=p:80;https=p:443\n    Bypass List     :  (none)\n")
    assert w.configured and w.proxy == "http=p:80;https=p:443" and w.bypass == ()


@pytest.mark.parametrize("text", ["", None, "garbage", "Proxy Server(s) :   \n"])
def test_winhttp_malformed(text):
    w = parse_winhttp_proxy(text)
    assert not w.parsed and not w.configured and w.error


# --- reg --------------------------------------------------------------------
def test_reg_ssl_options_present_and_absent():
    out = ("\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows Defender\\Spynet\r\n"
           "    SSLOptions    REG_DWORD    0x3\r\n\r\n")
    r = parse_ssl_options(out, exit_code=0)
    assert r.parsed and r.present and r.value == 3 and r.reg_type == "REG_DWORD"
    r = parse_ssl_options(out.replace("0x3", "0x0"), exit_code=0)
    assert r.value == 0 and r.present
    err = "ERROR: The system was unable to find the specified registry key or value.\r\n"
    r = parse_ssl_options("", exit_code=1, stderr=err)
    assert r.parsed and not r.present and r.value == 3
    assert parse_ssl_options("", exit_code=1).value == 3


def test_reg_proxy_server():
    out = ("HKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Microsoft\\Windows Defender\n"
           "    ProxyServer    REG_SZ    http://proxy.contoso.com:8080\n")
    r = parse_proxy_server(out, exit_code=0)
    assert r.parsed and r.present and r.value == "http://proxy.contoso.com:8080"
    r = parse_proxy_server("", exit_code=1, stderr="ERROR: The system was unable to find the specified "
                                                   "registry key or value.")
    assert r.parsed and not r.present and r.value is None


@pytest.mark.parametrize("text,code", [("", 0), (None, None), ("garbage", 0),
                                       ("    SSLOptions    REG_DWORD    0xZZ", 0),
                                       ("    SSLOptions    REG_SZ    three", 0)])
def test_reg_malformed(text, code):
    r = parse_ssl_options(text, exit_code=code)
    assert not r.parsed and r.error


def test_reg_generic():
    r = parse_reg_query("    (Default)    REG_SZ    \n    Other Name    REG_QWORD    0x10\n", "other name")
    assert r.parsed and r.value == 16


# --- Get-MpComputerStatus ---------------------------------------------------
@pytest.mark.parametrize("text,days", [("2\r\n", 2), ("0", 0), ("65535\n", 65535),
                                       ("AMEngineVersion : 1.1\r\nAntivirusSignatureAge            : 9\r\n"
                                        "AntivirusSignatureLastUpdated : 6/3/2024\r\n", 9)])
def test_signature_age(text, days):
    a = parse_signature_age(text)
    assert a.parsed and a.days == days


@pytest.mark.parametrize("text", ["", None, "-1", "two", "AntivirusSignatureAge : ", "1\n2\n",
                                  "Get-MpComputerStatus : The term 'Get-MpComputerStatus' is not recognized"])
def test_signature_age_malformed(text):
    a = parse_signature_age(text)
    assert not a.parsed and a.days is None and a.error


# --- mdatp ------------------------------------------------------------------
def test_mdatp_ok_and_error():
    ok = ("Testing connection with https://cdn.x.cp.wd.microsoft.com/ping ... [OK]\n"
          "Testing connection with https://eu-cdn.x.cp.wd.microsoft.com/ping ... [OK]\n")
    c = parse_connectivity_test(ok, 0)
    assert c.parsed and c.valid and len(c.checks) == 2 and c.failed == ()
    c = parse_connectivity_test(ok + "Testing connection with https://x.cp.wd.microsoft.com/api/report ... "
                                "[ERROR]\r\nSome checks failed\n", 1)
    assert c.parsed and not c.valid and c.failed == ("https://x.cp.wd.microsoft.com/api/report",)
    assert c.checks[-1].status == "ERROR"


@pytest.mark.parametrize("text", ["", None, "ERROR: Not onboarded", "Testing connection with"])
def test_mdatp_malformed(text):
    c = parse_connectivity_test(text, 1)
    assert not c.parsed and not c.valid and c.error


# --- runner -----------------------------------------------------------------
def test_runner_basic_and_missing():
    r = asyncio.run(run_command([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], timeout=30))
    assert r.ran and r.exit_code == 3 and r.stdout.strip() == "hi"
    r = asyncio.run(run_command(["/nonexistent/definitely-not-here"], timeout=5))
    assert not r.ran and r.error == "not found: /nonexistent/definitely-not-here"


def test_runner_timeout_and_cap():
    t0 = time.monotonic()
    r = asyncio.run(run_command([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5))
    assert r.error == "timed out after 0.5s" and time.monotonic() - t0 < 10
    r = asyncio.run(run_command([sys.executable, "-c", "import sys; sys.stdout.write('x' * 3_000_000)"],
                                timeout=30, max_output=1000))
    assert r.ran and r.truncated and len(r.stdout) == 1000 and r.exit_code == 0


def test_runner_does_not_block_loop():
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        t = asyncio.create_task(ticker())
        await run_command([sys.executable, "-c", "import time; time.sleep(0.6)"], timeout=10)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 5


def test_decode_output():
    assert decode_output("hé\r\n".encode("utf-16")) == "hé\r\n"
    assert decode_output("2\r\n".encode("utf-16-le")) == "2\r\n"
    assert decode_output(b"\xef\xbb\xbfok\xff") == "ok\ufffd"


# --- config -----------------------------------------------------------------
def test_host_config_defaults_and_validation():
    c = HostConfig()
    assert (c.enabled, c.interval, c.timeout, c.mode) == (False, 600.0, 120.0, "auto")
    assert c.mpcmdrun == r"C:\Program Files\Windows Defender\MpCmdRun.exe"
    assert c.effective_mode("win32") == "windows" and c.effective_mode("linux") == "mdatp"
    # The `host:` section is validated with the rest of the config file (key paths in errors).
    assert parse_config("host: {enabled: true, mode: mdatp}\n").host == HostConfig(enabled=True, mode="mdatp")
    assert parse_config("interval: 60s\n").host == HostConfig()
    for text, message in (("host: {intervall: 5s}", r"host\.intervall: unknown key"),
                          ("host: {mode: macos}", r"host\.mode: expected one of windows, mdatp, auto"),
                          ("host: {timeout: 0s}", r"host\.timeout: expected a duration above zero"),
                          ("host: {enabled: 'yes'}", r"host\.enabled: expected true or false"),
                          ("host: {netsh: ''}", r"host\.netsh: expected a non-empty string")):
        with pytest.raises(ConfigError, match=message):
            parse_config(text + "\n")


# --- collect_host end to end ------------------------------------------------
@pytest.fixture
def standin_path(monkeypatch, tmp_path):
    """A PATH holding only the stand-ins (plus python3 for their #! line)."""
    if sys.platform == "win32":
        pytest.skip("stand-ins are POSIX scripts")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("netsh", "reg", "powershell", "mdatp", "MpCmdRun.exe"):
        (bindir / name).symlink_to(STANDINS / name)
    py = bindir / "python3"
    py.symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.path.dirname(sys.executable)}")
    for k in list(os.environ):
        if k.startswith("STANDIN_"):
            monkeypatch.delenv(k)
    return bindir


def windows_cfg(**kw) -> HostConfig:
    base = dict(enabled=True, mode="windows", timeout=20, mpcmdrun=str(STANDINS / "MpCmdRun.exe"))
    base.update(kw)
    return HostConfig(**base)


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def registry_of(snapshot: HostSnapshot) -> CollectorRegistry:
    """The snapshot's samples as families (only those with samples)."""
    families: dict[str, GaugeMetricFamily] = {}
    for spec, values, value in host_samples(snapshot):
        family = families.setdefault(spec.name, GaugeMetricFamily(spec.name, spec.help, labels=spec.labels))
        family.add_metric(list(values), value)
    reg = CollectorRegistry()
    reg.register(_Fixed(list(families.values())))
    return reg


MP = {"group": "maps", "target": MPCMDRUN_TARGET, "route": "defender", "source": "mpcmdrun"}


@pytest.mark.parametrize("hr", ARTICLE_HRESULTS)
def test_collect_windows_winhttp_missing(standin_path, monkeypatch, hr):
    monkeypatch.setenv("STANDIN_SCENARIO", "winhttp_missing")
    monkeypatch.setenv("STANDIN_HRESULT", hr)
    snap = asyncio.run(collect_host(windows_cfg()))
    assert snap.errors == ()
    assert snap.mode == "windows" and abs(snap.taken_at - time.time()) < 60
    assert snap.maps == HostMaps(source="mpcmdrun", target=MPCMDRUN_TARGET, valid=False, hresult=hr,
                                 cause="winhttp_proxy_missing", reason="mpcmdrun_failed", httpcore=451)
    assert snap.winhttp.parsed and not snap.winhttp.configured
    assert (snap.ssl_options, snap.ssl_options_set, snap.proxy_server, snap.signature_age_days) == (3, False, None, 2)

    reg = registry_of(snap)
    assert reg.get_sample_value("defender_maps_connection_valid", MP) == 0.0
    info = dict(MP, hresult=hr, cause="winhttp_proxy_missing", reason="mpcmdrun_failed")
    assert reg.get_sample_value("defender_maps_validation_info", info) == 1.0
    assert reg.get_sample_value("defender_host_winhttp_proxy_configured") == 0.0
    assert reg.get_sample_value("defender_host_ssl_options") == 3.0
    assert reg.get_sample_value("defender_host_signature_age_days") == 2.0


def test_collect_windows_healthy_via_path(standin_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO", "healthy")
    snap = asyncio.run(collect_host(windows_cfg(mpcmdrun="MpCmdRun.exe")))  # looked up on PATH
    assert snap.errors == ()
    assert snap.maps.valid and snap.maps.hresult == "" and snap.maps.reason == ""
    assert snap.winhttp.configured and snap.winhttp.proxy == "proxy.contoso.com:8080"
    assert snap.signature_age_days == 0
    reg = registry_of(snap)
    assert reg.get_sample_value("defender_maps_connection_valid", MP) == 1.0
    names = {m.name for m in reg.collect()}
    assert "defender_maps_validation_info" not in names
    assert reg.get_sample_value("defender_host_winhttp_proxy_configured") == 1.0


def test_collect_windows_ssl_workaround(standin_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO", "ssl_workaround")
    snap = asyncio.run(collect_host(windows_cfg()))
    assert snap.errors == ()
    assert (snap.ssl_options, snap.ssl_options_set) == (2, True)
    assert snap.proxy_server == "http://proxy.contoso.com:8080"
    assert snap.signature_age_days == 9
    assert registry_of(snap).get_sample_value("defender_host_ssl_options") == 2.0


def test_collect_windows_hang_and_missing(standin_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO_MPCMDRUN", "hang")
    cfg = windows_cfg(timeout=1.5, powershell=str(standin_path / "no-such-powershell"))
    t0 = time.monotonic()
    snap = asyncio.run(collect_host(cfg))
    assert time.monotonic() - t0 < 15
    assert "mpcmdrun: timed out after 1.5s" in snap.errors
    assert f"powershell: not found: {standin_path / 'no-such-powershell'}" in snap.errors
    assert len(snap.errors) == 2
    assert snap.maps is None and snap.signature_age_days is None
    assert snap.winhttp is not None and snap.ssl_options == 3
    reg = registry_of(snap)
    assert reg.get_sample_value("defender_maps_connection_valid", MP) is None
    assert reg.get_sample_value("defender_host_signature_age_days") is None
    assert reg.get_sample_value("defender_host_winhttp_proxy_configured") == 0.0


def test_collect_windows_garbage(standin_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO", "garbage")
    snap = asyncio.run(collect_host(windows_cfg()))
    assert {e.split(":")[0] for e in snap.errors} == {"mpcmdrun", "netsh", "reg SSLOptions",
                                                      "reg ProxyServer", "powershell", "reg ProxyPacUrl",
                                                      "reg ProxyBypass", "netsh advproxy",
                                                      "reg SYSTEM Internet Settings"}
    assert host_samples(snap) == []


def test_collect_mdatp(standin_path, monkeypatch):
    cfg = HostConfig(enabled=True, mode="mdatp", timeout=20)  # "mdatp" found on the tmp PATH
    snap = asyncio.run(collect_host(cfg))
    assert snap.errors == () and snap.mode == "mdatp"
    assert snap.maps.source == "mdatp" and not snap.maps.valid
    assert snap.maps.failed_urls == ("https://x.cp.wd.microsoft.com/api/report",)
    labels = {"group": "maps", "target": MDATP_TARGET, "route": "defender", "source": "mdatp"}
    reg = registry_of(snap)
    assert reg.get_sample_value("defender_maps_connection_valid", labels) == 0.0
    assert reg.get_sample_value("defender_maps_validation_info",
                                dict(labels, hresult="", cause="", reason="mdatp_failed")) == 1.0
    assert reg.get_sample_value("defender_host_ssl_options") is None

    monkeypatch.setenv("STANDIN_SCENARIO", "healthy")
    snap = asyncio.run(collect_host(cfg))
    assert snap.maps.valid
    assert registry_of(snap).get_sample_value("defender_maps_connection_valid", labels) == 1.0


def test_collect_mdatp_missing_and_hang(standin_path, monkeypatch):
    snap = asyncio.run(collect_host(HostConfig(mode="mdatp", mdatp="/nonexistent/mdatp")))
    assert snap.errors == ("mdatp: not found: /nonexistent/mdatp",) and snap.maps is None
    monkeypatch.setenv("STANDIN_SCENARIO", "hang")
    snap = asyncio.run(collect_host(HostConfig(mode="mdatp", timeout=1)))
    assert snap.errors == ("mdatp: timed out after 1s",)
    assert host_samples(snap) == [] and host_samples(None) == []


@posix_only
def test_standins_are_executable():
    for name in ("MpCmdRun.exe", "netsh", "reg", "powershell", "mdatp"):
        p = STANDINS / name
        assert os.access(p, os.X_OK), name
        assert p.read_text().startswith("#!/usr/bin/env python3\n")
