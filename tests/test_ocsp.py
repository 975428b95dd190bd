"""OCSP against the lab responder: GET and POST, issuer and delegated signatures, bad answers."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as x509_ocsp
from lab.ocsp import OCSPResponder
from lab.pki import LabPKI
from lab.servers import Handler, Ok, refused_address

import exporter.ocsp
from exporter.config import ConnectTo, Limits, Route, load_config
from exporter.ocsp import OCSPCache, request_for
from exporter.probes._tls import ocsp_urls

SYSTEM = Route("system")
OCSP_URL = "http://oneocsp.microsoft.com/ocsp"


@pytest.fixture(scope="module")
def ocsp_pki(tmp_path_factory) -> LabPKI:
    return LabPKI.create(tmp_path_factory.mktemp("ocsp-pki"), name="Ocsp", ocsp_url=OCSP_URL)


def _cache(server) -> OCSPCache:
    return OCSPCache(Limits(), (ConnectTo("oneocsp.microsoft.com", 80, server.ip, server.port),))


def _check(cache, cert, issuer):
    return asyncio.run(cache.check(OCSP_URL, cert, issuer, SYSTEM, 3))


def test_the_lab_pki_names_the_responder(ocsp_pki):
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    assert ocsp_urls(leaf.cert) == (OCSP_URL,)
    assert ocsp_urls(ocsp_pki.issuing.cert) == (OCSP_URL,)
    assert ocsp_urls(ocsp_pki.root.cert) == ()


@pytest.mark.parametrize("delegated", [False, True], ids=["signed-by-issuer", "delegated-responder"])
def test_good_answer_over_get(ocsp_pki, lab_servers, delegated):
    responder = OCSPResponder(ocsp_pki, delegated=delegated)
    server = lab_servers.serve(Handler(responder), port=80)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    cache = _cache(server)
    check = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert check.reachable and check.answer is not None, check.error
    assert check.method == "GET" and responder.methods == {"GET": 1}
    status = cache.judge(check)
    assert status.status == "good" and status.source == "ocsp"
    assert check.answer.signer == ("issuer" if not delegated else "delegated responder CN=issuing OCSP Responder")
    assert status.valid_until == check.answer.next_update > check.checked_at + 3 * 86400
    # RFC 5019: one certificate, SHA-1 CertID, no nonce or other extension
    request = responder.requests[-1]
    assert request.serial_number == leaf.serial and request.hash_algorithm.name == "sha1"
    assert len(request.extensions) == 0


def test_long_urls_use_post(ocsp_pki, lab_servers):
    responder = OCSPResponder(ocsp_pki)
    server = lab_servers.serve(Handler(responder), port=80)
    long_url = "http://oneocsp.microsoft.com/" + "x" * 200
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    der = x509_ocsp.OCSPRequestBuilder().add_certificate(
        leaf.cert, ocsp_pki.issuing.cert, exporter.ocsp.hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)
    assert request_for(OCSP_URL, der)[0] == "GET"
    method, url, body, headers = request_for(long_url, der)
    assert (method, url, body) == ("POST", long_url, der) and ("Content-Type", "application/ocsp-request") in headers
    cache = _cache(server)
    check = asyncio.run(cache.check(long_url, leaf.cert, ocsp_pki.issuing.cert, SYSTEM, 3))
    assert check.method == "POST" and responder.methods == {"POST": 1}
    assert cache.judge(check).status == "good", check.error


def test_revoked(ocsp_pki, lab_servers):
    responder = OCSPResponder(ocsp_pki)
    server = lab_servers.serve(Handler(responder), port=80)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    responder.revoke(leaf.serial)
    cache = _cache(server)
    status = cache.judge(_check(cache, leaf.cert, ocsp_pki.issuing.cert))
    assert status.status == "revoked" and "revoked" in status.detail


def test_answer_for_a_different_issuer_is_not_accepted(ocsp_pki, unknown_pki, lab_servers):
    """A response signed by a key that is neither the issuer's nor a delegate of it."""
    responder = OCSPResponder(unknown_pki)
    server = lab_servers.serve(Handler(responder), port=80)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    cache = _cache(server)
    check = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert check.answer is None and "unauthorized" in check.error
    assert cache.judge(check).status == "invalid"


def test_forged_signature_is_rejected(ocsp_pki, lab_servers, monkeypatch):
    responder = OCSPResponder(ocsp_pki)
    server = lab_servers.serve(Handler(responder), port=80)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    real = responder._response

    def forged(ca, request):
        good = real(ca, request).public_bytes(serialization.Encoding.DER)
        return _Raw(good[:-8] + bytes(8))  # the signature's last bytes zeroed

    monkeypatch.setattr(responder, "_response", forged)
    cache = _cache(server)
    check = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert check.answer is None and "signature" in check.error, check.error


class _Raw:
    def __init__(self, der: bytes):
        self.der = der

    def public_bytes(self, _encoding) -> bytes:
        return self.der


def test_stale_and_future_answers(ocsp_pki, lab_servers):
    now = dt.datetime.now(dt.UTC)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    stale = OCSPResponder(ocsp_pki, this_update=now - dt.timedelta(days=5), next_update=dt.timedelta(days=4))
    server = lab_servers.serve(Handler(stale), port=80)
    cache = _cache(server)
    assert cache.judge(_check(cache, leaf.cert, ocsp_pki.issuing.cert)).status == "stale"
    future = OCSPResponder(ocsp_pki, this_update=now + dt.timedelta(days=1))
    server = lab_servers.serve(Handler(future), port=80)
    cache = _cache(server)
    check = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert check.answer is None and "future" in check.error


def test_garbage_and_unreachable(ocsp_pki, lab_servers):
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    responder = OCSPResponder(ocsp_pki)
    responder.garbage = True
    server = lab_servers.serve(Handler(responder), port=80)
    cache = _cache(server)
    check = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert check.reachable and check.answer is None and "not an OCSP response" in check.error
    ip, port = refused_address()
    cache = OCSPCache(Limits(), (ConnectTo("oneocsp.microsoft.com", 80, ip, port),))
    check = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert not check.reachable and "connect_refused" in check.error
    assert cache.judge(check).status == "unreachable"


def test_last_good_answer_outlives_a_failed_fetch(ocsp_pki, lab_servers, monkeypatch):
    """The endpoint's cache in the model: a good answer stays usable until its nextUpdate."""
    monkeypatch.setattr(exporter.ocsp, "RECHECK_SECONDS", 0)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    responder = OCSPResponder(ocsp_pki)
    server = lab_servers.serve(Handler(responder), port=80)
    cache = _cache(server)
    first = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    until = cache.cached_good_until(OCSP_URL, leaf.cert, first.checked_at)
    assert until == first.answer.next_update
    server.stop()
    second = _check(cache, leaf.cert, ocsp_pki.issuing.cert)
    assert not second.reachable
    assert cache.cached_good_until(OCSP_URL, leaf.cert, second.checked_at) == until
    assert cache.cached_good_until(OCSP_URL, leaf.cert, until + 1) is None


def test_concurrent_checks_share_one_request(ocsp_pki, lab_servers):
    responder = OCSPResponder(ocsp_pki)
    server = lab_servers.serve(Handler(responder), port=80)
    leaf = ocsp_pki.issue_leaf("wdcp.microsoft.com")
    cache = _cache(server)

    async def many():
        return await asyncio.gather(*(cache.check(OCSP_URL, leaf.cert, ocsp_pki.issuing.cert, SYSTEM, 3)
                                      for _ in range(7)))

    results = asyncio.run(many())
    assert all(r is results[0] for r in results) and sum(responder.methods.values()) == 1


# ------------------------------------------------------------------ the MAPS verdict, in Windows' order


class OCSPLab:
    """MAPS on the lab TLS server, CRLs on Files servers, OCSP on the lab responder; all direct."""

    def __init__(self, tmp_path, pki, lab_servers, *, leaf=None, delegated=False):
        from support import serve_published

        self.tmp_path, self.pki = tmp_path, pki
        self.leaf = leaf or pki.issue_leaf("wdcp.microsoft.com")
        self.maps = lab_servers.serve(Ok(), port=443, tls=self.leaf)
        self.responder = OCSPResponder(pki, delegated=delegated)
        self.ocsp = lab_servers.serve(Handler(self.responder), port=80)
        self.crl = serve_published(lab_servers, pki.published_files())

    def rules(self, *, crl=True, ocsp=True) -> list[str]:
        rules = [self.maps.connect_to("wdcp.microsoft.com", 443)]
        for host, server in self.crl.items():
            rules.append(server.connect_to(host, 80) if crl else "{}:80:{}:{}".format(host, *refused_address()))
        rules.append(self.ocsp.connect_to("oneocsp.microsoft.com", 80) if ocsp
                     else "oneocsp.microsoft.com:80:{}:{}".format(*refused_address()))
        return rules

    def config(self, **kwargs):
        from support import lab_config, root_fingerprint

        group = {"targets": [MAPS], "expected_roots": [root_fingerprint(self.pki)]}
        return load_config(lab_config(self.tmp_path, {"maps": group}, connect_to=self.rules(**kwargs),
                                      ca_file=self.pki.ca_bundle_path))


MAPS = "https://wdcp.microsoft.com/"


def _assess(config, assessor=None):
    from exporter.assess import Assessor
    from exporter.probes import ProbeEnv

    assessor = assessor or Assessor(config)
    assessor.config = config
    assessor.crl_cache.reconfigure(config.limits, config.connect_to)
    assessor.ocsp_cache.reconfigure(config.limits, config.connect_to)
    job = config.jobs()[0]
    return assessor, asyncio.run(assessor.run(job, ProbeEnv.from_config(config)))


def test_crl_hosts_blocked_but_ocsp_answers(tmp_path, ocsp_pki, lab_servers):
    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers)
    _, outcome = _assess(lab.config(crl=False))
    assert outcome.probe.success, outcome.probe.detail
    assert outcome.maps.valid, outcome.maps
    # Both certificates (leaf, issuing CA) were decided by OCSP, the CRLs never fetched.
    assert outcome.maps.revocation.count("ocsp " + OCSP_URL) == 2, outcome.maps.revocation
    assert "crl " not in outcome.maps.revocation
    assert sorted(r.serial_number for r in lab.responder.requests) == sorted(
        [lab.leaf.serial, ocsp_pki.issuing.cert.serial_number])


def test_ocsp_revoked_is_cert_revoked(tmp_path, ocsp_pki, lab_servers):
    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers)
    lab.responder.revoke(lab.leaf.serial)
    _, outcome = _assess(lab.config())
    assert outcome.revoked is True
    assert (outcome.maps.valid, outcome.maps.reason, outcome.maps.cause, outcome.maps.hresult) == (
        False, "cert_revoked", "cert_revoked", "0x80072F8F")
    assert OCSP_URL in outcome.maps.detail
    # OCSP comes before the distribution points: with OCSP deciding, no CRL is fetched.
    assert all(server.connections == 0 for server in lab.crl.values())


def test_ocsp_blocked_falls_back_to_the_crls(tmp_path, ocsp_pki, lab_servers):
    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers)
    _, outcome = _assess(lab.config(ocsp=False))
    assert outcome.maps.valid, outcome.maps
    assert "ocsp " not in outcome.maps.revocation and outcome.maps.revocation.count("crl ") == 2


def test_delegated_responder_decides(tmp_path, ocsp_pki, lab_servers):
    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers, delegated=True)
    _, outcome = _assess(lab.config(crl=False))
    assert outcome.maps.valid, outcome.maps


def test_both_blocked_after_a_good_fetch_the_cache_model(tmp_path, ocsp_pki, lab_servers, monkeypatch):
    """An endpoint that fetched the chain's revocation data keeps passing until it expires: the
    verdict (a fresh endpoint's) fails at once, the valid-until stays where it was, in the future."""
    import time

    import exporter.crl

    monkeypatch.setattr(exporter.ocsp, "RECHECK_SECONDS", 0)
    monkeypatch.setattr(exporter.crl, "RECHECK_SECONDS", 0)
    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers)
    assessor, before = _assess(lab.config())
    assert before.maps.valid and before.revocation_valid_until is not None
    # OCSP decided (its answers run 4 days); the CRLs were not needed, so not fetched or cached.
    assert time.time() + 3.9 * 86400 < before.revocation_valid_until < time.time() + 4 * 86400
    _, after = _assess(lab.config(crl=False, ocsp=False), assessor)
    assert not after.maps.valid and after.maps.reason == "crl_unreachable"
    assert after.revocation_valid_until == before.revocation_valid_until > time.time()
    # A fresh endpoint (a new exporter: nothing cached) has no such time.
    _, fresh = _assess(lab.config(crl=False, ocsp=False))
    assert not fresh.maps.valid and fresh.revocation_valid_until is None


def test_ocsp_and_valid_until_series_from_the_exporter(tmp_path, ocsp_pki, lab_servers):
    import time

    from support import lab_config, root_fingerprint
    from support import scrape_samples

    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers)
    group = {"targets": [MAPS], "expected_roots": [root_fingerprint(ocsp_pki)]}
    samples = scrape_samples(lab_config(tmp_path, {"maps": group}, connect_to=lab.rules(crl=False),
                                 ca_file=ocsp_pki.ca_bundle_path))

    def one(name, **labels):
        found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (name, labels, samples.get(name))
        return found[0]

    point = {"url": OCSP_URL, "route": "system"}
    assert one("defender_ocsp_reachable", **point) == 1
    assert one("defender_ocsp_response_valid", **point) == 1
    assert one("defender_ocsp_next_update_timestamp_seconds", **point) > time.time() + 3 * 86400
    assert one("defender_ocsp_fetch_duration_seconds", **point) >= 0
    target = {"group": "maps", "target": MAPS, "route": "defender"}
    assert one("defender_maps_connection_valid", **target) == 1
    assert one("defender_maps_revocation_valid_until_timestamp_seconds", **target) == \
        one("defender_ocsp_next_update_timestamp_seconds", **point)
    assert not samples.get("defender_crl_reachable")  # the CRLs were not needed, so not fetched


def test_a_hanging_responder_leaves_time_for_the_crls(tmp_path, ocsp_pki, lab_servers):
    """Each URL but the last gets half the budget left (Windows' accumulative timeout), so a
    responder that accepts and never answers does not use up the time the CRLs need."""
    import time

    from lab.servers import NeverAnswer
    from support import lab_config, root_fingerprint

    lab = OCSPLab(tmp_path, ocsp_pki, lab_servers)
    hang = lab_servers.serve(NeverAnswer(), port=80)
    rules = [r for r in lab.rules() if not r.startswith("oneocsp.")] + [hang.connect_to("oneocsp.microsoft.com", 80)]
    group = {"targets": [MAPS], "expected_roots": [root_fingerprint(ocsp_pki)], "timeout": "2s"}
    config = load_config(lab_config(tmp_path, {"maps": group}, connect_to=rules, ca_file=ocsp_pki.ca_bundle_path))
    started = time.monotonic()
    _, outcome = _assess(config)
    assert outcome.maps.valid, outcome.maps
    assert outcome.maps.revocation.count("crl ") == 2
    assert time.monotonic() - started < 2.5
