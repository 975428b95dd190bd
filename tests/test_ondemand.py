"""GET /probe: allow-listed, rate limited, metrics or a readable debug log of every phase."""

from __future__ import annotations

import urllib.parse
import urllib.request

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from lab.servers import Files, Ok
from support import ExporterThread, lab_config, root_fingerprint

from exporter.ondemand import NotAllowed, ProbeLimits, RateLimiter, find_job
from exporter.config import load_config

MAPS = "https://wdcp.microsoft.com/"
OTHER = "https://unlisted.microsoft.com/"


def get(port: int, path: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def sample(body: str, name: str, **labels: str) -> float | None:
    """The value of one sample of an exposition, None if absent."""
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def probe_path(target: str, **params: str) -> str:
    return "/probe?" + urllib.parse.urlencode({"target": target, **params})


@pytest.fixture
def maps_lab(tmp_path, lab_pki, lab_servers):
    """A healthy MAPS endpoint with published CRLs, and a decoy server for anything unlisted."""
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    server = lab_servers.serve(Ok(), port=443, tls=leaf)
    files: dict[str, dict[str, bytes]] = {}
    for url, data in lab_pki.published_files().items():
        parts = urllib.parse.urlsplit(url)
        files.setdefault(parts.hostname, {})[parts.path] = data
    crl_servers = {host: lab_servers.serve(Files(f), port=80) for host, f in files.items()}
    decoy = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("unlisted.microsoft.com"))
    connect_to = [server.connect_to("wdcp.microsoft.com", 443), decoy.connect_to("unlisted.microsoft.com", 443),
                  decoy.connect_to("evil.example", 443)]
    connect_to += [srv.connect_to(host, 80) for host, srv in crl_servers.items()]
    path = lab_config(tmp_path, {"maps": {"targets": [MAPS], "expected_roots": [root_fingerprint(lab_pki)]}},
                      connect_to=connect_to, ca_file=lab_pki.ca_bundle_path)
    return path, server, decoy, leaf


def test_probe_returns_the_targets_metric_families(maps_lab):
    path, server, _, _ = maps_lab
    with ExporterThread(path) as exp:
        exp.wait_ready()
        before = server.connections
        status, headers, body = get(exp.port, probe_path(MAPS))
    assert status == 200, body
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert server.connections == before + 1
    labels = {"group": "maps", "target": MAPS, "route": "defender"}
    assert sample(body, "defender_probe_success", **labels) == 1
    assert sample(body, "defender_maps_connection_valid", **labels, source="emulated") == 1
    assert sample(body, "defender_probes_total", **labels, result="success") == 1
    assert sample(body, "defender_probe_phase_duration_seconds", **labels, phase="tls") > 0
    assert "Measured now by /probe." in body and "Cached from the background scheduler" not in body
    # only this target's families: nothing about the exporter itself
    assert "defender_exporter_build_info" not in body


def test_debug_output_shows_every_phase(maps_lab, lab_pki):
    path, _, _, leaf = maps_lab
    with ExporterThread(path) as exp:
        status, headers, body = get(exp.port, probe_path(MAPS, debug="true"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "resolved " in body and "route defender: direct" in body
    assert "connect_to: wdcp.microsoft.com:443 ->" in body
    assert "TLS TLSv1.3" in body
    subject = leaf.cert.subject.rfc4514_string()
    assert f"subject:     {subject}" in body
    assert f"issuer:      {lab_pki.issuing.cert.subject.rfc4514_string()}" in body
    assert "notAfter:" in body and "sha256:" in body
    assert leaf.cert.fingerprint(__import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex() in body
    assert "CRL http://crl.microsoft.com/" in body  # the CRL fetch, with its answer
    assert "== MAPS verdict" in body and "\nVALID" in body
    assert "== Metrics ==" in body and "defender_probe_success" in body


def test_debug_output_through_a_proxy_shows_the_connect_answer(tmp_path, lab_pki, lab_servers, squid_factory):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    squid = squid_factory({"wdcp.microsoft.com": server.ip})
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": squid.url}, ca_file=lab_pki.ca_bundle_path,
                      ssl_options=0)
    with ExporterThread(path) as exp:
        status, _, body = get(exp.port, probe_path(MAPS, debug="true"))
    assert status == 200
    assert f"route defender: proxy {squid.url}" in body
    assert "CONNECT wdcp.microsoft.com:443 -> 200" in body
    assert "CONNECT:      200" in body


def test_failing_probe_debug_names_reason_cause_and_remedy(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_expired("wdcp.microsoft.com"))
    path = lab_config(tmp_path, {"maps": [MAPS]}, connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path)
    with ExporterThread(path) as exp:
        exp.wait_ready()
        status, _, body = get(exp.port, probe_path(MAPS, debug="1"))
        status2, _, metrics = get(exp.port, "/metrics")
    assert status == 200
    assert "success:      NO" in body and "reason:       tls_expired" in body
    assert "EXPIRED" in body and "NOT VERIFIED" in body
    assert "INVALID: reason tls_expired, hresult 0x80072F05, cause certificate_invalid" in body
    assert "remedy: The server's certificate is not valid" in body
    # the on-demand result does not touch the scheduler's counters
    assert status2 == 200
    assert sample(metrics, "defender_probes_total", group="maps", target=MAPS, route="defender", result="failure") == 1


@pytest.mark.parametrize("target", [
    OTHER,
    "https://evil.example/",
    "https://wdcp.microsoft.com/other-path",
    "https://wdcp.microsoft.com:8443/",
    "http://wdcp.microsoft.com/",
    "https://user:pw@wdcp.microsoft.com/",
    "file:///etc/passwd",
    "wdcp.microsoft.com",
    "",
    "x" * 5000,
])
def test_unlisted_targets_get_400_and_are_never_contacted(maps_lab, target):
    path, server, decoy, _ = maps_lab
    with ExporterThread(path) as exp:
        exp.wait_ready()
        before = server.connections
        status, _, body = get(exp.port, probe_path(target, debug="true"))
        assert status == 400, body
        assert "configured" in body or "missing" in body
        assert server.connections == before
    assert decoy.connections == 0


def test_equivalent_spelling_of_a_configured_target_is_accepted(maps_lab):
    path, _, _, _ = maps_lab
    with ExporterThread(path) as exp:
        status, _, body = get(exp.port, probe_path("HTTPS://WDCP.microsoft.com:443/"))
    assert status == 200, body
    assert sample(body, "defender_probe_success", group="maps", target=MAPS, route="defender") == 1


def test_route_and_group_must_be_configured_for_the_target(tmp_path, maps_lab):
    path, _, decoy, _ = maps_lab
    with ExporterThread(path) as exp:
        status, _, body = get(exp.port, probe_path(MAPS, route="system"))
        assert status == 400 and "route 'system' is not configured" in body
        status, _, body = get(exp.port, probe_path(MAPS, group="update"))
        assert status == 400
        status, _, body = get(exp.port, "/probe")
        assert status == 400 and "missing parameter: target" in body
    assert decoy.connections == 0


def test_per_target_rate_limit_answers_429_with_retry_after(maps_lab):
    path, server, _, _ = maps_lab
    limits = ProbeLimits(per_target_seconds=30, burst=10, rate=1, in_flight=4)
    with ExporterThread(path, probe_limits=limits) as exp:
        exp.wait_ready()
        before = server.connections
        assert get(exp.port, probe_path(MAPS))[0] == 200
        for _ in range(5):
            status, headers, body = get(exp.port, probe_path(MAPS))
            assert status == 429, body
            assert 25 <= int(headers["Retry-After"]) <= 30
        assert server.connections == before + 1


def test_global_token_bucket_limits_bursts_across_targets(tmp_path, lab_pki, lab_servers):
    urls = [f"https://t{i}.wdcp.microsoft.com/" for i in range(6)]
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("*.wdcp.microsoft.com"))
    path = lab_config(tmp_path, {"maps": urls}, connect_to=[f"::{server.ip}:443"], ca_file=lab_pki.ca_bundle_path,
                      ssl_options=0)
    limits = ProbeLimits(per_target_seconds=1, burst=3, rate=0.05, in_flight=4)
    with ExporterThread(path, probe_limits=limits) as exp:
        exp.wait_ready()
        before = server.connections
        statuses = [get(exp.port, probe_path(url)) for url in urls]
    assert [s for s, _, _ in statuses] == [200, 200, 200, 429, 429, 429]
    assert int(statuses[3][1]["Retry-After"]) >= 15  # (1 token) / (0.05 per second) = 20 s
    assert server.connections == before + 3


def test_concurrent_requests_for_one_target_run_one_probe(tmp_path, lab_pki, lab_servers):
    from lab.servers import Delay

    server = lab_servers.serve(Delay(1.0), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    path = lab_config(tmp_path, {"maps": [MAPS]}, connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path, ssl_options=0)
    from concurrent.futures import ThreadPoolExecutor

    with ExporterThread(path) as exp:
        exp.wait_ready()
        before = server.connections
        with ThreadPoolExecutor(8) as pool:
            statuses = sorted(s for s, _, _ in pool.map(lambda _: get(exp.port, probe_path(MAPS)), range(8)))
    assert statuses == [200] + [429] * 7
    assert server.connections == before + 1


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(ProbeLimits(per_target_seconds=5, burst=2, rate=0.5, in_flight=10), clock=lambda: now[0])
    assert limiter.acquire("a") == 0
    limiter.release("a")
    assert limiter.acquire("a") == pytest.approx(5)
    assert limiter.acquire("b") == 0
    limiter.release("b")
    assert limiter.acquire("c") == pytest.approx(2)  # bucket empty: 1 token at 0.5/s
    now[0] = 2.0
    assert limiter.acquire("c") == 0
    now[0] = 4.0
    limiter.release("c")
    assert limiter.acquire("a") == pytest.approx(1)  # a token is there, but "a" waits out its spacing
    now[0] = 5.0
    assert limiter.acquire("a") == 0


def test_find_job_never_returns_anything_but_configured_jobs(maps_lab):
    path, _, _, _ = maps_lab
    config = load_config(path)
    job = find_job(config, MAPS)
    assert job.target is config.groups[0].targets[0]
    for bad in (OTHER, "https://wdcp.microsoft.com./x", "javascript:alert(1)", "https://[::1/"):
        with pytest.raises(NotAllowed):
            find_job(config, bad)
