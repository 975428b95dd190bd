"""A real TLS-inspecting proxy (mitmproxy's mitmdump) on the Defender route.

The company installed the box's CA, so the re-signed chain is trusted and the
probe stays green; pinning sees that the chain no longer ends at the expected
(lab "Microsoft") root: tls_intercepted, cause tls_inspection. SSLOptions 0
switches pinning off, as on the endpoints.
"""

from __future__ import annotations

import pytest
from lab.mitm import Mitmdump
from support import MAPS, MapsLab, assert_invalid

from exporter.causes import Cause, Finding


@pytest.fixture
def inspected(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = MapsLab(tmp_path, lab_pki, lab_servers)  # the genuine lab chain behind the box
    squid = squid_factory(lab.hosts)
    with Mitmdump(tmp_path, upstream=squid.url, upstream_ca=lab_pki.ca_bundle_path) as mitm:
        trust = tmp_path / "trust-with-mitm.pem"
        trust.write_bytes(lab_pki.root.pem + mitm.ca_path.read_bytes())
        yield lab, squid, mitm, trust


def test_real_inspection_proxy_is_detected(inspected):
    lab, squid, mitm, trust = inspected
    outcome = lab.outcome(routes={"defender": mitm.url, "system": squid.url}, ca_file=trust)
    assert outcome.probe.success, outcome.probe.detail
    assert outcome.probe.tls.verified
    assert "mitmproxy" in outcome.probe.tls.verified_path[-1].subject
    assert outcome.intercepted is True
    assert_invalid(outcome, reason=Finding.TLS_INTERCEPTED, cause=Cause.TLS_INSPECTION)


def test_real_inspection_proxy_with_ssl_options_0(inspected):
    lab, squid, mitm, trust = inspected
    outcome = lab.outcome(routes={"defender": mitm.url, "system": squid.url}, ca_file=trust, ssl_options=0)
    assert outcome.probe.success and outcome.intercepted is True
    assert outcome.maps.valid, outcome.maps


def test_without_the_box_the_same_chain_is_genuine(inspected):
    lab, squid, _, trust = inspected
    outcome = lab.outcome(routes={"defender": squid.url, "system": squid.url}, ca_file=trust)
    assert outcome.probe.success and outcome.intercepted is False
    assert outcome.maps.valid, outcome.maps
    assert MAPS == "https://wdcp.microsoft.com/"
