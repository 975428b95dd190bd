"""AIA chain building on the system route: a server that leaves out its intermediate."""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from lab.servers import Files, refused_address
from support import MapsLab, lab_config, outcome_for, root_fingerprint

import exporter.aia
from exporter.aia import IssuerCache, load_certificates
from exporter.config import ConnectTo, Limits, Route

MAPS = "https://wdcp.microsoft.com/"


def _path(url: str) -> str:
    return urlsplit(url).path


def _leaf_only(lab_pki):
    """A MAPS leaf whose server presents it alone, without the issuing CA."""
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    return dataclasses.replace(leaf, chain_path=leaf.cert_path)


@pytest.mark.parametrize("fmt", ["der", "pem", "p7c-der", "p7c-pem"])
def test_issuer_formats_and_cache(lab_pki, lab_servers, fmt):
    url = lab_pki.issuing.cert_url
    cert = lab_pki.issuing.cert
    data = {
        "der": lab_pki.issuing.der,
        "pem": lab_pki.issuing.pem,
        "p7c-der": pkcs7.serialize_certificates([cert], Encoding.DER),
        "p7c-pem": pkcs7.serialize_certificates([cert], Encoding.PEM),
    }[fmt]
    assert load_certificates(data) == (cert,)
    server = lab_servers.serve(Files({_path(url): data}), port=80)
    cache = IssuerCache(Limits(), (ConnectTo("www.microsoft.com", 80, server.ip, server.port),), Route("system"))

    async def twice():
        return await cache.issuers(url, 3), await cache.issuers(url, 3)

    first, second = asyncio.run(twice())
    assert first.certificates == (cert,) and second is first
    assert server.file_requests(_path(url)) == 1  # cached by URL


def test_failure_is_remembered_briefly_and_bounded(lab_pki, lab_servers, monkeypatch):
    url = lab_pki.issuing.cert_url
    server = lab_servers.serve(Files({_path(url): b"x" * (exporter.aia.MAX_ISSUER_BYTES + 1)}), port=80)
    cache = IssuerCache(Limits(), (ConnectTo("www.microsoft.com", 80, server.ip, server.port),), Route("system"))
    got = asyncio.run(cache.issuers(url, 3))
    assert got.certificates == () and "larger than" in got.error and not got.unreachable
    assert asyncio.run(cache.issuers(url, 3)) is got  # remembered for FAILURE_TTL
    monkeypatch.setattr(exporter.aia, "FAILURE_TTL", 0)
    server.set_file(_path(url), lab_pki.issuing.der)
    assert asyncio.run(cache.issuers(url, 3)).certificates == (lab_pki.issuing.cert,)


def test_missing_intermediate_is_fetched_and_the_chain_is_valid(tmp_path, lab_pki, lab_servers):
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=_leaf_only(lab_pki))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls())
    assert outcome.probe.success, outcome.probe.detail
    tls = outcome.probe.tls
    assert len(tls.presented) == 1 and len(tls.verified_path) == 3
    assert tls.aia_fetched == (lab_pki.issuing.cert_url,)
    assert outcome.intercepted is False  # pinning judged the completed chain
    assert outcome.maps.valid, outcome.maps
    www = lab.crl["www.microsoft.com"]
    assert www.file_requests(_path(lab_pki.issuing.cert_url)) == 1


def test_pinning_judges_the_completed_chain(tmp_path, lab_pki, unknown_pki, lab_servers):
    """The completed chain verifies, but ends at a root the group does not expect."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=_leaf_only(lab_pki))
    outcome = lab.outcome(connect_to=lab.direct_maps() + lab.direct_crls(),
                          expected_roots=[root_fingerprint(unknown_pki)])
    assert outcome.probe.success and outcome.intercepted is True
    assert outcome.maps.reason == "tls_intercepted"


def test_caissuers_blocked_is_its_own_finding(tmp_path, lab_pki, lab_servers):
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=_leaf_only(lab_pki))
    ip, port = refused_address()
    crl = lab.crl["crl.microsoft.com"]
    outcome = lab.outcome(connect_to=lab.direct_maps() + [crl.connect_to("crl.microsoft.com", 80),
                                                          f"www.microsoft.com:80:{ip}:{port}"])
    assert outcome.probe.reason == "tls_untrusted"  # Windows cannot build the chain either
    assert "connect_refused" in outcome.probe.tls.aia_error
    assert outcome.intercepted is None  # an incomplete chain says nothing about interception
    verdict = outcome.maps
    assert (verdict.valid, verdict.reason, verdict.hresult, verdict.cause) == (
        False, "aia_unreachable", "0x80072F8F", "crl_blocked")
    assert lab_pki.issuing.cert_url in verdict.detail


def test_caissuers_blocked_behind_the_article_trap(tmp_path, lab_pki, lab_servers, squid_factory):
    """MAPS through Defender's proxy, the system route direct and the issuer's URL unreachable there."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=_leaf_only(lab_pki))
    squid = squid_factory(lab.hosts)
    outcome = lab.outcome(routes={"defender": squid.url}, connect_to=lab.refused_crls())
    assert (outcome.maps.reason, outcome.maps.cause) == ("aia_unreachable", "winhttp_proxy_missing")


def test_a_server_answer_without_the_issuer_is_not_the_aia_finding(tmp_path, lab_pki, lab_servers):
    """caIssuers answers 404: the chain is untrusted (and judged on what was presented)."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers, leaf=_leaf_only(lab_pki), files={})
    empty = lab_servers.serve(Files({}), port=80)
    path = lab_config(tmp_path, {"maps": {"targets": [MAPS], "expected_roots": [root_fingerprint(lab_pki)]}},
                      connect_to=lab.direct_maps() + [empty.connect_to("www.microsoft.com", 80),
                                                      empty.connect_to("crl.microsoft.com", 80)],
                      ca_file=lab_pki.ca_bundle_path)
    outcome = outcome_for(path, MAPS)
    assert outcome.probe.reason == "tls_untrusted" and outcome.probe.tls.aia_error == ""
    assert outcome.maps.reason == "tls_untrusted"
