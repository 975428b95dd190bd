"""A trusted TLS-inspection box (real mitmproxy) whose upstream is down.

The box answers 502 itself, inside the tunnel it opened with its own (trusted) certificate and over
plain HTTP. That answer is not the endpoint's: proxy_error, for groups with pinning and without.
"""

from __future__ import annotations

import pytest
from lab.mitm import Mitmdump
from lab.servers import refused_address
from support import lab_config, outcome_for

from exporter.causes import Cause
from exporter.reasons import Reason


@pytest.fixture
def dead_box(tmp_path, lab_pki):
    ip, port = refused_address()
    with Mitmdump(tmp_path, upstream=f"http://{ip}:{port}", upstream_ca=lab_pki.ca_bundle_path) as mitm:
        trust = tmp_path / "trust-with-mitm.pem"
        trust.write_bytes(lab_pki.root.pem + mitm.ca_path.read_bytes())
        yield mitm, trust


@pytest.mark.parametrize("group, url", [
    ("update", "https://fe2.update.microsoft.com/"),
    ("adl", "http://go.microsoft.com/"),
    ("maps", "https://wdcp.microsoft.com/"),
])
def test_the_boxs_own_502_is_a_proxy_error(tmp_path, dead_box, group, url):
    mitm, trust = dead_box
    path = lab_config(tmp_path, {group: [url]}, routes={"defender": mitm.url, "system": mitm.url}, ca_file=trust)
    outcome = outcome_for(path, url)
    probe = outcome.probe
    assert probe.reason == Reason.PROXY_ERROR, (probe.success, probe.http_status, probe.detail)
    assert probe.http_status == 502
    if url.startswith("https://"):
        assert probe.proxy_status == 200 and probe.tls.verified  # the box opened the tunnel and is trusted
        assert "mitmproxy" in probe.tls.verified_path[-1].subject
    if group == "maps":
        assert (outcome.maps.reason, outcome.maps.cause) == (str(Reason.PROXY_ERROR), str(Cause.HTTP_ERROR))
