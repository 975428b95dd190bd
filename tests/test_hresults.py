"""One hresult table for the emulation, `check` and the host-side parsers (causes.HRESULTS).

Table-driven: for every reason an emulated verdict can carry, in every situation that
chooses its cause, the line `check` prints for it, parsed by the host-side MpCmdRun parser
with what the exporter knows at that moment (emulated_evidence of a store holding that
verdict), gives the emulation's cause. And Microsoft's documented MpCmdRun lines get their
documented causes when nothing else is known.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from support import lab_config

from exporter.assess import Assessor, ChainRevocation
from exporter.causes import (
    HRESULTS,
    VERDICT_TABLE,
    Cause,
    Evidence,
    Finding,
    cause_for,
    mpcmdrun_line,
)
from exporter.check import mpcmdrun_line as check_line
from exporter.config import load_config
from exporter.crl import RevocationStatus
from exporter.hostside import collect_host, emulated_evidence
from exporter.hostside.mpcmdrun import parse_validate_maps
from exporter.probes import CertFacts, ProbeResult, TLSFacts
from exporter.reasons import Reason
from exporter.assess import Outcome
from exporter.state import ResultStore

MAPS = "https://wdcp.microsoft.com/"


def _cert(subject: str) -> CertFacts:
    return CertFacts(b"", subject, subject, "01", "00" * 32, 0.0, 2e9)


def _probe(reason: Reason | None) -> ProbeResult:
    tls = TLSFacts("TLSv1.3", "x", (_cert("CN=leaf"), _cert("CN=Some Root")), ())
    return ProbeResult(reason is None, reason, time.time(), 0.01, (), detail="lab", tls=tls)


@pytest.fixture(scope="module")
def assessor_and_job(tmp_path_factory):
    path = lab_config(tmp_path_factory.mktemp("hr"), {"maps": [MAPS]},
                      routes={"defender": "http://proxy.lab:3128", "system": None})
    config = load_config(path)
    job = next(j for j in config.jobs() if j.target.url == MAPS)
    return Assessor(config), job


# finding -> (status, source) of the revocation check that produces it
_REVOCATION_FINDING = {
    Finding.CRL_UNREACHABLE: ("unreachable", "crl"),
    Finding.CERT_REVOKED: ("revoked", "crl"),
    Finding.CRL_INVALID: ("invalid", "crl"),
    Finding.CRL_STALE: ("stale", "crl"),
    Finding.OCSP_UNREACHABLE: ("unreachable", "ocsp"),
    Finding.OCSP_INVALID: ("invalid", "ocsp"),
    Finding.OCSP_STALE: ("stale", "ocsp"),
    Finding.REVOCATION_INFO_MISSING: ("no_info", "none"),
}


def _situations():
    """(reason, intercepted, revocation http status) for every row and every cause it can take."""
    for reason in VERDICT_TABLE:
        yield reason, False, 0
        if reason in (Reason.TLS_UNTRUSTED, Reason.TLS_HOSTNAME_MISMATCH):
            yield reason, True, 0
        if reason in (Finding.CRL_UNREACHABLE, Finding.OCSP_UNREACHABLE):
            yield reason, False, 407


def _emulate(assessor, job, reason, intercepted, http_status):
    if reason in _REVOCATION_FINDING:
        status, source = _REVOCATION_FINDING[reason]
        status = RevocationStatus(status, "http://crl.lab/x.crl", "lab", http_status, source=source)
        return assessor.maps_verdict(job, _probe(None), ChainRevocation((("CN=leaf", status),)), intercepted)
    if reason == Finding.TLS_INTERCEPTED:
        return assessor.maps_verdict(job, _probe(None), None, True)
    if reason == Finding.AIA_UNREACHABLE:
        probe = _probe(Reason.TLS_UNTRUSTED)
        probe = dataclasses.replace(probe, tls=dataclasses.replace(probe.tls, aia_error="http://x: connect_refused"))
        return assessor.maps_verdict(job, probe, None, None)
    return assessor.maps_verdict(job, _probe(Reason(reason)), None, intercepted)


@pytest.mark.parametrize("reason, intercepted, http_status", list(_situations()))
def test_host_parser_gives_the_emulations_cause(assessor_and_job, reason, intercepted, http_status):
    assessor, job = assessor_and_job
    verdict = _emulate(assessor, job, reason, intercepted, http_status)
    assert not verdict.valid and verdict.reason == reason
    assert verdict.hresult in HRESULTS, verdict
    assert Cause(verdict.cause) in HRESULTS[verdict.hresult].causes, verdict

    store = ResultStore()
    store.latest[job.key] = Outcome(_probe(None), intercepted=intercepted or reason == Finding.TLS_INTERCEPTED,
                                    maps=verdict)
    parsed = parse_validate_maps(check_line(verdict) + "\r\n", 1, evidence=emulated_evidence(store))
    assert (parsed.hresult, parsed.cause) == (verdict.hresult, verdict.cause)


def test_emulated_hresults_are_what_winhttp_reports():
    """Revocation and pinning failures surface from WinHTTP as ERROR_WINHTTP_SECURE_FAILURE."""
    for finding in Finding:
        assert VERDICT_TABLE[finding].hresult == "0x80072F8F", finding


@pytest.mark.parametrize("line, cause", [
    # Microsoft's MpCmdRun page, "Common errors"
    ("ValidateMapsConnection failed (800106BA)", Cause.DEFENDER_SERVICE_DISABLED),
    ("MpCmdRun.exe: hr = 0x80070667", Cause.WINDOWS_TOO_OLD),
    ("ValidateMapsConnection failed to establish a connection to MAPS (hr=80070005 httpcode=450)",
     Cause.NOT_ELEVATED),
    ("ValidateMapsConnection failed to establish a connection to MAPS (hr=80004005 httpcode=450)",
     Cause.DNS_FAILURE),
    ("ValidateMapsConnection failed to establish a connection to MAPS (hr=0x80508015", Cause.FIREWALL_BLOCKED),
    ("ValidateMapsConnection failed to establish a connection to MAPS (hr=80072F0D", Cause.TLS_INSPECTION),
    ("ValidateMapsConnection failed to establish a connection to MAPS (hr=80072EE7 httpcode=451)",
     Cause.DNS_FAILURE),
    # the article
    ("ValidateMapsConnection failed to establish a connection to MAPS (hr=0x80070006 httpcore=451)",
     Cause.WINHTTP_PROXY_MISSING),
])
def test_documented_mpcmdrun_lines(line, cause):
    v = parse_validate_maps(line + "\r\n", 1)
    assert v.parsed and not v.valid and v.cause == cause, v
    assert HRESULTS[v.hresult].documented


def test_evidence_refines_the_documented_default():
    assert cause_for("0x80072F8F") == Cause.WINHTTP_PROXY_MISSING
    assert cause_for("0x80072F8F", Evidence(winhttp_proxy=True)) == Cause.CRL_BLOCKED  # netsh shows one
    assert cause_for("0x80072F8F", Evidence(intercepted=True)) == Cause.TLS_INSPECTION
    assert cause_for("0x80070006", Evidence(intercepted=True)) == Cause.TLS_INSPECTION
    assert cause_for("0x80072F0D", Evidence(situation=Cause.CERTIFICATE_INVALID)) == Cause.CERTIFICATE_INVALID
    # A finding the hresult cannot mean is not borrowed: DNS stays DNS.
    assert cause_for("0x80072EE7", Evidence(situation=Cause.CERT_REVOKED, intercepted=True)) == Cause.DNS_FAILURE
    assert cause_for("0x80070020") is None


def test_check_prints_httpcore_only_where_microsoft_shows_one():
    assert mpcmdrun_line("0x80072F8F").endswith("(hr=0x80072F8F httpcore=451)")
    assert mpcmdrun_line("0x80072EE7").endswith("(hr=0x80072EE7 httpcode=451)")
    assert mpcmdrun_line("0x80072F0D").endswith("(hr=0x80072F0D)")  # no source shows one
    assert mpcmdrun_line("0x80190197").endswith("(hr=0x80190197)")


def test_collect_host_uses_netsh_and_the_emulation(tmp_path, monkeypatch):
    """Real subprocesses (the stand-ins): the same printed hresult, three situations."""
    import sys
    from pathlib import Path

    from exporter.config import HostConfig

    if sys.platform == "win32":
        pytest.skip("stand-ins are POSIX scripts")
    standins = Path(__file__).parent / "standins"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("netsh", "reg", "powershell", "MpCmdRun.exe"):
        (bindir / name).symlink_to(standins / name)
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bindir))
    cfg = HostConfig(enabled=True, mode="windows", timeout=20, mpcmdrun=str(standins / "MpCmdRun.exe"))

    monkeypatch.setenv("STANDIN_SCENARIO", "winhttp_missing")
    assert asyncio.run(collect_host(cfg)).maps.cause == "winhttp_proxy_missing"
    # netsh shows a WinHTTP proxy: it is not missing, the CRLs are blocked through it
    monkeypatch.setenv("STANDIN_SCENARIO_NETSH", "healthy")
    assert asyncio.run(collect_host(cfg)).maps.cause == "crl_blocked"
    # the emulation saw an intercepted MAPS chain at that moment
    assert asyncio.run(collect_host(cfg, evidence=Evidence(intercepted=True))).maps.cause == "tls_inspection"
