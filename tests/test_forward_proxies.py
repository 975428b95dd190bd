"""Every proxy, not just Squid: real tinyproxy, Apache httpd (mod_proxy) and Squid, each with deny
rules, an unreachable upstream and basic authentication, over CONNECT and plain HTTP.

A proxy's own answer (refusal, gateway error, authentication challenge: 403, 407, tinyproxy's 401
and 500, Apache's 503 and 500, Squid's X-Squid-Error pages) must never count as the endpoint's;
an origin's own 503 forwarded through the same proxies must. For MAPS targets the verdict's cause
is asserted too.
"""

from __future__ import annotations

import pytest
from lab.forward_proxies import ApacheProxy, Tinyproxy
from lab.servers import LabServers, Ok, refused_address
from lab.squid import Squid
from support import lab_config, outcome_for, root_fingerprint
from support import CRL_HOSTS, MAPS, MapsLab

from exporter.causes import Cause, Finding
from exporter.reasons import Reason

PROXIES = {"squid": Squid, "tinyproxy": Tinyproxy, "apache": ApacheProxy}
USER, PASSWORD = "noc", "s3cret"


class ProxyLab:
    def __init__(self, tmp_path, lab_pki, servers: LabServers, kind: str) -> None:
        self.tmp_path = tmp_path
        self.maps_lab = MapsLab(tmp_path, lab_pki, servers)
        self.pki = lab_pki
        # An origin that answers 503 itself: forwarded, it is the endpoint's answer.
        self.origin = servers.serve(Ok(status=503), port=80)
        dead_ip, _ = refused_address()
        hosts = {**self.maps_lab.hosts, "go.microsoft.com": self.origin.ip, "dead.microsoft.com": dead_ip,
                 "blocked.microsoft.com": self.origin.ip}
        self.proxy = PROXIES[kind](tmp_path / kind, hosts, deny_domains=["blocked.microsoft.com"],
                                   auth=(USER, PASSWORD))
        self.proxy.start()

    def route(self, credentials: str) -> str:
        port = self.proxy.port
        return {"right": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}",
                "wrong": f"http://{USER}:wrong@127.0.0.1:{port}",
                "none": f"http://127.0.0.1:{port}"}[credentials]

    def outcome(self, url: str, *, credentials: str = "right", system: str | None = None):
        group = "maps" if url.startswith("https://") else "adl"
        spec = {"targets": [url]}
        if group == "maps":
            spec["expected_roots"] = [root_fingerprint(self.pki)]
        routes = {"defender": self.route(credentials), "system": self.route(system or credentials)}
        path = lab_config(self.tmp_path, {group: spec}, routes=routes, ca_file=self.pki.ca_bundle_path)
        return outcome_for(path, url)


@pytest.fixture(scope="module", params=list(PROXIES))
def proxy_lab(request, tmp_path_factory, lab_pki):
    with LabServers() as servers:
        lab = ProxyLab(tmp_path_factory.mktemp(request.param), lab_pki, servers, request.param)
        try:
            yield lab
        finally:
            lab.proxy.stop()


# (url, credentials) -> (reason, MAPS cause); reason None = success
CASES = {
    "connect-right": (MAPS, "right", None, None),
    "connect-denied": ("https://blocked.microsoft.com/", "right", Reason.PROXY_DENIED, Cause.PROXY_DENIED),
    "connect-upstream-down": ("https://dead.microsoft.com/", "right", Reason.PROXY_ERROR, Cause.HTTP_ERROR),
    "connect-wrong-password": (MAPS, "wrong", Reason.PROXY_AUTH_REQUIRED, Cause.PROXY_AUTH),
    "connect-no-password": (MAPS, "none", Reason.PROXY_AUTH_REQUIRED, Cause.PROXY_AUTH),
    "http-right": ("http://go.microsoft.com/", "right", None, None),
    "http-denied": ("http://blocked.microsoft.com/", "right", Reason.PROXY_DENIED, None),
    "http-upstream-down": ("http://dead.microsoft.com/", "right", Reason.PROXY_ERROR, None),
    "http-wrong-password": ("http://go.microsoft.com/", "wrong", Reason.PROXY_AUTH_REQUIRED, None),
    "http-no-password": ("http://go.microsoft.com/", "none", Reason.PROXY_AUTH_REQUIRED, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_proxys_own_answer_is_never_the_endpoints(proxy_lab, case):
    url, credentials, reason, cause = CASES[case]
    outcome = proxy_lab.outcome(url, credentials=credentials)
    probe = outcome.probe
    if reason is None:
        assert probe.success, probe.detail
        if url == MAPS:
            # MAPS through the proxy, and its CRLs fetched through it on the system route.
            assert outcome.maps.valid, outcome.maps
        else:
            assert probe.http_status == 503  # the origin's own 503, forwarded
        return
    assert not probe.success
    assert probe.reason == reason, probe.detail
    if cause is not None:
        assert outcome.maps is not None and not outcome.maps.valid
        assert (outcome.maps.reason, outcome.maps.cause) == (str(reason), str(cause)), outcome.maps


def test_crls_behind_a_wrong_password_are_proxy_auth(proxy_lab):
    """MAPS reachable, but the system route's proxy refuses the CRL fetches for the password
    (tinyproxy says 401, the others 407): the cause is proxy_auth, whatever the status."""
    outcome = proxy_lab.outcome(MAPS, credentials="right", system="wrong")
    assert outcome.probe.success, outcome.probe.detail
    verdict = outcome.maps
    assert (verdict.reason, verdict.cause) == (str(Finding.CRL_UNREACHABLE), str(Cause.PROXY_AUTH)), verdict


def test_crl_hosts_in_the_deny_list(tmp_path, lab_pki, lab_servers):
    """The CRL hosts denied by tinyproxy on the system route: crl_unreachable, crl_blocked."""
    lab = MapsLab(tmp_path, lab_pki, lab_servers)
    with Tinyproxy(tmp_path / "tinyproxy", lab.hosts, deny_domains=list(CRL_HOSTS)) as proxy:
        outcome = lab.outcome(routes={"defender": proxy.url, "system": proxy.url})
    assert outcome.probe.success, outcome.probe.detail
    verdict = outcome.maps
    assert (verdict.reason, verdict.cause) == (str(Finding.CRL_UNREACHABLE), str(Cause.CRL_BLOCKED)), verdict
    assert "proxy_denied" in verdict.detail


def test_the_readme_shows_the_table_of_signs():
    from pathlib import Path

    from exporter.probes.proxy_answer import render_signs

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "\n".join(render_signs()) in readme, "README's table of proxy signs differs from proxy_answer.py"


def test_a_zscaler_block_redirect_is_the_proxys():
    """Zscaler cannot run here: its documented block redirect, judged as it would arrive."""
    from exporter.probes._http import HTTPAnswer
    from exporter.probes.proxy_answer import judge

    block = ("https://blocked.corp.example/?url=http://crl.microsoft.com/x.crl&reason=Not+allowed"
             "&reasoncode=CATEGORY_DENIED&action=deny&zsq=Zs1xYz")
    answer = HTTPAnswer(302, "Found", (("location", block),))
    assert judge(answer, tunnel=False) == (Reason.PROXY_DENIED, "a redirect to the proxy's block notification")
    mirror = HTTPAnswer(302, "Found", (("location", "http://cdn.example.net/x.crl?reason=moved"),))
    assert judge(mirror, tunnel=False) is None
