"""Stapled OCSP: a MAPS handshake asks for a staple, and the verdict takes a good one first.

The MAPS front end here is OpenSSL's own server (`openssl s_server -status_file`, tests/lab/
stapling.py): it sends the OCSP response in the file to every client that asks (status_request).
Windows takes a stapled response before any other revocation source ("Certificate revocation
list semantics"), so a leaf with a good staple passes even when the system route reaches neither
its OCSP responder nor its CRL distribution point; its issuing CA still needs its own sources.

Hosts of the lab PKI: the leaf's CRL is on crl.microsoft.com, the issuing CA's (the root's CRL)
on www.microsoft.com, both certificates name oneocsp.microsoft.com as OCSP responder.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from lab.ocsp import OCSPResponder, staple_for
from lab.pki import LabPKI
from lab.servers import Garbage, Handler, ResetMidHandshake, refused_address
from lab.stapling import StaplingServer
from support import lab_config, root_fingerprint, scrape_samples, serve_published

from exporter.assess import Assessor
from exporter.config import load_config
from exporter.probes import ProbeEnv

pytestmark = pytest.mark.usefixtures("probe_transport")

OCSP_URL = "http://oneocsp.microsoft.com/ocsp"
MAPS = "https://wdcp.microsoft.com/"
LEAF_CRL_HOST = "crl.microsoft.com"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> LabPKI:
    return LabPKI.create(tmp_path_factory.mktemp("staple-pki"), name="Staple", ocsp_url=OCSP_URL)


class StaplingLab:
    """MAPS on a stapling OpenSSL server; CRLs and the OCSP responder on lab servers, each blockable."""

    def __init__(self, tmp_path, pki, lab_servers, *, staple: bytes | None | str = "good", leaf=None):
        self.tmp_path, self.pki = tmp_path, pki
        self.leaf = leaf or pki.issue_leaf("wdcp.microsoft.com")
        self.responder = OCSPResponder(pki)
        if staple == "good":  # from a responder of its own: self.responder counts what probes ask
            staple = staple_for(OCSPResponder(pki), self.leaf.cert, pki.issuing.cert)
        self.maps = StaplingServer.start(tmp_path, self.leaf, staple=staple)
        self.ocsp = lab_servers.serve(Handler(self.responder), port=80)
        self.crl = serve_published(lab_servers, pki.published_files())

    def stop(self) -> None:
        self.maps.stop()

    def rules(self, *, blocked: tuple[str, ...] = ()) -> list[str]:
        """connect_to rules; `blocked` host names get an address that refuses connections."""
        servers = {**self.crl, "oneocsp.microsoft.com": self.ocsp}
        rules = [self.maps.connect_to("wdcp.microsoft.com", 443)]
        for host, server in servers.items():
            rules.append("{}:80:{}:{}".format(host, *refused_address()) if host in blocked
                         else server.connect_to(host, 80))
        return rules

    def config(self, *, blocked: tuple[str, ...] = (), group: str = "maps", validate_maps: bool | None = None,
               stapling: bool | None = None):
        spec = {"targets": [MAPS], "expected_roots": [root_fingerprint(self.pki)]}
        if validate_maps is not None:
            spec["validate_maps"] = validate_maps
        path = lab_config(self.tmp_path, {group: spec}, connect_to=self.rules(blocked=blocked),
                          ca_file=self.pki.ca_bundle_path)
        if stapling is not None:  # lab_config writes tls: {ca_file: ...}; add the switch beside it
            text = path.read_text().replace("tls:\n", f"tls:\n  ocsp_stapling: {str(stapling).lower()}\n", 1)
            assert "ocsp_stapling" in text
            path.write_text(text)
        return path

    def assess(self, **kwargs):
        config = load_config(self.config(**kwargs))
        return asyncio.run(Assessor(config).run(config.jobs()[0], ProbeEnv.from_config(config)))


@pytest.fixture
def stapling_lab(tmp_path, pki, lab_servers):
    labs = []

    def make(**kwargs) -> StaplingLab:
        lab = StaplingLab(tmp_path, pki, lab_servers, **kwargs)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()


def _leaf_requests(lab) -> list[int]:
    return [r.serial_number for r in lab.responder.requests if r.serial_number == lab.leaf.serial]


def test_a_good_staple_decides_the_leaf_when_its_own_sources_are_blocked(stapling_lab):
    lab = stapling_lab()
    outcome = lab.assess(blocked=("oneocsp.microsoft.com", LEAF_CRL_HOST))
    assert outcome.probe.success, outcome.probe.detail
    assert outcome.probe.tls.ocsp_staple, "the server's staple did not arrive"
    assert outcome.maps.valid, outcome.maps
    # The leaf by its staple; the issuing CA by the root's CRL (its OCSP responder is blocked).
    assert "CN=wdcp.microsoft.com: staple" in outcome.maps.revocation, outcome.maps.revocation
    assert "Secure Server CA 2024,O=Staple Corporation,C=US: crl http://www.microsoft.com/" in outcome.maps.revocation
    assert _leaf_requests(lab) == [] and lab.crl[LEAF_CRL_HOST].connections == 0


def test_without_a_staple_the_same_network_fails(stapling_lab):
    """The control: the same blocked hosts, a server that staples nothing -> the article's failure."""
    lab = stapling_lab(staple=None)
    outcome = lab.assess(blocked=("oneocsp.microsoft.com", LEAF_CRL_HOST))
    assert outcome.probe.tls.ocsp_staple == b""  # asked for, none sent
    assert not outcome.maps.valid and outcome.maps.reason == "crl_unreachable", outcome.maps


def test_a_good_staple_saves_the_leafs_fetches(stapling_lab):
    """With everything reachable, the leaf is still decided by the staple: no OCSP request for it."""
    lab = stapling_lab()
    outcome = lab.assess()
    assert outcome.maps.valid, outcome.maps
    assert _leaf_requests(lab) == []
    assert [r.serial_number for r in lab.responder.requests] == [lab.pki.issuing.cert.serial_number]


def test_a_revoked_staple_is_cert_revoked(stapling_lab, pki):
    responder = OCSPResponder(pki)
    leaf = pki.issue_leaf("wdcp.microsoft.com")
    responder.revoke(leaf.serial)
    lab = stapling_lab(leaf=leaf, staple=staple_for(responder, leaf.cert, pki.issuing.cert))
    outcome = lab.assess()
    assert outcome.revoked is True
    assert (outcome.maps.valid, outcome.maps.reason, outcome.maps.cause, outcome.maps.hresult) == (
        False, "cert_revoked", "cert_revoked", "0x80072F8F")
    assert "revoked" in outcome.maps.detail and _leaf_requests(lab) == []


def _stale_staple(pki, leaf) -> bytes:
    old = OCSPResponder(pki, this_update=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10),
                        next_update=dt.timedelta(days=4))
    return staple_for(old, leaf.cert, pki.issuing.cert)


@pytest.mark.parametrize("kind", ["stale", "other-issuer", "garbage"])
def test_an_unusable_staple_falls_through_to_the_leafs_own_sources(stapling_lab, pki, tmp_path_factory, kind):
    leaf = pki.issue_leaf("wdcp.microsoft.com")
    if kind == "stale":
        staple = _stale_staple(pki, leaf)
    elif kind == "other-issuer":
        other = LabPKI.create(tmp_path_factory.mktemp("other"), name="Other")
        stranger = other.issue_leaf("wdcp.microsoft.com")
        staple = staple_for(OCSPResponder(other), stranger.cert, other.issuing.cert)
    else:  # "successful" with no response body: s_server loads it, a client cannot use it
        staple = b"\x30\x03\x0a\x01\x00"
    lab = stapling_lab(leaf=leaf, staple=staple)
    outcome = lab.assess()
    assert outcome.probe.tls.ocsp_staple == staple
    assert outcome.maps.valid, outcome.maps  # decided by the leaf's OCSP responder instead
    assert _leaf_requests(lab) == [leaf.serial]
    assert f"CN=wdcp.microsoft.com: ocsp {OCSP_URL}" in outcome.maps.revocation
    # With the leaf's own sources blocked too, the staple's problem is in the detail.
    blocked = lab.assess(blocked=("oneocsp.microsoft.com", LEAF_CRL_HOST))
    assert not blocked.maps.valid and blocked.maps.reason == "crl_unreachable"
    assert "staple" in blocked.maps.detail, blocked.maps.detail


def test_stapling_can_be_turned_off(stapling_lab):
    """tls.ocsp_stapling: false (endpoints that do not ask, seen as disagreement): no staple asked
    for, so the leaf needs its own sources again."""
    lab = stapling_lab()
    outcome = lab.assess(blocked=("oneocsp.microsoft.com", LEAF_CRL_HOST), stapling=False)
    assert outcome.probe.success and outcome.probe.tls.ocsp_staple is None
    assert not outcome.maps.valid and outcome.maps.reason == "crl_unreachable"


def test_only_maps_groups_ask_for_a_staple(stapling_lab):
    lab = stapling_lab()
    outcome = lab.assess(group="update", validate_maps=False)
    assert outcome.probe.success and outcome.probe.tls.ocsp_staple is None
    assert outcome.maps is None


def test_the_stapled_series(stapling_lab):
    stapling = stapling_lab()
    silent = stapling_lab(staple=None)
    for lab, expected in ((stapling, 1.0), (silent, 0.0)):
        samples = scrape_samples(lab.config())
        assert [s.value for s in samples["defender_tls_ocsp_stapled"]] == [expected]
    plain = scrape_samples(stapling.config(group="update", validate_maps=False))
    assert "defender_tls_ocsp_stapled" not in plain


@pytest.mark.parametrize("behaviour", [Garbage(before_tls=True), ResetMidHandshake()], ids=["not-tls", "reset"])
def test_a_failed_handshake_has_the_same_reason_as_with_the_standard_library(tmp_path, pki, lab_servers, behaviour):
    """StaplingTLS raises what ssl raises, so a MAPS group (which asks for a staple) and any other
    group get the same reason from the same broken server."""
    server = lab_servers.serve(behaviour, port=443)
    reasons = {}
    for group, validate in (("maps", True), ("update", False)):
        path = lab_config(tmp_path, {group: {"targets": [MAPS], "validate_maps": validate}},
                          connect_to=[server.connect_to("wdcp.microsoft.com", 443)], ca_file=pki.ca_bundle_path)
        config = load_config(path)
        outcome = asyncio.run(Assessor(config).run(config.jobs()[0], ProbeEnv.from_config(config)))
        assert not outcome.probe.success
        reasons[group] = (outcome.probe.reason, outcome.probe.detail.split(":")[0])
    assert reasons["maps"] == reasons["update"], reasons


def test_a_stapling_connection_is_freed_without_the_garbage_collector():
    """StaplingTLS and OpenSSL's connection form no reference cycle: its C memory (the SSL object)
    goes with the last reference, whatever the exporter's collection policy (gcpolicy.py)."""
    import gc
    import ssl
    import weakref

    from exporter.probes._staple import StaplingContext

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        tls = StaplingContext().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="wdcp.microsoft.com")
        ref = weakref.ref(tls)
        del tls
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()
