"""--web.config.file for real: TLS, client certificates, basic auth; /config; secrets stay secret."""

from __future__ import annotations

import base64
import http.client
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from lab.servers import Ok
from support import ExporterThread, lab_config, root_fingerprint

from exporter.config import load_config
from exporter.statuspage import render_config
from exporter.webconfig import load_web_config, parse_web_config

MAPS = "https://wdcp.microsoft.com/"
OTHER = "https://wd.microsoft.com/"
REPO = Path(__file__).parent.parent


def hashed(password: str, prefix: str = "$2b$") -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", prefix, 1)


def write_web_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def request(port: int, path: str, *, context: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None,
            method: str = "GET", header: str | None = None) -> tuple[int, dict, str]:
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=context)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if header is not None:
        headers["Authorization"] = header
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def healthy_config(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    return lab_config(tmp_path, {"maps": [MAPS]}, connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path, ssl_options=0)


@pytest.fixture(scope="module")
def web_pki(tmp_path_factory):
    from lab.pki import LabPKI

    pki = LabPKI.create(tmp_path_factory.mktemp("web-pki"), name="Web")
    server = pki.issue_leaf(["localhost"])
    client = pki.issue_leaf(["noc-prometheus"], server_auth=False)
    return pki, server, client


def client_context(pki, *, cert=None, max_version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_bundle_path))
    if cert is not None:
        ctx.load_cert_chain(cert.chain_path, cert.key_path)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


# ------------------------------------------------------------------ TLS


def test_tls_serves_metrics_over_https(tmp_path, healthy_config, web_pki):
    pki, server, _ = web_pki
    web = load_web_config(str(write_web_config(tmp_path, {"tls_server_config": {
        "cert_file": str(server.chain_path), "key_file": str(server.key_path)}})))
    with ExporterThread(healthy_config, web_config=web) as exp:
        status, _, body = request(exp.port, "/metrics", context=client_context(pki))
        assert status == 200 and "defender_exporter_build_info" in body
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine)):
            request(exp.port, "/metrics")  # plain HTTP to a TLS port gets nothing useful


def client_auth_web_config(tmp_path, web_pki, client_auth_type: str):
    """TLS with the lab's server certificate, client certificates checked against the lab CA."""
    pki, server, _ = web_pki
    return load_web_config(str(write_web_config(tmp_path, {"tls_server_config": {
        "cert_file": str(server.chain_path), "key_file": str(server.key_path),
        "client_auth_type": client_auth_type, "client_ca_file": str(pki.ca_bundle_path)}})))


def test_require_and_verify_client_cert(tmp_path, healthy_config, web_pki, unknown_pki):
    pki, _, client = web_pki
    web = client_auth_web_config(tmp_path, web_pki, "RequireAndVerifyClientCert")
    stranger = unknown_pki.issue_leaf(["noc-prometheus"], server_auth=False)
    with ExporterThread(healthy_config, web_config=web) as exp:
        status, _, _ = request(exp.port, "/metrics", context=client_context(pki, cert=client))
        assert status == 200
        for ctx in (client_context(pki), client_context(pki, cert=stranger)):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                request(exp.port, "/metrics", context=ctx)
        # health checks need a certificate too: TLS comes before HTTP
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(exp.port, "/-/healthy", context=client_context(pki))


def test_verify_client_cert_if_given(tmp_path, healthy_config, web_pki, unknown_pki):
    pki, _, client = web_pki
    web = client_auth_web_config(tmp_path, web_pki, "VerifyClientCertIfGiven")
    stranger = unknown_pki.issue_leaf(["noc-prometheus"], server_auth=False)
    with ExporterThread(healthy_config, web_config=web) as exp:
        assert request(exp.port, "/metrics", context=client_context(pki))[0] == 200
        assert request(exp.port, "/metrics", context=client_context(pki, cert=client))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(exp.port, "/metrics", context=client_context(pki, cert=stranger))


def test_min_version_refuses_older_clients(tmp_path, healthy_config, web_pki):
    pki, server, _ = web_pki
    web = load_web_config(str(write_web_config(tmp_path, {"tls_server_config": {
        "cert_file": str(server.chain_path), "key_file": str(server.key_path), "min_version": "TLS13"}})))
    with ExporterThread(healthy_config, web_config=web) as exp:
        assert request(exp.port, "/-/healthy", context=client_context(pki))[0] == 200
        with pytest.raises(ssl.SSLError):
            request(exp.port, "/-/healthy", context=client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))


@pytest.mark.parametrize("auth_type", ["RequestClientCert", "RequireAnyClientCert"])
def test_cli_refuses_client_auth_it_cannot_honour(tmp_path, web_pki, auth_type, free_port):
    _, server, _ = web_pki
    web = write_web_config(tmp_path, {"tls_server_config": {
        "cert_file": str(server.chain_path), "key_file": str(server.key_path), "client_auth_type": auth_type,
        "client_ca_file": str(server.chain_path)}})
    config = lab_config(tmp_path, {"maps": [MAPS]})
    done = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config), "--web.config.file",
                           str(web), "--web.listen-address", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 2
    assert f"tls_server_config.client_auth_type: {auth_type} asks for a client certificate without verifying it" \
        in done.stderr
    assert "RequireAndVerifyClientCert or VerifyClientCertIfGiven" in done.stderr
    assert "Traceback" not in done.stderr


# Invalid web configs and their messages: tests/test_webconfig.py (tests/testdata/webconfig/).


# ------------------------------------------------------------------ basic auth


@pytest.fixture
def auth_exporter(tmp_path, healthy_config):
    web = parse_web_config({
        "basic_auth_users": {"prometheus": hashed("right horse"), "grafana": hashed("battery", "$2y$")},
        "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
    }, str(tmp_path / "web.yml"))
    with ExporterThread(healthy_config, web_config=web) as exp:
        yield exp


def test_basic_auth(auth_exporter):
    port = auth_exporter.port
    status, headers, _ = request(port, "/metrics", auth=("prometheus", "right horse"))
    assert status == 200 and headers["X-Frame-Options"] == "deny"
    assert request(port, "/metrics", auth=("grafana", "battery"))[0] == 200  # $2y$ hashes (htpasswd) work
    for auth in [("prometheus", "wrong"), ("grafana", "right horse"), ("nobody", "right horse"),
                 ("prometheus", ""), ("prometheus", "x" * 100), ("", "")]:
        status, headers, _ = request(port, "/metrics", auth=auth)
        assert status == 401, auth
        assert headers["X-Frame-Options"] == "deny"  # configured headers on refusals too
        assert headers["WWW-Authenticate"].startswith("Basic realm=")
        assert headers["X-Frame-Options"] == "deny"
    for header in (None, "Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
                   "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()):
        assert request(port, "/metrics", header=header)[0] == 401, header
    for path in ("/", "/config", "/probe?target=" + MAPS):
        assert request(port, path)[0] == 401, path
    assert request(port, "/-/reload", method="POST")[0] == 401


def test_health_endpoints_are_open_without_credentials(auth_exporter):
    auth_exporter.wait_ready()
    assert request(auth_exporter.port, "/-/healthy")[0] == 200
    assert request(auth_exporter.port, "/-/ready")[0] == 200


def test_wrong_passwords_do_not_stall_the_exporter(auth_exporter):
    """bcrypt runs off the event loop: a burst of bad logins leaves /-/healthy fast."""
    from concurrent.futures import ThreadPoolExecutor

    port = auth_exporter.port
    with ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(request, port, "/metrics", auth=("prometheus", f"guess{i}")) for i in range(24)]
        time.sleep(0.05)
        started = time.perf_counter()
        assert request(port, "/-/healthy")[0] == 200
        elapsed = time.perf_counter() - started
        assert all(f.result()[0] in (401, 429) for f in bad)  # 429: the failure budget is spent
    assert elapsed < 0.5


def test_scheme_name_is_case_insensitive(auth_exporter):
    token = base64.b64encode(b"prometheus:right horse").decode()
    for scheme in ("Basic", "basic", "BASIC", "bAsIc"):
        assert request(auth_exporter.port, "/metrics", header=f"{scheme} {token}")[0] == 200, scheme
    assert request(auth_exporter.port, "/metrics", header=f"Basic  {token} ")[0] == 200  # RFC 9110: 1*SP
    assert request(auth_exporter.port, "/metrics", header=f"Basicx {token}")[0] == 401


def _timed(port: int, auth: tuple[str, str]) -> float:
    started = time.perf_counter()
    status, _, _ = request(port, "/config", auth=auth)
    assert status == 200, status
    return time.perf_counter() - started


def test_a_burst_of_wrong_passwords_does_not_delay_an_authorised_client(tmp_path, healthy_config, free_port):
    """150 concurrent wrong logins (wrong passwords for the scraper's own user, and unknown users)
    against a real exporter process with cost-8 hashes: the scraper, already verified, is let in
    as fast as without the burst, and the burst itself buys a bounded number of bcrypt checks."""
    from concurrent.futures import ThreadPoolExecutor

    web = write_web_config(tmp_path, {"basic_auth_users": {
        "prometheus": bcrypt.hashpw(b"right horse", bcrypt.gensalt(8)).decode(),
        "grafana": bcrypt.hashpw(b"battery", bcrypt.gensalt(8)).decode()}})
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(healthy_config),
                                "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{port}"],
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    scraper = ("prometheus", "right horse")
    try:
        wait_until_ready(port, process)
        _timed(port, scraper)  # verified once: from now on it is remembered
        baseline = sorted(_timed(port, scraper) for _ in range(7))[3]
        # bcrypt's cost on this machine right now, for the report below
        cost_started = time.perf_counter()
        assert request(port, "/config", auth=("grafana", "battery"))[0] == 200
        one_check = time.perf_counter() - cost_started

        attempts = [("prometheus", f"guess-{i}") if i % 3 else (f"nobody-{i}", "x") for i in range(150)]
        with ThreadPoolExecutor(150) as pool:
            burst_started = time.perf_counter()
            burst = [pool.submit(request, port, "/config", auth=a) for a in attempts]
            time.sleep(0.3)  # the burst is in: accepted, parsed, queued for bcrypt where it would be
            during = [_timed(port, scraper) for _ in range(3)]
            statuses = [f.result()[0] for f in burst]
            burst_took = time.perf_counter() - burst_started
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    bound = 3 * baseline + 0.25
    assert max(during) <= bound, (
        f"an authorised request took {max(during):.3f} s during the burst (baseline {baseline:.3f} s, "
        f"one bcrypt check {one_check:.3f} s, the burst took {burst_took:.2f} s)")
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 1
    # 150 checks two at a time would take 75 bcrypt checks' time; the budget allows a few.
    refused_early = statuses.count(429)
    assert refused_early >= 100, (statuses.count(401), refused_early)
    assert "too many failed logins" in stderr and "right horse" not in stderr


# ------------------------------------------------------------------ /config and secrets


def test_config_endpoint_shows_the_running_config_redacted(tmp_path, lab_pki):
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": "http://noc:t0p%2Fsecret@proxy.example:3128"},
                      ca_file=lab_pki.ca_bundle_path)
    with ExporterThread(path) as exp:
        status, headers, body = request(exp.port, "/config")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "t0p" not in body and "secret" not in body
    shown = yaml.safe_load(body)
    assert shown["routes"]["defender"]["proxy"] == "http://noc:<redacted>@proxy.example:3128"
    assert shown["routes"]["system"]["proxy"] is None
    assert shown["groups"]["maps"]["targets"] == [MAPS]
    assert shown["groups"]["maps"]["validate_maps"] is True
    assert shown["tls"]["ca_file"] == str(lab_pki.ca_bundle_path)
    assert shown["interval"] == "1m" and shown["timeout"] == "3s"


def _job_facts(config) -> list:
    """Everything a job is made of, the proxy password aside (/config shows it redacted)."""
    def route(r):
        proxy = None if r.proxy is None else (r.proxy.host, r.proxy.port, r.proxy.username)
        return (r.name, proxy, r.bypass, r.pac, r.pac_route, r.pac_interval, r.wpad, r.wpad_domain, r.fallback)

    def group(g):
        return (g.name, g.enabled, g.description, g.routes, g.interval, g.timeout, g.targets, g.expected_roots,
                g.validate_maps, g.content)

    return [
        [(j.group.name, j.target, route(j.route)) for j in config.jobs()],
        [group(g) for g in (*config.groups, *config.disabled_groups)],
        (config.interval, config.timeout, config.concurrency, config.connect_to, config.tls, config.limits,
         config.host, config.connectivity, config.region, config.ctl_mirror_url),
        sorted(route(r) for r in config.routes.values()),
    ]


@pytest.mark.parametrize("profile", ["standard", "streamlined"])
def test_config_endpoint_round_trips(tmp_path, lab_pki, profile):
    """What /config shows, given back as a config file, is the same exporter: the same jobs,
    disabled groups included (they used to be left out, and came back enabled)."""
    path = lab_config(tmp_path, {
        "maps": {"interval": "1500ms", "targets": ["https://wdcp.microsoft.com",
                                                   {"url": "HTTPS://X.cp.wd.microsoft.com:443/a?b=c",
                                                    "pattern": "*.cp.wd.microsoft.com"}]},
        "update": {"route": ["defender", "branch"], "expected_roots": [root_fingerprint(lab_pki)]},
        "intranet": {"description": "our mirror", "route": "system", "timeout": "2s",
                     "expect": {"status": ["2xx", 304], "body": "mpam"},
                     "targets": ["http://[::1]:8080/defu/",
                                 {"url": "http://[::1]:8080/crl", "expect": {"content": "crl", "status": [200]}}]},
        "parked": {"enabled": False, "targets": ["https://parked.corp.example/"]},
    }, routes={"defender": "http://noc:t0p%2Fsecret@proxy.example:3128"},
        connect_to=["wdcp.microsoft.com:443:127.0.0.2:8443", "::[::1]:", "[::1]:80::8080"],
        ca_file=lab_pki.ca_bundle_path, ssl_options=2,
        extra={"connectivity": profile, "region": "eu", "concurrency": 7,
               "host": {"enabled": False, "interval": "15m"}, "limits": {"body_bytes": 1024}})
    data = yaml.safe_load(path.read_text())
    data["routes"].update({  # every kind of route
        "branch": {"proxy": "http://10.1.2.3:3128", "bypass": ["*.corp.example", "<local>"]},
        "pac": {"pac": "http://wpad.corp.example/proxy.pac", "pac_route": "defender", "pac_interval": "90s"},
        "found": {"wpad": True, "wpad_domain": "corp.example"},
        "either": {"fallback": ["pac", "found", "system"]},
    })
    data["groups"]["update"]["route"] = ["defender", "branch", "pac", "found", "either"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with ExporterThread(path) as exp:
        status, _, shown = request(exp.port, "/config")
    assert status == 200
    again = tmp_path / "from-config-endpoint.yml"
    again.write_text(shown)
    original, fed_back = load_config(path), load_config(again)
    assert {g.name for g in original.disabled_groups} >= {"parked", "adl", "diagnostics"}
    assert _job_facts(fed_back) == _job_facts(original)
    # and once more: /config of the fed-back config is the same text but for its source
    assert render_config(fed_back).split("\n", 1)[1] == shown.split("\n", 1)[1]


SECRET = "Sup3r-s3cret-pr0xy-pw"


def test_proxy_password_never_leaks(tmp_path, lab_pki, lab_servers, squid_factory, free_port):
    """A real exporter process, debug logging, a real Squid asking for that password: the password
    appears in none of stderr, /metrics, /, /config, /probe?debug=true, nor in a reload error."""
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf(["wdcp.microsoft.com", "wd.microsoft.com"]))
    hosts = {"wdcp.microsoft.com": server.ip, "wd.microsoft.com": server.ip}
    squid = squid_factory(hosts, auth=("noc", SECRET))
    wrong = squid_factory(hosts, auth=("noc", "other-password"))
    routes = {"defender": squid.url.replace("http://", f"http://noc:{SECRET}@"),
              "system": wrong.url.replace("http://", f"http://noc:{SECRET}@")}  # -> 407 on this route
    config = lab_config(tmp_path, {"maps": {"targets": [MAPS, OTHER], "route": ["defender", "system"]}}, routes=routes,
                        ca_file=lab_pki.ca_bundle_path, interval="2s", timeout="2s")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--web.listen-address",
         f"127.0.0.1:{port}", "--log.level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    pages = {}
    try:
        wait_until_ready(port, process)
        for path in ("/metrics", "/", "/config", f"/probe?target={MAPS}&route=defender&debug=true",
                     f"/probe?target={OTHER}&route=system&debug=true"):
            status, _, body = request(port, path)
            assert status == 200, (path, body)
            pages[path] = body
        # a reload to a file whose proxy URL is malformed, with the password in it
        config.write_text(config.read_text().replace(f"noc:{SECRET}@127.0.0.1:{squid.port}",
                                                     f"noc:{SECRET}@127.0.0.1:notaport"))
        status, _, body = request(port, "/-/reload", method="POST")
        assert status == 500
        pages["reload"] = body
        time.sleep(2.5)  # more probe rounds, with debug logging
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    pages["stderr"] = stderr
    assert "CONNECT wdcp.microsoft.com:443 -> 200" in pages[f"/probe?target={MAPS}&route=defender&debug=true"]
    assert "proxy_auth_required" in pages[f"/probe?target={OTHER}&route=system&debug=true"]
    assert "noc:<redacted>@" in pages["/config"]
    assert "config reload failed" in stderr
    token = base64.b64encode(f"noc:{SECRET}".encode()).decode()
    for name, text in pages.items():
        assert SECRET not in text, f"the proxy password leaks in {name}"
        assert token not in text, f"the proxy credentials leak (base64) in {name}"


def wait_until_ready(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exporter exited {process.returncode}: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise AssertionError("exporter not ready in time")


def test_cli_serves_tls_from_web_config(tmp_path, healthy_config, web_pki, free_port):
    pki, server, _ = web_pki
    web = write_web_config(tmp_path, {"tls_server_config": {
        "cert_file": str(server.chain_path), "key_file": str(server.key_path)}})
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(healthy_config),
                                "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{port}"],
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.time() + 20
        while True:
            try:
                status, _, _ = request(port, "/-/healthy", context=client_context(pki))
                break
            except OSError:
                assert time.time() < deadline and process.poll() is None
                time.sleep(0.1)
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert f"listening on https://127.0.0.1:{port}" in stderr


def _served_leaf_serial(port: int) -> int:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            from cryptography import x509 as _x509

            return _x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_sighup_rotates_the_certificate_and_users_and_refuses_what_needs_a_restart(tmp_path, healthy_config,
                                                                                  web_pki, free_port):
    pki, server, _ = web_pki
    rotated = pki.issue_leaf(["localhost"])
    web = write_web_config(tmp_path, {
        "tls_server_config": {"cert_file": str(server.chain_path), "key_file": str(server.key_path)},
        "basic_auth_users": {"alice": hashed("old")}})
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(healthy_config),
                                "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{port}"],
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    context = client_context(pki)
    try:
        deadline = time.time() + 20
        while True:
            try:
                request(port, "/-/healthy", context=context)
                break
            except OSError:
                assert time.time() < deadline and process.poll() is None
                time.sleep(0.1)
        assert _served_leaf_serial(port) == server.serial
        assert request(port, "/metrics", context=context, auth=("alice", "old"))[0] == 200

        write_web_config(tmp_path, {
            "tls_server_config": {"cert_file": str(rotated.chain_path), "key_file": str(rotated.key_path)},
            "basic_auth_users": {"bob": hashed("new")}})
        process.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while _served_leaf_serial(port) != rotated.serial:
            assert time.time() < deadline, "the rotated certificate was not served"
            time.sleep(0.1)
        assert request(port, "/metrics", context=context, auth=("alice", "old"))[0] == 401
        assert request(port, "/metrics", context=context, auth=("bob", "new"))[0] == 200

        # A client CA cannot be taken back from a live TLS context: refused, the running config stays.
        write_web_config(tmp_path, {
            "tls_server_config": {"cert_file": str(rotated.chain_path), "key_file": str(rotated.key_path),
                                  "client_auth_type": "RequireAndVerifyClientCert",
                                  "client_ca_file": str(pki.ca_bundle_path)},
            "basic_auth_users": {"carol": hashed("x")}})
        process.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "reload_successful 0.0" not in request(port, "/metrics", context=context, auth=("bob", "new"))[2]:
            assert time.time() < deadline, "the refused reload was not reported"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        stderr = process.stderr.read()
    assert "client_auth_type: changing it needs a restart" in stderr
    assert "Traceback" not in stderr
