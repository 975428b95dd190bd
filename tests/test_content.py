"""Content verification: a target whose answer must be a CRL, a certificate or match `expect:`.

A reachable CRL URL is green only when a CRL arrives that parses, is signed by its issuer and is
not stale; an HTML error page, a portal or a CRL signed by someone else is `unexpected_content`,
and the detail says what arrived (status, content type, size).
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
from lab.servers import Files, Ok, Redirect
from support import lab_config, outcome_for

from exporter.catalogue import catalogue_groups
from exporter.reasons import Reason

HTML = b"<html><head><title>Access Denied</title></head><body>Your request was blocked.</body></html>\n"


def _probe(tmp_path, lab_pki, url, servers, expect=None):
    target = {"url": url, "expect": expect or {"content": "crl"}}
    rules = [server.connect_to(urlsplit(u).hostname, 80) for u, server in servers]
    path = lab_config(tmp_path, {"crl": {"targets": [target]}}, connect_to=rules, ca_file=lab_pki.ca_bundle_path)
    return outcome_for(path, url).probe


def _root_crl_server(lab_pki, lab_servers, body=None):
    url = lab_pki.root.crl_url
    server = lab_servers.serve(Files({urlsplit(url).path: body or lab_pki.make_crl("root")}), port=80)
    return url, server


def test_a_genuine_crl_is_green(tmp_path, lab_pki, lab_servers):
    url, server = _root_crl_server(lab_pki, lab_servers)
    probe = _probe(tmp_path, lab_pki, url, [(url, server)])
    assert probe.success, probe.detail
    assert probe.http_status == 200


def test_an_html_page_where_a_crl_belongs(tmp_path, lab_pki, lab_servers):
    url = lab_pki.root.crl_url
    server = lab_servers.serve(Ok(body=HTML, content_type="text/html"), port=80)
    probe = _probe(tmp_path, lab_pki, url, [(url, server)])
    assert probe.reason == Reason.UNEXPECTED_CONTENT, probe.detail
    assert "not a CRL" in probe.detail
    assert f"HTTP 200 OK, text/html, {len(HTML)} bytes" in probe.detail


def test_a_crl_signed_by_another_key(tmp_path, lab_pki, lab_servers):
    url, server = _root_crl_server(lab_pki, lab_servers, lab_pki.make_crl("root", sign_with_wrong_key=True))
    probe = _probe(tmp_path, lab_pki, url, [(url, server)])
    assert probe.reason == Reason.UNEXPECTED_CONTENT and "signature" in probe.detail, probe.detail


def test_a_crl_of_an_unknown_issuer(tmp_path, lab_pki, unknown_pki, lab_servers):
    url, server = _root_crl_server(lab_pki, lab_servers, unknown_pki.make_crl("root"))
    probe = _probe(tmp_path, lab_pki, url, [(url, server)])
    assert probe.reason == Reason.UNEXPECTED_CONTENT and "neither a trusted root" in probe.detail, probe.detail


def test_a_stale_crl(tmp_path, lab_pki, lab_servers):
    stale = lab_pki.make_crl("root", next_update=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    url, server = _root_crl_server(lab_pki, lab_servers, stale)
    probe = _probe(tmp_path, lab_pki, url, [(url, server)])
    assert probe.reason == Reason.UNEXPECTED_CONTENT and "nextUpdate" in probe.detail, probe.detail


def test_a_crl_behind_a_redirect_is_followed_by_the_probe(tmp_path, lab_pki, lab_servers):
    mirror_url = "http://cdn.example.net/root.crl"
    mirror = lab_servers.serve(Files({"/root.crl": lab_pki.make_crl("root")}), port=80)
    url = lab_pki.root.crl_url
    point = lab_servers.serve(Redirect(mirror_url, status=302), port=80)
    probe = _probe(tmp_path, lab_pki, url, [(url, point), (mirror_url, mirror)])
    assert probe.success, probe.detail
    assert mirror.file_requests("/root.crl") == 1


def test_a_404_is_not_a_crl(tmp_path, lab_pki, lab_servers):
    url = lab_pki.root.crl_url
    server = lab_servers.serve(Files({}), port=80)
    probe = _probe(tmp_path, lab_pki, url, [(url, server)])
    assert probe.reason == Reason.UNEXPECTED_CONTENT and "got status 404" in probe.detail, probe.detail
    assert probe.http_status == 404


def test_a_certificate_where_a_certificate_belongs(tmp_path, lab_pki, lab_servers):
    url = "http://www.microsoft.com/pkiops/certs/root.crt"
    server = lab_servers.serve(Files({"/pkiops/certs/root.crt": lab_pki.root.der}), port=80)
    assert _probe(tmp_path, lab_pki, url, [(url, server)], {"content": "cert"}).success
    html = lab_servers.serve(Ok(body=HTML, content_type="text/html"), port=80)
    probe = _probe(tmp_path, lab_pki, url, [(url, html)], {"content": "cert"})
    assert probe.reason == Reason.UNEXPECTED_CONTENT and "not an X.509 certificate" in probe.detail


@pytest.mark.parametrize("expect, status, success", [
    ({"status": [200]}, 200, True),
    ({"status": [200]}, 404, False),
    ({"status": ["4xx", 503]}, 404, True),
    ({"status": ["4xx", 503]}, 503, True),
    ({"status": ["2xx"]}, 503, False),
    ({"body": "^fine"}, 200, False),
    ({"body": "^ok"}, 404, True),
])
def test_status_and_body_expectations(tmp_path, lab_pki, lab_servers, expect, status, success):
    url = "http://intranet.corp.example/health"
    server = lab_servers.serve(Ok(status=status), port=80)  # body "ok\n"
    probe = _probe(tmp_path, lab_pki, url, [(url, server)], expect)
    assert probe.success is success, probe.detail
    if not success:
        assert probe.reason == Reason.UNEXPECTED_CONTENT
        assert f"arrived: HTTP {status}" in probe.detail


def test_group_expect_is_merged_under_the_targets(tmp_path, lab_pki, lab_servers):
    url = "http://intranet.corp.example/health"
    server = lab_servers.serve(Ok(status=200), port=80)
    group = {"expect": {"status": [204], "body": "ok"},
             "targets": [{"url": url, "expect": {"status": [200]}}]}  # the target's status wins, the body stays
    path = lab_config(tmp_path, {"crl": group}, connect_to=[server.connect_to("intranet.corp.example", 80)])
    assert outcome_for(path, url).probe.success


def test_the_catalogue_crl_group_probes_real_crl_files():
    """Green there means a genuine CRL of a Microsoft root arrived, not that a host answered."""
    targets = catalogue_groups()["crl"]["targets"]
    kinds = {t["url"]: t["expect"]["content"] for t in targets}
    assert {k for u, k in kinds.items() if u.endswith(".crl")} == {"crl"}
    assert sum(1 for k in kinds.values() if k == "crl") >= 3
    assert all(k in ("crl", "cert") for k in kinds.values())
