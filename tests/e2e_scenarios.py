"""The networks of the end-to-end alerting test (tests/test_e2e_alerting.py), one per scenario.

Each scenario is one site: its own lab servers (TLS endpoints on 443, CRL distribution points on
80 serving the lab PKI's published files), its own Squid where the scenario needs a proxy, and
its own exporter (the real Exporter and web app in a thread, probing every 2 s). The test scrapes
all of them from one Prometheus, each with `site` = the scenario's name, so every alert and every
dashboard query is told apart by its site.

    with LabNetwork(workdir, lab_pki) as net:
        site = net.start(WINHTTP)      # servers + Squid + exporter; site.address is host:port
        site.expect                    # what the test asserts

A scenario names every alert that must reach the Alertmanager webhook for its site (with labels
and description text it must carry); every other alert of the shipped rules must never be
pending or firing for that site. `notably_silent` names the look-alikes that matter most (the
revocation-blocked alert in the revoked scenario, ...), so that renaming one of them breaks the
test instead of making its absence trivially true.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import promlab
from lab.pki import LabPKI
from lab.servers import Files, LabServers, Ok, refused_address
from lab.squid import Squid
from support import ExporterThread, lab_config, root_fingerprint

from exporter.catalogue import catalogue_groups

INTERVAL = "2s"
TIMEOUT = "1s"

MAPS_URL = "https://wdcp.microsoft.com/"
# The labels of the MAPS job's series (and so of its alerts).
MAPS_JOB = {"group": "maps", "target": MAPS_URL, "route": "defender"}
SUBMISSION_URL = "https://ussus1eastprod.blob.core.windows.net/"
UPDATE_URL = "https://fe2.update.microsoft.com/"
ADL_HTTPS = "https://go.microsoft.com/"
ADL_HTTP = "http://go.microsoft.com/"
GO_PATTERN = "go.microsoft.com"
# The catalogue's patterns for the targets above (defender_target_info's `pattern` label).
PATTERNS = {
    MAPS_URL: "*.wdcp.microsoft.com",
    SUBMISSION_URL: "ussus1eastprod.blob.core.windows.net",
    UPDATE_URL: "*.update.microsoft.com",
    ADL_HTTPS: GO_PATTERN,
    ADL_HTTP: GO_PATTERN,
}
# The catalogue's CRL group (route system), probed as shipped.
CRL_GROUP: dict[str, Any] = {}

HEALTHY = "healthy"
WINHTTP = "winhttp-proxy-missing"
INSPECTION = "tls-inspection"
REVOKED = "cert-revoked"
PORT80 = "port80-blocked"
PROXY_AUTH = "proxy-auth"
CACHED = "revocation-cached"
SCENARIOS = (HEALTHY, WINHTTP, INSPECTION, REVOKED, PORT80, PROXY_AUTH, CACHED)


@dataclass(frozen=True)
class Fires:
    """An alert that must reach the webhook for the scenario's site."""

    labels: Mapping[str, str] = field(default_factory=dict)  # every one of these, exactly
    description: tuple[str, ...] = ()  # substrings of the description annotation


def emulated_verdict_fails(cause: str, reason: str, hresult: str = "0x80072F8F") -> Fires:
    """DefenderMAPSConnectionFailed for the emulated verdict of the MAPS job: the hresult
    MpCmdRun would print, the cause and the reason in its description."""
    return Fires({**MAPS_JOB, "severity": "critical", "source": "emulated"},
                 (f"hr={hresult}", f"cause {cause}", f"reason {reason}"))


@dataclass(frozen=True)
class Expect:
    fires: Mapping[str, Fires]  # exactly these alerts, and no other, for the site
    notably_silent: tuple[str, ...] = ()


@dataclass
class Site:
    name: str
    config: Path
    exporter: ExporterThread
    expect: Expect
    squid: Squid | None = None
    # Run once every site has finished its first probe round (before Prometheus starts).
    after_first_round: Callable[[], None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.exporter.port}"

    def scrape_target(self) -> dict[str, Any]:
        return {"targets": [self.address], "labels": {"site": self.name}}


class LabNetwork:
    """Owns every server, Squid and exporter of the run; stops them all on exit."""

    def __init__(self, workdir: Path, pki: LabPKI):
        self.workdir = Path(workdir)
        self.pki = pki
        self.servers = LabServers()
        self.sites: dict[str, Site] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LabNetwork:
        self._stack.enter_context(self.servers)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ building blocks

    def _dir(self, *parts: str) -> Path:
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def crl_points(self, *, revoked_serials: tuple[int, ...] = ()) -> list[str]:
        """CRL/AIA servers on port 80, one per host of the PKI's CDP/AIA URLs; connect_to rules."""
        return [rule for rule, _ in self.crl_servers(revoked_serials=revoked_serials)]

    def crl_servers(self, *, revoked_serials: tuple[int, ...] = ()) -> list[tuple[str, Any]]:
        """crl_points, with each rule's server (to stop it later)."""
        by_host: dict[str, dict[str, bytes]] = {}
        files = dict(self.pki.published_files(revoked_serials=revoked_serials))
        # The catalogue's crl group probes real file names of Microsoft's roots and checks what
        # arrives: there the lab publishes its own root's CRL and certificate (trusted via ca_file).
        for target in catalogue_groups()["crl"]["targets"]:
            kind = target["expect"]["content"]
            files[target["url"]] = self.pki.make_crl("root") if kind == "crl" else self.pki.root.der
        for url, data in files.items():
            parts = urlsplit(url)
            by_host.setdefault(parts.hostname, {})[parts.path] = data
        points = []
        for host, files in sorted(by_host.items()):
            server = self.servers.serve(Files(files), port=80)
            points.append((server.connect_to(host, 80), server))
        return points

    def crl_blocked(self) -> list[str]:
        """connect_to rules sending the CRL hosts to an address that refuses connections."""
        ip, port = refused_address()
        hosts = sorted({urlsplit(u).hostname for u in self.pki.published_files()})
        return [f"{host}:80:{ip}:{port}" for host in hosts]

    def squid(self, site: str, hosts: Mapping[str, str], **kwargs: Any) -> Squid:
        squid = Squid(self._dir(site, "squid"), hosts, **kwargs)
        squid.start()
        self._stack.callback(squid.stop)
        return squid

    def exporter(self, site: str, groups: dict[str, Any], **config_kwargs: Any) -> tuple[Path, ExporterThread]:
        path = lab_config(self._dir(site), groups, interval=INTERVAL, timeout=TIMEOUT, **config_kwargs)
        thread = ExporterThread(path, port=promlab.free_port())
        self._stack.enter_context(thread)
        return path, thread

    @staticmethod
    def group(*urls: str, **extra: Any) -> dict[str, Any]:
        """A group of catalogue targets (with their published patterns)."""
        return {"targets": [{"url": url, "pattern": PATTERNS[url]} for url in urls], **extra}

    def pinned(self, *urls: str) -> dict[str, Any]:
        """A group pinned to the lab root (the lab's stand-in for Microsoft's roots)."""
        return self.group(*urls, expected_roots=[root_fingerprint(self.pki)])

    # ------------------------------------------------------------------ the scenarios

    def start(self, name: str) -> Site:
        site = BUILDERS[name](self)
        self.sites[name] = site
        return site

    def wait_ready(self, timeout: float = 30.0) -> None:
        for site in self.sites.values():
            site.exporter.wait_ready(timeout)


def _healthy(net: LabNetwork) -> Site:
    """maps, submission, update and adl through Squid on the defender route; the CRL
    distribution points (and the crl group) answer on the direct system route."""
    hosts = [urlsplit(u).hostname for u in (MAPS_URL, SUBMISSION_URL, UPDATE_URL, ADL_HTTPS)]
    leaf = net.pki.issue_leaf(hosts)
    tls = net.servers.serve(Ok(), port=443, tls=leaf)
    net.servers.serve(Ok(), ip=tls.ip, port=80)  # go.microsoft.com on port 80
    squid = net.squid(HEALTHY, {h: tls.ip for h in hosts})
    path, exporter = net.exporter(HEALTHY, {
        "maps": net.pinned(MAPS_URL),
        "submission": net.pinned(SUBMISSION_URL),
        "update": net.group(UPDATE_URL),
        "adl": net.group(ADL_HTTPS, ADL_HTTP),
        "crl": CRL_GROUP,
    }, routes={"defender": squid.url}, connect_to=net.crl_points(), ca_file=net.pki.ca_bundle_path)
    expect = Expect(
        fires={},
        notably_silent=("DefenderMAPSConnectionFailed", "DefenderMAPSRevocationCheckBlocked",
                        "DefenderExporterProbesStale", "DefenderProbeLatencyHigh"),
    )
    return Site(HEALTHY, path, exporter, expect, squid=squid)


def _winhttp(net: LabNetwork) -> Site:
    """The article's failure: MAPS answers through Squid on the defender route, but the OS's
    direct (system) route cannot fetch the CRLs: no system-wide WinHTTP proxy."""
    leaf = net.pki.issue_leaf("wdcp.microsoft.com")
    tls = net.servers.serve(Ok(), port=443, tls=leaf)
    squid = net.squid(WINHTTP, {"wdcp.microsoft.com": tls.ip})
    path, exporter = net.exporter(WINHTTP, {"maps": net.pinned(MAPS_URL), "crl": CRL_GROUP},
                                  routes={"defender": squid.url}, connect_to=net.crl_blocked(),
                                  ca_file=net.pki.ca_bundle_path)
    expect = Expect(
        fires={
            "DefenderMAPSConnectionFailed": emulated_verdict_fails("winhttp_proxy_missing", "crl_unreachable"),
            "DefenderMAPSRevocationCheckBlocked": Fires(
                {**MAPS_JOB, "severity": "critical", "cause": "winhttp_proxy_missing", "reason": "crl_unreachable",
                 "hresult": "0x80072F8F"},
                ("0x80070006", "netsh winhttp set proxy")),
            "DefenderCRLUnreachable": Fires({"route": "system", "severity": "warning"},
                                            ("configure the system-wide WinHTTP proxy",)),
        },
        notably_silent=("DefenderTLSInspectionDetected", "DefenderProxyAuthenticationRequired",
                        "DefenderPort80Blocked", "DefenderExporterProbesStale", "DefenderExporterDown"),
    )
    return Site(WINHTTP, path, exporter, expect, squid=squid)


def _inspection(net: LabNetwork) -> Site:
    """A TLS-inspecting box re-signs the MAPS connection with a root the machine trusts."""
    bundle = net._dir(INSPECTION) / "trusted-roots.pem"
    bundle.write_bytes(net.pki.root.pem + net.pki.inspection.pem)
    tls = net.servers.serve(Ok(), port=443, tls=net.pki.issue_inspection_leaf("wdcp.microsoft.com"))
    path, exporter = net.exporter(INSPECTION, {"maps": net.pinned(MAPS_URL)},
                                  connect_to=[tls.connect_to("wdcp.microsoft.com", 443)], ca_file=bundle)
    expect = Expect(
        fires={
            "DefenderTLSInspectionDetected": Fires({**MAPS_JOB, "severity": "critical"},
                                                   ("does not end at a Microsoft root",)),
            "DefenderMAPSConnectionFailed": Fires(MAPS_JOB, ("cause tls_inspection", "reason tls_intercepted")),
        },
        notably_silent=("DefenderMAPSRevocationCheckBlocked", "DefenderProxyAuthenticationRequired",
                        "DefenderCRLUnreachable", "DefenderExporterProbesStale"),
    )
    return Site(INSPECTION, path, exporter, expect)


def _revoked(net: LabNetwork) -> Site:
    """The MAPS leaf is on its issuer's CRL, which the system route fetches fine."""
    leaf = net.pki.issue_leaf("wdcp.microsoft.com")
    tls = net.servers.serve(Ok(), port=443, tls=leaf)
    path, exporter = net.exporter(REVOKED, {"maps": net.pinned(MAPS_URL)},
                                  connect_to=[tls.connect_to("wdcp.microsoft.com", 443),
                                              *net.crl_points(revoked_serials=(leaf.serial,))],
                                  ca_file=net.pki.ca_bundle_path)
    expect = Expect(
        fires={"DefenderMAPSConnectionFailed": Fires(
            MAPS_JOB, ("hr=0x80072F8F", "cause cert_revoked", "reason cert_revoked"))},
        notably_silent=("DefenderMAPSRevocationCheckBlocked", "DefenderTLSInspectionDetected",
                        "DefenderCRLUnreachable", "DefenderCRLStale", "DefenderProxyAuthenticationRequired",
                        "DefenderExporterProbesStale"),
    )
    return Site(REVOKED, path, exporter, expect)


def _port80(net: LabNetwork) -> Site:
    """go.microsoft.com answers on 443, its port 80 (which the article requires) is refused."""
    tls = net.servers.serve(Ok(), port=443, tls=net.pki.issue_leaf("go.microsoft.com"))
    ip, port = refused_address()
    connect_to = [tls.connect_to("go.microsoft.com", 443), f"go.microsoft.com:80:{ip}:{port}", *net.crl_points()]
    path, exporter = net.exporter(PORT80, {"adl": net.group(ADL_HTTPS, ADL_HTTP)}, connect_to=connect_to,
                                  ca_file=net.pki.ca_bundle_path)
    expect = Expect(
        fires={"DefenderPort80Blocked": Fires(
            {"group": "adl", "target": ADL_HTTP, "route": "defender", "pattern": GO_PATTERN, "severity": "warning"},
            ("(connect_refused)", "answers on 443"))},
        notably_silent=("DefenderSignatureUpdatePathsDown", "DefenderCRLUnreachable",
                        "DefenderMAPSConnectionFailed", "DefenderProxyAuthenticationRequired",
                        "DefenderExporterProbesStale"),
    )
    return Site(PORT80, path, exporter, expect)


def _proxy_auth(net: LabNetwork) -> Site:
    """Squid asks for credentials; the exporter, like the SYSTEM account, has none."""
    tls = net.servers.serve(Ok(), port=443, tls=net.pki.issue_leaf(["wdcp.microsoft.com", "fe2.update.microsoft.com"]))
    squid = net.squid(PROXY_AUTH, {"wdcp.microsoft.com": tls.ip, "fe2.update.microsoft.com": tls.ip},
                      auth=("noc", "s3cret"))
    path, exporter = net.exporter(PROXY_AUTH, {"maps": net.pinned(MAPS_URL), "update": net.group(UPDATE_URL)},
                                  routes={"defender": squid.url}, connect_to=net.crl_points(),
                                  ca_file=net.pki.ca_bundle_path)
    expect = Expect(
        fires={
            "DefenderProxyAuthenticationRequired": Fires(
                {"route": "defender", "reason": "proxy_auth_required", "severity": "critical"},
                ("2 probe(s) on the defender route", "407 Proxy Authentication Required")),
            "DefenderMAPSConnectionFailed": Fires(
                MAPS_JOB,
                ("hr=0x80190197", "cause proxy_auth", "reason proxy_auth_required")),
            # The update probe gets the 407 as well: none of the update group's probes succeed.
            "DefenderUpdateEndpointsUnreachable": Fires(
                {"group": "update", "severity": "warning"}, (f"{UPDATE_URL} (defender, proxy_auth_required)",)),
        },
        notably_silent=("DefenderTLSInspectionDetected", "DefenderMAPSRevocationCheckBlocked",
                        "DefenderCRLUnreachable", "DefenderExporterProbesStale"),
    )
    return Site(PROXY_AUTH, path, exporter, expect, squid=squid)


def _cached(net: LabNetwork) -> Site:
    """The endpoint cache: MAPS and its CRLs answer for the first probe round, then the CRL hosts
    go dark. A fresh endpoint fails at once (the verdict); endpoints that fetched the CRLs keep
    passing until nextUpdate, a week away: the warning with the time left fires."""
    leaf = net.pki.issue_leaf("wdcp.microsoft.com")
    tls = net.servers.serve(Ok(), port=443, tls=leaf)
    points = net.crl_servers()
    path, exporter = net.exporter(CACHED, {"maps": net.pinned(MAPS_URL)},
                                  connect_to=[tls.connect_to("wdcp.microsoft.com", 443), *(r for r, _ in points)],
                                  ca_file=net.pki.ca_bundle_path)
    expect = Expect(
        fires={
            "DefenderMAPSConnectionFailed": emulated_verdict_fails("crl_blocked", "crl_unreachable"),
            "DefenderMAPSRevocationCachedOnly": Fires(
                {**MAPS_JOB, "severity": "warning"}, ("Newly installed endpoints fail", "6d ")),
            "DefenderCRLUnreachable": Fires({"route": "system", "severity": "warning"}),
        },
        notably_silent=("DefenderMAPSRevocationCheckBlocked", "DefenderTLSInspectionDetected",
                        "DefenderCRLStale", "DefenderExporterProbesStale"),
    )

    def go_dark() -> None:
        for _, server in points:
            server.stop()

    return Site(CACHED, path, exporter, expect, after_first_round=go_dark)


BUILDERS: dict[str, Callable[[LabNetwork], Site]] = {
    HEALTHY: _healthy, WINHTTP: _winhttp, INSPECTION: _inspection, REVOKED: _revoked, PORT80: _port80,
    PROXY_AUTH: _proxy_auth, CACHED: _cached,
}


@contextlib.contextmanager
def network(workdir: Path, pki: LabPKI, names: tuple[str, ...] = SCENARIOS) -> Iterator[LabNetwork]:
    """Every scenario's site started and through its first probe round."""
    with LabNetwork(workdir, pki) as net:
        for name in names:
            net.start(name)
        net.wait_ready()
        for site in net.sites.values():
            if site.after_first_round is not None:
                site.after_first_round()
        yield net
