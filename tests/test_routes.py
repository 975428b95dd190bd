"""Routes as Windows finds them: bypass lists, PAC files, WPAD, fallback lists.

Real sockets everywhere: the PAC file is served by a lab HTTP server, the
proxies are a real Squid (and dead addresses), the PAC runs in the real
sandbox (pypac/dukpy in a bounded worker process). The scenario of the issue:

    the PAC sends   wdcp.microsoft.com      -> PROXY squid
                    crl/www.microsoft.com   -> DIRECT            (refused: blocked in the lab)
                    update.microsoft.com    -> PROXY dead; PROXY squid
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab.servers import Files, Ok, ResetOnAccept, alloc_ip, refused_address
from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, lab_config, run_jobs
from support import CRL_HOSTS, MAPS, MapsLab, assert_invalid

from exporter import metrics as m
from exporter.causes import Cause, Finding
from exporter.config import load_config
from exporter.probes.pac import PacEntry, PacError, PacSandbox, parse_result
from exporter.reasons import Reason
from exporter.routes import bypass_match, wpad_candidates

HERE = Path(__file__).parent
UPDATE = "https://update.microsoft.com/"
PAC_HOST = "pac.lab.test"
PAC_URL = f"http://{PAC_HOST}/proxy.pac"


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("entries, url, match", [
    (("*.contoso.com",), "https://a.contoso.com/", "*.contoso.com"),
    (("*.contoso.com",), "https://contoso.com/", None),
    (("*.CONTOSO.com",), "https://A.Contoso.COM/", "*.contoso.com"),  # config lower-cases entries
    (("<local>",), "http://intranet/x", "<local>"),
    (("<local>",), "http://intranet.contoso.com/x", None),
    (("10.*",), "http://10.1.2.3/x", "10.*"),
    (("10.*",), "http://110.1.2.3/x", None),
    (("https://secure.contoso.com",), "http://secure.contoso.com/", None),
    (("https://secure.contoso.com",), "https://secure.contoso.com/", "https://secure.contoso.com"),
    (("host.contoso.com:8080",), "http://host.contoso.com:8080/", "host.contoso.com:8080"),
    (("host.contoso.com:8080",), "http://host.contoso.com/", None),
])
def test_bypass_list_semantics(entries, url, match):
    entries = tuple(e.lower() for e in entries)
    assert bypass_match(entries, url) == match


def test_wpad_candidates_walk_up_to_two_labels():
    assert wpad_candidates("pc.dept.corp.example.com") == [
        "wpad.pc.dept.corp.example.com", "wpad.dept.corp.example.com", "wpad.corp.example.com", "wpad.example.com"]
    assert wpad_candidates("corp.example") == ["wpad.corp.example"]
    assert wpad_candidates("corp") == ["wpad.corp"]


def test_pac_answers_parse_in_order():
    entries = parse_result("PROXY a.example:8080; PROXY [::1]:3128 ;DIRECT; SOCKS s:1080; HTTP b")
    assert [e.label for e in entries] == ["a.example:8080", "[::1]:3128", "DIRECT", "b:80"]
    assert entries[2] == PacEntry(None)
    for nothing in ("", "SOCKS5 s:1080", None, 42, "PROXY"):
        with pytest.raises(PacError):
            parse_result(nothing)


def test_sandbox_bounds_time_and_memory_and_keeps_working():
    """A throwing, a looping and an allocating script are each a PacError within their bounds;
    the sandbox answers the next good script at once."""
    sandbox = PacSandbox(memory_limit=300 << 20)
    good = 'function FindProxyForURL(u, h) { return "PROXY p.example:8080; DIRECT"; }'

    async def main():
        out = {}
        for name, body in (
            ("throws", 'throw new Error("no route for " + h);'),
            ("loops", "while (true) {}"),
            ("allocates", 'var a = []; while (true) { a.push(new Array(1 << 20).join("x") + a.length); }'),
        ):
            started = time.monotonic()
            with pytest.raises(PacError) as info:
                await sandbox.evaluate(
                    f'function FindProxyForURL(u, h) {{ if (h == "x") {{ {body} }} return "DIRECT"; }}', "http://x/", "x")
            out[name] = (str(info.value), time.monotonic() - started)
        out["good"] = await sandbox.evaluate(good, "http://x/", "x")
        return out

    try:
        out = asyncio.run(main())
    finally:
        sandbox.close()
    assert "no route for x" in out["throws"][0]
    assert "ran past its bound of 1 s" in out["loops"][0] and out["loops"][1] < 3
    assert ("memory" in out["allocates"][0] or "ran past" in out["allocates"][0]), out["allocates"]
    assert out["allocates"][1] < 3
    assert out["good"] == "PROXY p.example:8080; DIRECT"
    assert sandbox.kills >= 1


# ------------------------------------------------------------------ the lab scenario


class RoutesLab(MapsLab):
    """MapsLab plus an update host, a PAC server and a Squid that knows every name."""

    def __init__(self, tmp_path, lab_pki, lab_servers, squid_factory, *, leaf=None):
        super().__init__(tmp_path, lab_pki, lab_servers, leaf=leaf)
        self.update = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("update.microsoft.com"))
        self.squid = squid_factory({**self.hosts, "update.microsoft.com": self.update.ip})
        self.dead = "%s:%d" % refused_address()
        self.lab_servers = lab_servers
        self.pac_server = None

    def serve_pac(self, script: str):
        self.pac_server = self.lab_servers.serve(Files({"/proxy.pac": script.encode()}), port=80)
        return self.pac_server

    def issue_pac(self, *, crl: str = "DIRECT") -> str:
        squid = f"127.0.0.1:{self.squid.port}"
        return f"""
        function FindProxyForURL(url, host) {{
            if (dnsDomainIs(host, "wdcp.microsoft.com")) return "PROXY {squid}";
            if (host == "crl.microsoft.com" || host == "www.microsoft.com") return "{crl}";
            if (shExpMatch(host, "*update.microsoft.com")) return "PROXY {self.dead}; PROXY {squid}";
            return "DIRECT";
        }}"""

    def routes_config(self, routes: dict, *, connect_to=(), extra_groups=None, timeout="3s") -> Path:
        groups = {
            "maps": {"targets": [MAPS], "route": ["defender"], "expected_roots": [self._root()]},
            **(extra_groups or {}),
        }
        rules = list(connect_to) + ([self.pac_server.connect_to(PAC_HOST, 80)] if self.pac_server else [])
        return lab_config(self.tmp_path, groups, connect_to=rules, ca_file=self.pki.ca_bundle_path,
                          timeout=timeout, extra={"routes": routes})

    def _root(self):
        from support import root_fingerprint

        return root_fingerprint(self.pki)


def squid_log(squid, needle: str, *, wait: float = 3.0) -> bool:
    """Is `needle` in Squid's access log? A tunnel is logged when it closes: wait a moment for it."""
    deadline = time.monotonic() + wait
    while True:
        if any(needle in line for line in squid.access_log_lines()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def run_maps_twice(config, *, pause: float = 0.0):
    """The maps job run twice by one Assessor (its RouteBook keeps PAC and last-good state):
    ([first, second] outcomes, the RouteBook)."""
    from exporter.assess import Assessor
    from exporter.probes import ProbeEnv

    async def main():
        env = ProbeEnv.from_config(config)
        assessor = Assessor(config, trust=env.trust)
        job = next(j for j in config.jobs() if j.group.name == "maps")
        try:
            first = await assessor.run(job, env)
            await asyncio.sleep(pause)
            return [first, await assessor.run(job, env)], assessor.routes
        finally:
            assessor.routes.close()

    return asyncio.run(main())


def _samples(body: str, name: str):
    return [s for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]


def test_pac_scenario_probes_metrics_and_verdict(tmp_path, lab_pki, lab_servers, squid_factory, free_port):
    """Both routes on the PAC: MAPS through Squid, the update host through Squid after the dead
    proxy, the CRLs DIRECT into a refusing firewall -> crl_blocked, naming the DIRECT entry."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(lab.issue_pac())
    path = lab.routes_config(
        {"defender": {"pac": PAC_URL}, "system": {"pac": PAC_URL}},
        connect_to=lab.refused_crls(),
        extra_groups={"update": {"targets": [UPDATE], "route": ["defender"]}},
    )
    with ExporterThread(path) as exporter:
        exporter.wait_ready()
        status, body = exporter.get("/metrics")
        outcomes = exporter.call(lambda: dict(exporter.exporter.store.latest))
    assert status == 200
    maps = outcomes[("maps", MAPS, "defender")]
    update = outcomes[("update", UPDATE, "defender")]
    squid = f"127.0.0.1:{lab.squid.port}"
    assert maps.probe.success and maps.proxy == squid, (maps.probe.detail, maps.proxy)
    assert update.probe.success and update.proxy == squid, (update.probe.detail, update.proxy)
    assert squid_log(lab.squid, "CONNECT wdcp.microsoft.com:443")
    assert squid_log(lab.squid, "CONNECT update.microsoft.com:443")
    log = lab.squid.access_log_lines()
    # The CRLs went DIRECT (the PAC's choice) into the refusing firewall, never through Squid.
    assert not any("crl.microsoft.com" in line for line in log)
    assert_invalid(maps, reason=Finding.CRL_UNREACHABLE, cause=Cause.CRL_BLOCKED)
    assert "sends it DIRECT (PAC " + PAC_URL in maps.maps.detail, maps.maps.detail
    # The exposition: which proxy carried each probe; the PAC's own series.
    info = {(s.labels["group"], s.labels["proxy"]) for s in _samples(body, m.ROUTE_PROXY_INFO.name)}
    assert info == {("maps", squid), ("update", squid)}
    fetch = _samples(body, m.PAC_FETCH_SUCCESS.name)
    assert {(s.labels["route"], s.labels["url"], s.value) for s in fetch} == {
        ("defender", PAC_URL, 1.0), ("system", PAC_URL, 1.0)}
    evaluations = {(s.labels["route"], s.labels["result"]): s.value
                   for s in _samples(body, m.PAC_EVALUATIONS.name)}
    # Once per target URL (and per CRL URL on the system route), not per probe.
    assert evaluations[("defender", "ok")] == 2 and evaluations[("defender", "error")] == 0
    assert evaluations[("system", "ok")] == len(maps.crl_urls)
    # The PAC file was fetched once per route, not per probe.
    assert lab.pac_server.file_requests("/proxy.pac") == 2


def test_pac_sends_crls_through_the_proxy_valid(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(lab.issue_pac(crl=f"PROXY 127.0.0.1:{lab.squid.port}"))
    path = lab.routes_config({"defender": {"pac": PAC_URL}, "system": {"pac": PAC_URL}},
                             connect_to=lab.refused_crls())
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert outcome.probe.success and outcome.maps.valid, (outcome.probe.detail, outcome.maps)
    assert any(f"GET {lab_pki.issuing.crl_url}" in line for line in lab.squid.access_log_lines())


def test_defender_pac_system_without_configuration_is_the_article_trap(tmp_path, lab_pki, lab_servers,
                                                                        squid_factory):
    """Defender reaches MAPS through its PAC's proxy; the system route has no proxy configuration
    at all: winhttp_proxy_missing, as with a static Defender proxy."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(lab.issue_pac())
    path = lab.routes_config({"defender": {"pac": PAC_URL}}, connect_to=lab.refused_crls())
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert outcome.probe.success and outcome.proxy == f"127.0.0.1:{lab.squid.port}"
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.WINHTTP_PROXY_MISSING, hresult="0x80072F8F")


def test_system_route_from_a_pac_is_not_winhttp_proxy_missing(tmp_path, lab_pki, lab_servers, squid_factory):
    """`netsh winhttp show proxy` would say direct, but SYSTEM gets a proxy from a PAC (a static
    Defender proxy, CRLs DIRECT by the PAC into the firewall): crl_blocked, not the article's cause."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(lab.issue_pac())
    path = lab.routes_config({"defender": {"proxy": lab.squid.url}, "system": {"pac": PAC_URL}},
                             connect_to=lab.refused_crls())
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.CRL_BLOCKED)


def test_pac_unreachable_never_goes_direct(tmp_path, lab_pki, lab_servers, squid_factory):
    """The PAC server refuses; MAPS would answer directly (connect_to), yet the probe fails with
    pac_unreachable and never connects: no silent fallback to DIRECT."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    ip, port = refused_address()
    path = lab.routes_config({"defender": {"pac": f"http://{PAC_HOST}:{port}/proxy.pac"}},
                             connect_to=lab.direct_maps() + [f"{PAC_HOST}:{port}:{ip}:{port}"])
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert not outcome.probe.success and outcome.probe.reason == Reason.PAC_UNREACHABLE, outcome.probe
    assert "connect_refused" in outcome.probe.detail
    assert lab.maps.connections == 0
    assert outcome.proxy == ""
    assert_invalid(outcome, reason=Reason.PAC_UNREACHABLE, cause=Cause.PAC_FAILURE, hresult="0x80072F87")


@pytest.mark.parametrize("body, words", [
    ('throw new Error("broken PAC");', "broken PAC"),
    ("while (true) {}", "ran past its bound of 1 s"),
    ("return null;", "not a string"),
    ('return "SOCKS5 127.0.0.1:1080";', "no PROXY or DIRECT entry"),
])
def test_broken_pac_is_pac_error_and_never_direct(tmp_path, lab_pki, lab_servers, squid_factory, body, words):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(f'function FindProxyForURL(url, host) {{ if (host == "wdcp.microsoft.com") {{ {body} }} '
                  'return "DIRECT"; }')
    path = lab.routes_config({"defender": {"pac": PAC_URL}}, connect_to=lab.direct_maps())
    started = time.monotonic()
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert time.monotonic() - started < 10
    assert outcome.probe.reason == Reason.PAC_ERROR and words in outcome.probe.detail, outcome.probe
    assert lab.maps.connections == 0
    assert_invalid(outcome, reason=Reason.PAC_ERROR, cause=Cause.PAC_FAILURE, hresult="0x80072F86")


def test_looping_pac_the_exporter_keeps_serving(tmp_path, lab_pki, lab_servers, squid_factory, free_port):
    """A PAC that never returns: its route's probes report pac_error, another route's probes go on,
    and /metrics is served throughout."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac("function FindProxyForURL(url, host) { while (true) {} }")
    path = lab.routes_config(
        {"looping": {"pac": PAC_URL}, "defender": {"proxy": lab.squid.url}},
        extra_groups={"update": {"targets": [UPDATE], "route": ["looping", "defender"]}})
    with ExporterThread(path) as exporter:
        exporter.wait_ready()
        status, body = exporter.get("/metrics")
        outcomes = exporter.call(lambda: dict(exporter.exporter.store.latest))
    assert status == 200
    assert outcomes[("update", UPDATE, "looping")].probe.reason == Reason.PAC_ERROR
    assert outcomes[("update", UPDATE, "defender")].probe.success
    assert outcomes[("maps", MAPS, "defender")].probe.success
    errors = {s.labels["route"]: s.value for s in _samples(body, m.PAC_EVALUATIONS.name)
              if s.labels["result"] == "error"}
    assert errors == {"looping": 1.0}


def test_pac_from_a_file_path(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    pac = tmp_path / "proxy.pac"
    pac.write_text(lab.issue_pac())
    path = lab.routes_config({"defender": {"pac": str(pac)}}, connect_to=lab.direct_crls())
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert outcome.probe.success and outcome.proxy == f"127.0.0.1:{lab.squid.port}", outcome.probe.detail


def test_pac_fetched_on_its_own_route_and_revalidated(tmp_path, lab_pki, lab_servers, squid_factory):
    """pac_route: the PAC is fetched through Squid; a second fetch after pac_interval is a
    conditional GET answered 304, and the evaluation is not repeated."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    server = lab.serve_pac(lab.issue_pac())
    squid = squid_factory({**lab.hosts, PAC_HOST: server.ip})
    lab.pac_server = None  # no connect_to: only Squid knows where the PAC host is
    path = lab.routes_config({"office": {"proxy": squid.url},
                              "defender": {"pac": PAC_URL, "pac_route": "office", "pac_interval": "1s"}},
                             connect_to=lab.direct_crls())
    (first, second), book = run_maps_twice(load_config(path), pause=1.1)
    assert first.probe.success and second.probe.success, (first.probe.detail, second.probe.detail)
    assert any(f"GET {PAC_URL}" in line for line in squid.access_log_lines())
    assert server.file_requests("/proxy.pac") == 2 and server.not_modified("/proxy.pac") == 1
    assert book.sources["defender"].last.not_modified
    assert book.evaluations == {("defender", "ok"): 1}


# ------------------------------------------------------------------ bypass and fallback


def test_bypass_list_sends_matching_hosts_direct(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    path = lab.routes_config(
        {"defender": {"proxy": lab.squid.url, "bypass": "<local>;*.wdcp.microsoft.com;wdcp.microsoft.com"}},
        connect_to=lab.direct_maps() + lab.direct_crls(),
        extra_groups={"update": {"targets": [UPDATE], "route": ["defender"]}})
    outcomes = run_jobs(load_config(path))
    maps, update = outcomes[("maps", MAPS, "defender")], outcomes[("update", UPDATE, "defender")]
    assert maps.probe.success and maps.proxy == "DIRECT"
    assert update.probe.success and update.proxy == f"127.0.0.1:{lab.squid.port}"
    assert squid_log(lab.squid, "update.microsoft.com")
    assert not any("wdcp.microsoft.com" in line for line in lab.squid.access_log_lines())


def test_fallback_whose_first_member_is_down(tmp_path, lab_pki, lab_servers, squid_factory):
    """Defender's order: its proxy (down: resets every connection), then the PAC. The first run
    fails over; the next starts with the member that worked (last known good)."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(lab.issue_pac())
    dead = lab_servers.serve(ResetOnAccept())
    path = lab.routes_config({
        "policy_proxy": {"proxy": f"http://{dead.ip}:{dead.port}"},
        "policy_pac": {"pac": PAC_URL},
        "defender": {"fallback": ["policy_proxy", "policy_pac", "system"]},
    }, connect_to=lab.direct_crls())
    (first, second), book = run_maps_twice(load_config(path))
    squid = f"127.0.0.1:{lab.squid.port}"
    assert first.probe.success and first.proxy == squid, first.probe.detail
    assert second.probe.success and second.proxy == squid
    assert book.last_good == {"defender": "policy_pac"}
    assert dead.connections == 1  # the second run started with the member that worked
    assert first.maps.valid, first.maps


def test_fallback_all_members_down_reports_every_attempt(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    ip, port = refused_address()
    path = lab.routes_config({
        "policy_proxy": {"proxy": f"http://{lab.dead}"},
        "policy_pac": {"pac": f"http://{PAC_HOST}:{port}/x.pac"},
        "defender": {"fallback": ["policy_proxy", "policy_pac"]},
    }, connect_to=[f"{PAC_HOST}:{port}:{ip}:{port}"])
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert not outcome.probe.success
    assert "policy_proxy" in outcome.probe.detail and "policy_pac" in outcome.probe.detail, outcome.probe.detail
    assert Reason.PROXY_UNREACHABLE in outcome.probe.detail and Reason.PAC_UNREACHABLE in outcome.probe.detail


# ------------------------------------------------------------------ WPAD by DNS


@pytest.mark.netns
def test_wpad_found_by_dns_walking_up_the_search_domain(tmp_path):
    """In a private network and mount namespace: /etc/resolv.conf says `search dept.lab.test`,
    /etc/hosts names only wpad.lab.test; the PAC found there sends the target to a lab proxy."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare missing (Debian package util-linux)"
    wpad_ip = alloc_ip()
    (tmp_path / "wpad_ip").write_text(wpad_ip)
    (tmp_path / "hosts").write_text(f"127.0.0.1 localhost\n{wpad_ip} wpad.lab.test\n")
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\nsearch dept.lab.test\n")
    result = subprocess.run(
        [unshare, "-m", "-n", "--propagation", "private", sys.executable, str(HERE / "helpers" / "netns_wpad.py"),
         str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["success"], got
    assert got["pac_url"] == "http://wpad.lab.test/wpad.dat"
    assert got["proxy"] == f"127.0.0.1:{got['proxy_port']}"
    assert got["wpad_requests"] == ["GET /wpad.dat HTTP/1.1"]
    assert got["proxy_requests"] == ["GET http://crl.microsoft.com/pki/crl/products/lab.crl HTTP/1.1"]
    # Our /etc/hosts was never touched.
    assert "wpad.lab.test" not in Path("/etc/hosts").read_text()


def test_wpad_without_a_wpad_host_is_pac_unreachable(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    path = lab.routes_config({"defender": {"wpad": True, "wpad_domain": "nowhere.invalid"}},
                             connect_to=lab.direct_maps())
    outcome = run_jobs(load_config(path))[("maps", MAPS, "defender")]
    assert outcome.probe.reason == Reason.PAC_UNREACHABLE
    assert "wpad.nowhere.invalid" in outcome.probe.detail and "DHCP" in outcome.probe.detail
    assert lab.maps.connections == 0


# ------------------------------------------------------------------ check --routes


def test_check_routes_prints_what_each_route_gives_every_target(tmp_path):
    """No probing (nothing listens anywhere): the PAC is evaluated for every catalogue target."""
    pac = tmp_path / "system.pac"
    pac.write_text('function FindProxyForURL(url, host) {'
                   ' if (url.substring(0, 5) == "http:") return "DIRECT";'
                   ' return "PROXY proxy.corp.example:8080; DIRECT"; }')
    config = tmp_path / "config.yml"
    config.write_text(
        "routes:\n"
        "  defender: {proxy: 'http://proxy.corp.example:8080', bypass: '<local>;go.microsoft.com'}\n"
        f"  system: {{pac: '{pac}'}}\n"
        "  broken: {pac: '/nonexistent/x.pac'}\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "check", "--routes", "--format", "json",
                             "--config.file", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # the broken route could not say
    rows = json.loads(result.stdout)["routes"]
    by = {(r["target"], r["route"]): r for r in rows}
    targets = {job.target.url for job in load_config(config).jobs()}
    assert {t for t, _ in by} == targets
    crl = next(t for t in targets if t.startswith("http://crl.microsoft.com/"))
    assert by[(crl, "system")]["proxy"] == "DIRECT"
    assert by[(MAPS, "system")]["proxy"] == "PROXY proxy.corp.example:8080; DIRECT"
    assert by[(MAPS, "defender")]["proxy"] == "PROXY proxy.corp.example:8080"
    bypassed = [r for (t, route), r in by.items() if route == "defender" and "go.microsoft.com" in t]
    assert bypassed and all(r["proxy"].startswith("DIRECT (bypass list entry go.microsoft.com") for r in bypassed)
    assert by[(MAPS, "broken")]["error"].startswith("pac_unreachable: cannot read the PAC file /nonexistent/x.pac")
    text = subprocess.run([sys.executable, "-m", "exporter", "check", "--routes", "--config.file", str(config)],
                          capture_output=True, text=True, timeout=120).stdout
    assert f"maps  {MAPS}" in text and "DIRECT" in text


def test_check_reports_the_hop_that_carried_each_probe(tmp_path, lab_pki, lab_servers, squid_factory):
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    pac = tmp_path / "proxy.pac"
    pac.write_text(lab.issue_pac())
    path = lab.routes_config({"defender": {"pac": str(pac)}}, connect_to=lab.direct_crls(),
                             extra_groups={"update": {"targets": [UPDATE], "route": ["defender"]}})
    result = subprocess.run([sys.executable, "-m", "exporter", "check", "--format", "json", "--config.file", str(path)],
                            capture_output=True, text=True, timeout=120)
    document = json.loads(result.stdout)
    proxies = {t["target"]: t["proxy"] for g in document["groups"] for t in g["targets"]}
    squid = f"127.0.0.1:{lab.squid.port}"
    assert proxies == {MAPS: squid, UPDATE: squid}, result.stdout
    text = subprocess.run([sys.executable, "-m", "exporter", "check", "--config.file", str(path)],
                          capture_output=True, text=True, timeout=120).stdout
    assert f"[via {squid}]" in text


def test_crl_fetch_fails_over_to_the_next_pac_entry(tmp_path, lab_pki, lab_servers, squid_factory):
    """The system route's PAC sends the CRL URLs to a dead proxy first, then to Squid: the
    revocation check goes on through Squid, as WinHTTP fails over, and MAPS validates."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    lab.serve_pac(lab.issue_pac(crl=f"PROXY {lab.dead}; PROXY 127.0.0.1:{lab.squid.port}"))
    path = lab.routes_config({"defender": {"pac": PAC_URL}, "system": {"pac": PAC_URL}},
                             connect_to=lab.refused_crls())
    (first, second), _ = run_maps_twice(load_config(path))
    assert first.maps.valid and second.maps.valid, (first.maps, second.maps)
    assert squid_log(lab.squid, f"GET {lab_pki.issuing.crl_url}")


def test_missing_issuer_fetched_through_the_system_routes_pac(tmp_path, lab_pki, lab_servers, squid_factory):
    """The MAPS server leaves out its intermediate; the system route's PAC sends the caIssuers host
    to a dead proxy first, then to Squid (direct is blocked): the issuer comes through Squid, as
    WinHTTP's failover has it, and MAPS validates. Before, AIA went out on no proxy at all."""
    import dataclasses

    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory,
                    leaf=dataclasses.replace(leaf, chain_path=leaf.cert_path))
    lab.serve_pac(lab.issue_pac(crl=f"PROXY {lab.dead}; PROXY 127.0.0.1:{lab.squid.port}"))
    path = lab.routes_config({"defender": {"pac": PAC_URL}, "system": {"pac": PAC_URL}},
                             connect_to=lab.refused_crls())
    from exporter.assess import Assessor
    from exporter.probes import ProbeEnv

    async def main():
        config = load_config(path)
        env = ProbeEnv.from_config(config)
        assessor = Assessor(config, trust=env.trust)
        env = env.with_system_routes(assessor.system_routes_for)
        try:
            return await assessor.run(next(j for j in config.jobs() if j.group.name == "maps"), env)
        finally:
            assessor.routes.close()

    outcome = asyncio.run(main())
    assert outcome.probe.success, outcome.probe.detail
    assert outcome.probe.tls.aia_fetched == (lab_pki.issuing.cert_url,)
    assert outcome.maps.valid, outcome.maps
    assert squid_log(lab.squid, f"GET {lab_pki.issuing.cert_url}")


def test_ocsp_fails_over_to_the_next_pac_entry(tmp_path, lab_servers, squid_factory):
    """The CRLs are blocked; the PAC sends the OCSP responder to a dead proxy first, then to a Squid
    that reaches it: OCSP decides both certificates through that Squid, as WinHTTP fails over."""
    from lab.ocsp import OCSPResponder
    from lab.pki import LabPKI
    from lab.servers import Handler

    pki = LabPKI.create(tmp_path / "pki", name="Failover", ocsp_url="http://oneocsp.microsoft.com/ocsp")
    lab = RoutesLab(tmp_path, pki, lab_servers, squid_factory)
    responder = lab_servers.serve(Handler(OCSPResponder(pki)), port=80)
    to_ocsp = squid_factory({"oneocsp.microsoft.com": responder.ip})
    lab.serve_pac(f"""
        function FindProxyForURL(url, host) {{
            if (host == "oneocsp.microsoft.com") return "PROXY {lab.dead}; PROXY 127.0.0.1:{to_ocsp.port}";
            if (dnsDomainIs(host, "wdcp.microsoft.com")) return "PROXY 127.0.0.1:{lab.squid.port}";
            return "DIRECT";
        }}""")
    path = lab.routes_config({"defender": {"pac": PAC_URL}, "system": {"pac": PAC_URL}},
                             connect_to=lab.refused_crls() + ["oneocsp.microsoft.com:80:%s:%d" % refused_address()])
    (first, _), _ = run_maps_twice(load_config(path))
    assert first.maps.valid, first.maps
    assert first.maps.revocation.count("ocsp http://oneocsp.microsoft.com/ocsp") == 2, first.maps.revocation
    assert squid_log(to_ocsp, "oneocsp.microsoft.com/ocsp")


def test_crl_blocked_names_the_entry_that_failed(tmp_path, lab_pki, lab_servers, squid_factory):
    """The PAC sends CRLs to a proxy that denies them: crl_blocked, naming that proxy."""
    lab = RoutesLab(tmp_path, lab_pki, lab_servers, squid_factory)
    denying = squid_factory(lab.hosts, deny_domains=list(CRL_HOSTS))
    lab.serve_pac(lab.issue_pac(crl=f"PROXY 127.0.0.1:{denying.port}"))
    path = lab.routes_config({"defender": {"pac": PAC_URL}, "system": {"pac": PAC_URL}},
                             connect_to=lab.refused_crls())
    (first, second), _ = run_maps_twice(load_config(path))
    for outcome in (first, second):  # the second from the cached check: still named
        assert_invalid(outcome, reason=Finding.CRL_UNREACHABLE, cause=Cause.CRL_BLOCKED)
        assert f"sends it 127.0.0.1:{denying.port} (PAC {PAC_URL}" in outcome.maps.detail, outcome.maps.detail
