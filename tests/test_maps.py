"""The MAPS verdict in the lab: real sockets, the lab PKI, real Squid.

Topology of every scenario (names as in production, addresses on loopback):

    wdcp.microsoft.com:443   a lab TLS server (the MAPS endpoint), on the `defender` route
    crl.microsoft.com:80     Files server: the issuing CA's CRL (the leaf's CDP)
    www.microsoft.com:80     Files server: the root's CRL (the issuing CA's CDP) and the CA certs

Direct routes reach them through `connect_to`, proxied routes through Squid's hosts file.
Revocation runs on the `system` route (the WinHTTP path), the probe on `defender`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import (
    CRL_HOSTS,
    MAPS,
    MapsLab,
    scrape_samples,
    assert_invalid,
    lab_config,
    outcome_for,
    root_fingerprint,
)

from exporter.causes import (
    ARTICLE_HRESULTS,
    Cause,
    Finding,
    render_verdict_table,
)
from exporter.reasons import Reason

# Each test runs over both probe transports (conftest.probe_transport).
pytestmark = pytest.mark.usefixtures("probe_transport")
DOC = Path(__file__).parent.parent / "docs" / "maps-validation.md"


# ------------------------------------------------------------------ 1. healthy


def test_healthy_direct(tmp_path, lab_pki, lab_servers):
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.success, outcome.probe.detail
    assert outcome.maps.valid, outcome.maps
    assert (outcome.maps.reason, outcome.maps.cause, outcome.maps.hresult) == ("", "", "")
    assert outcome.revoked is False and outcome.intercepted is False
    # Both CRLs were fetched (leaf -> crl.microsoft.com, issuing CA -> www.microsoft.com).
    assert lab.crl["crl.microsoft.com"].file_requests(urlsplit(lab_pki.issuing.crl_url).path) == 1
    assert lab.crl["www.microsoft.com"].file_requests(urlsplit(lab_pki.root.crl_url).path) == 1
    assert set(outcome.crl_urls) == {lab_pki.issuing.crl_url, lab_pki.root.crl_url}


def test_healthy_with_winhttp_proxy_set(tmp_path, lab_pki, lab_servers, squid_factory):
    """Both routes through the same Squid: the CRLs go out as absolute-URI GETs through it."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts)
    outcome = lab.outcome(routes={"defender": squid.url, "system": squid.url})
    assert outcome.probe.success and outcome.maps.valid, (outcome.probe.detail, outcome.maps)
    assert any(f"GET {lab_pki.issuing.crl_url}" in line for line in squid.access_log_lines())


# ------------------------------------------------------------------ 2. the article's failure


def test_the_article_trap_winhttp_proxy_missing(tmp_path, lab_pki, lab_servers, squid_factory):
    """MAPS answers through Defender's proxy (the "HTTP 200" everyone sees), but the system
    route is direct and the CRL hosts are unreachable there: MpCmdRun fails."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts)
    outcome = lab.outcome(routes={"defender": squid.url}, connect_to=lab.refused_crls())
    assert outcome.probe.success and outcome.probe.http_status == 200, outcome.probe.detail
    assert outcome.probe.reason is None  # revocation never changes the probe
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.WINHTTP_PROXY_MISSING, hresult="0x80072F8F")
    assert outcome.maps.hresult in ARTICLE_HRESULTS
    assert Reason.CONNECT_REFUSED in outcome.maps.detail
    assert outcome.revoked is False and outcome.intercepted is False


def test_crl_blocked_by_the_same_proxy(tmp_path, lab_pki, lab_servers, squid_factory):
    """The WinHTTP proxy is set (same Squid), but its policy denies the CRL hosts."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts, deny_domains=list(CRL_HOSTS))
    outcome = lab.outcome(routes={"defender": squid.url, "system": squid.url})
    assert outcome.probe.success, outcome.probe.detail
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.CRL_BLOCKED)
    assert "403" in outcome.maps.detail


def test_crl_blocked_on_a_direct_path(tmp_path, lab_pki, lab_servers):
    """No proxies at all, MAPS reachable, port 80 to the CRL hosts refused: a firewall gap."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.refused_crls())
    assert outcome.probe.success
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.CRL_BLOCKED)


# ------------------------------------------------------------------ 3. SSLOptions


@pytest.mark.parametrize("ssl_options, valid", [(0, True), (1, False), (2, True), (3, False)])
def test_ssl_options_and_the_trap(tmp_path, lab_pki, lab_servers, squid_factory, ssl_options, valid):
    """0 and 2 switch revocation checks off (the article's work-around); 1 only pinning."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts)
    outcome = lab.outcome(routes={"defender": squid.url}, connect_to=lab.refused_crls(), ssl_options=ssl_options)
    assert outcome.probe.success
    assert outcome.maps.valid is valid, outcome.maps
    if not valid:
        assert outcome.maps.cause == Cause.WINHTTP_PROXY_MISSING


# ------------------------------------------------------------------ 4. TLS inspection


def _inspection_trust(tmp_path, lab_pki) -> Path:
    """A ca_file with the lab root and the inspection root: the box's CA is installed."""
    path = tmp_path / "trust-with-inspection.pem"
    path.write_bytes(lab_pki.root.pem + lab_pki.inspection.pem)
    return path


def test_trusted_inspection_is_intercepted(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=lab_pki.issue_inspection_leaf("wdcp.microsoft.com"))
    squid = squid_factory(lab.hosts)
    trust = _inspection_trust(tmp_path, lab_pki)
    outcome = lab.outcome(routes={"defender": squid.url, "system": squid.url}, ca_file=trust)
    assert outcome.probe.success, outcome.probe.detail  # the chain IS trusted: the probe stays green
    assert outcome.probe.tls.verified
    assert outcome.intercepted is True
    assert_invalid(outcome, reason=Finding.TLS_INTERCEPTED, cause=Cause.TLS_INSPECTION)
    assert "TLS Inspection Root" in outcome.maps.detail
    # The re-signed leaf has no CDP: not revoked (pinning decides first).
    assert outcome.revoked is False


# 1: pinning off but revocation on, and the re-signed leaf names no revocation source: Windows
# fails it (revocation_info_missing, see test_crl); 0 switches both off, 2 keeps pinning.
@pytest.mark.parametrize("ssl_options, valid", [(0, True), (1, False), (2, False)])
def test_trusted_inspection_and_ssl_options(tmp_path, lab_pki, lab_servers, ssl_options, valid):
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=lab_pki.issue_inspection_leaf("wdcp.microsoft.com"))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls(), ssl_options=ssl_options,
                          ca_file=_inspection_trust(tmp_path, lab_pki))
    assert outcome.intercepted is True  # the fact is reported whatever the options
    assert outcome.maps.valid is valid, outcome.maps
    if ssl_options == 1:
        assert outcome.maps.reason == "revocation_info_missing"


def test_untrusted_inspection_is_intercepted_from_the_presented_chain(tmp_path, lab_pki, lab_servers):
    """The box's CA is not installed: the probe fails (tls_untrusted, Windows' hresult for an
    unknown CA), and pinning judged on the presented chain names the cause."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=lab_pki.issue_inspection_leaf("wdcp.microsoft.com"))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.reason == Reason.TLS_UNTRUSTED
    assert outcome.intercepted is True
    assert_invalid(outcome, reason=Reason.TLS_UNTRUSTED, cause=Cause.TLS_INSPECTION, hresult="0x80072F0D")


def test_unverified_genuine_chain_is_not_intercepted(tmp_path, lab_pki, lab_servers):
    """An expired leaf from the right hierarchy: the presented issuing CA is signed by the
    expected root, so this is a certificate problem, not interception."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=lab_pki.issue_expired("wdcp.microsoft.com"))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.reason == Reason.TLS_EXPIRED
    assert outcome.intercepted is False
    assert_invalid(outcome, reason=Reason.TLS_EXPIRED, cause=Cause.CERTIFICATE_INVALID)


def test_unknown_hierarchy_in_microsofts_place(tmp_path, lab_pki, unknown_pki, lab_servers):
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=unknown_pki.issue_leaf("wdcp.microsoft.com"))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.reason == Reason.TLS_UNTRUSTED
    assert outcome.intercepted is True and outcome.maps.cause == Cause.TLS_INSPECTION


# ------------------------------------------------------------------ 5. revocation findings


def _with_issuing_crl(lab_pki, data: bytes) -> dict[str, bytes]:
    files = lab_pki.published_files()
    files[lab_pki.issuing.crl_url] = data
    return files


def test_revoked_leaf(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=leaf,
                  files=lab_pki.published_files(revoked_serials=[leaf.serial]))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.success  # revocation never changes the probe
    assert outcome.revoked is True
    assert_invalid(outcome, reason=Finding.CERT_REVOKED, cause=Cause.CERT_REVOKED, hresult="0x80072F8F")
    assert format(leaf.serial, "X") in outcome.maps.detail


def test_revoked_leaf_with_revocation_checks_off(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=leaf,
                  files=lab_pki.published_files(revoked_serials=[leaf.serial]))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls(), ssl_options=2)
    assert outcome.revoked is True  # still reported as a fact
    assert outcome.maps.valid


@pytest.mark.parametrize(
    "make, reason, words",
    [
        (lambda pki: pki.make_crl("issuing", next_update=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
         Finding.CRL_STALE, "nextUpdate"),
        (lambda pki: pki.make_crl("issuing", sign_with_wrong_key=True), Finding.CRL_INVALID, "signature"),
        (lambda pki: b"this is not a CRL\n" * 10, Finding.CRL_INVALID, "not a CRL"),
        (lambda pki: pki.make_crl("root"), Finding.CRL_INVALID, "issuer"),
    ],
    ids=["stale", "bad-signature", "garbage", "wrong-issuer"],
)
def test_bad_crls(tmp_path, lab_pki, lab_servers, make, reason, words):
    lab = MapsLab(tmp_path, lab_pki, lab_servers, files=_with_issuing_crl(lab_pki, make(lab_pki)))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.success
    assert outcome.revoked is False
    assert_invalid(outcome, reason=reason, cause=Cause.CRL_INVALID, hresult="0x80072F8F")
    assert words in outcome.maps.detail


def test_crl_over_the_cap_is_invalid_and_not_downloaded(tmp_path, lab_pki, lab_servers):
    """A 4 MB "CRL" served at 20 kB/s would take minutes: the answer's Content-Length
    alone condemns it, so the check ends at once and nothing of it is read."""
    big = b"\x30" + b"\x00" * (4 * 1024 * 1024)
    path = urlsplit(lab_pki.issuing.crl_url).path
    lab = MapsLab(tmp_path, lab_pki, lab_servers, files=_with_issuing_crl(lab_pki, big),
                  crl_throttle={path: 20_000})
    started = time.monotonic()
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls(), extra={"limits": {"crl_bytes": 1024}})
    assert time.monotonic() - started < 2.5  # the timeout is 3 s; reading the body would take minutes
    assert_invalid(outcome, reason=Finding.CRL_INVALID, cause=Cause.CRL_INVALID)
    assert "1024 bytes" in outcome.maps.detail and "limits.crl_bytes" in outcome.maps.detail


# ------------------------------------------------------------------ 6. proxy authentication


def test_proxy_requires_authentication(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts, auth=("noc", "s3cret"))
    outcome = lab.outcome(routes={"defender": squid.url, "system": squid.url})
    assert outcome.probe.reason == Reason.PROXY_AUTH_REQUIRED
    assert_invalid(outcome, reason=Reason.PROXY_AUTH_REQUIRED, cause=Cause.PROXY_AUTH, hresult="0x80190197")


def test_winhttp_proxy_asks_for_credentials_for_crls(tmp_path, lab_pki, lab_servers, squid_factory):
    """Defender's route has credentials, the system route (SYSTEM's WinHTTP) has none: 407 on the CRLs."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts, auth=("noc", "s3cret"))
    outcome = lab.outcome(routes={"defender": squid.proxy_url, "system": squid.url})
    assert outcome.probe.success, outcome.probe.detail
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.PROXY_AUTH)
    assert "407" in outcome.maps.detail


# ------------------------------------------------------------------ metrics from the real exporter


def test_trap_metrics_from_the_exporter(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    squid = squid_factory(lab.hosts)
    samples = scrape_samples(lab.config(routes={"defender": squid.url}, connect_to=lab.refused_crls()))
    target = {"group": "maps", "target": MAPS, "route": "defender"}

    def value(name, **labels):
        wanted = {**target, **labels}
        found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in wanted.items())]
        assert len(found) == 1, (name, wanted, samples.get(name))
        return found[0]

    assert value("defender_probe_success") == 1
    assert value("defender_maps_connection_valid") == 0
    assert value("defender_maps_validation_info", cause="winhttp_proxy_missing", hresult="0x80072F8F",
                 reason="crl_unreachable") == 1
    assert value("defender_tls_intercepted") == 0
    assert value("defender_tls_cert_revoked") == 0
    crl_system = [s for s in samples["defender_crl_reachable"] if s.labels["route"] == "system"]
    assert {s.labels["url"] for s in crl_system} == {lab_pki.issuing.crl_url, lab_pki.root.crl_url}
    assert all(s.value == 0 for s in crl_system)


def test_revoked_metrics_from_the_exporter(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=leaf,
                  files=lab_pki.published_files(revoked_serials=[leaf.serial]))
    samples = scrape_samples(lab.config(connect_to=lab.direct_maps() + lab.direct_crls()))
    by_name = {name: [s for s in ss if s.labels.get("target") == MAPS] for name, ss in samples.items()}
    assert [s.value for s in by_name["defender_probe_success"]] == [1]
    assert [s.value for s in by_name["defender_tls_cert_revoked"]] == [1]
    assert [s.value for s in by_name["defender_maps_connection_valid"]] == [0]
    assert [(s.labels["cause"], s.labels["hresult"]) for s in by_name["defender_maps_validation_info"]] == [
        ("cert_revoked", "0x80072F8F")]
    reachable = {s.labels["url"]: s.value for s in samples["defender_crl_reachable"]}
    assert reachable == {lab_pki.issuing.crl_url: 1, lab_pki.root.crl_url: 1}


# ------------------------------------------------------------------ the document and the table


def test_doc_holds_every_row_of_the_verdict_table():
    doc = DOC.read_text()
    for line in render_verdict_table():
        assert line in doc, f"docs/maps-validation.md lacks the row:\n{line}"


def test_doc_holds_every_row_of_the_hresult_table():
    from exporter.causes import render_hresult_table

    doc = DOC.read_text()
    for line in render_hresult_table():
        assert line in doc, f"docs/maps-validation.md lacks the row:\n{line}"


def test_every_cause_has_a_remedy_and_is_documented():
    from exporter.causes import REMEDIES

    doc = DOC.read_text()
    for cause in Cause:
        assert REMEDIES.get(cause), f"no remedy for {cause}"
        assert f"`{cause.value}`" in doc, f"docs/maps-validation.md does not explain {cause}"


# ------------------------------------------------------------------ time bounds


def test_hanging_crl_servers_cost_one_budget_not_one_timeout_each(tmp_path, lab_pki, lab_servers):
    """CRL hosts that accept and never answer: the chain's CRLs are checked concurrently within
    one budget, so the job ends after about one timeout (not one per certificate), with a verdict."""
    from lab.servers import NeverAnswer

    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    hang = lab_servers.serve(NeverAnswer(), port=80)
    rules = lab.direct_maps() + [hang.connect_to(host, 80) for host in CRL_HOSTS]
    path = lab_config(tmp_path, {"maps": {"targets": [MAPS], "expected_roots": [root_fingerprint(lab_pki)],
                                          "timeout": "2s"}},
                      connect_to=rules, ca_file=lab_pki.ca_bundle_path)
    started = time.monotonic()
    outcome = outcome_for(path, MAPS)
    elapsed = time.monotonic() - started
    assert outcome.probe.success
    # They took the connection and stalled: too slow, not blocked (cause timeout, not crl_blocked).
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.TIMEOUT)
    assert "timeout" in outcome.maps.detail
    # One budget for both certificates: about 2 s. One timeout each, one after the other, would be
    # at least 4 s; the 1.5 s between is room for a loaded machine, not for a second timeout.
    assert 1.9 < elapsed < 3.5, elapsed


def test_revocation_budget():
    from exporter.budget import ASSESSMENT_GRACE, JobBudget

    assert JobBudget(10).revocation(0.1) == 10  # a fast probe leaves the whole timeout
    assert JobBudget(10).revocation(10) == ASSESSMENT_GRACE  # a slow one leaves the grace
    assert JobBudget(1).revocation(1) == 1


def test_a_failover_try_probes_within_what_is_left_of_the_deadline():
    """routes.py tries a route's next proxy as the same job with `spent` set: its
    prober gets the rest of the probe's deadline; the waiters' limit stays the job's."""
    from exporter.budget import JobBudget
    from exporter.config import parse_config

    config = parse_config("groups:\n  maps: {targets: [https://wdcp.microsoft.com/], timeout: 10s}\n")
    job = next(j for j in config.jobs() if j.group.name == "maps")
    assert job.budget == JobBudget(10.0) and job.budget.probe == 10.0
    retry = dataclasses.replace(job, spent=4.0)
    assert retry.budget.probe == 6.0 and retry.budget.hard == job.budget.hard
    assert retry == job and retry.key == job.key  # the same job, tried again


def test_a_job_that_keeps_its_budget_ends_before_its_waiters_give_up():
    """The scheduler and /probe stop waiting at budget.hard: probe plus
    revocation must end before, even after a probe that overran a little."""
    from exporter.budget import JobBudget

    for timeout in (0.5, 1, 10, 60):
        budget = JobBudget(timeout)
        for probe_took in (0.0, timeout / 2, timeout, timeout + 0.5):
            assert probe_took + budget.revocation(probe_took) < budget.hard, (timeout, probe_took)
