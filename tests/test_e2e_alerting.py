"""End to end: exporter on the lab -> real Prometheus (shipped rules) -> real Alertmanager -> webhook.

Seven sites run side by side (tests/e2e_scenarios.py): each is a scenario with its own lab servers,
Squid where needed, and its own exporter probing every 2 s. One Prometheus scrapes them all every
second with `site` = the scenario, evaluating the shipped rule files (copied with every `for:`
set to 0s; expressions, labels and annotations as shipped); one Alertmanager sends every alert,
ungrouped, to a webhook receiver. Per scenario the test asserts which alerts reach the webhook
(labels and description) and which are never pending or firing for that site, in Prometheus
(ALERTS over the whole run) or at the webhook.

The same run evaluates every PromQL expression of every dashboard panel (template variables
substituted the way Grafana does) through Prometheus' HTTP API: each must parse and return data
in the scenario it is meant for (PANELS). `promtool check metrics` lints every exporter's page.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dashboard_queries
import e2e_scenarios as sc
import promlab
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.squid]

ROOT = Path(__file__).resolve().parent.parent
JOB = "defender-connectivity"
# Rule evaluations every second, probes every 2 s: after this long (counted from the moment
# Prometheus is up, the exporters having finished their first round before) a scenario has
# been seen through several probe rounds, so an alert that never fired is not merely late.
SETTLE_SECONDS = 10.0
WAIT = 45.0



ALERT_NAMES = frozenset(
    rule["alert"]
    for path in promlab.SHIPPED_RULE_FILES
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
)


@dataclass
class E2E:
    net: sc.LabNetwork
    lab: promlab.Lab
    started: float

    def site(self, name: str) -> sc.Site:
        return self.net.sites[name]

    def settle(self) -> None:
        left = SETTLE_SECONDS - (time.monotonic() - self.started)
        if left > 0:
            time.sleep(left)

    def ever_alerting(self, site: str) -> set[str]:
        """Every alert that was pending or firing for the site at any evaluation of the run."""
        result = self.lab.query(f'count by (alertname) (count_over_time(ALERTS{{site="{site}"}}[1h]))')
        return {r["metric"]["alertname"] for r in result}

    def delivered(self, site: str, *, status: str | None = None) -> list[dict]:
        return [a for a in self.lab.webhook_alerts(status=status) if a["labels"].get("site") == site]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, lab_pki):
    workdir = tmp_path_factory.mktemp("e2e")
    rules = promlab.shorten_for(promlab.SHIPPED_RULE_FILES, workdir / "rules", for_="0s")
    with sc.network(workdir / "net", lab_pki) as net:
        targets = [site.scrape_target() for site in net.sites.values()]
        with promlab.lab(workdir / "promlab", targets, rule_files=rules, job=JOB) as lab:
            lab.prometheus.wait_for_targets_up(timeout=30)
            yield E2E(net, lab, time.monotonic())


# ------------------------------------------------------------------------------------ alerts


def _wait_delivered(e2e: E2E, site: str, alertname: str) -> list[dict]:
    return promlab.wait_until(
        lambda: [a for a in e2e.delivered(site, status="firing") if a["labels"]["alertname"] == alertname],
        timeout=WAIT,
        message=lambda: f"{alertname} for site {site} at the webhook; the site has "
                        f"{sorted({a['labels']['alertname'] for a in e2e.delivered(site)})}, Prometheus has "
                        f"{sorted(e2e.ever_alerting(site))}")


@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_scenario_alerts(e2e, name):
    site = e2e.site(name)
    expect = site.expect
    for alertname, fires in expect.fires.items():
        alerts = _wait_delivered(e2e, name, alertname)
        matching = [a for a in alerts if all(a["labels"].get(k) == v for k, v in fires.labels.items())]
        assert matching, (f"{alertname}: no delivered alert has labels {dict(fires.labels)}: "
                          f"{[a['labels'] for a in alerts]}")
        alert = matching[0]
        assert alert["labels"]["job"] == JOB and alert["labels"]["instance"] == site.address
        description = alert["annotations"]["description"]
        for text in fires.description:
            assert text in description, f"{alertname}: {text!r} not in {description!r}"
        assert alert["annotations"]["runbook_url"].endswith("#" + alertname.lower())

    e2e.settle()
    assert set(expect.notably_silent) <= ALERT_NAMES, set(expect.notably_silent) - ALERT_NAMES
    assert set(expect.fires) <= ALERT_NAMES and not set(expect.notably_silent) & set(expect.fires)
    ever = e2e.ever_alerting(name)
    delivered = {a["labels"]["alertname"] for a in e2e.delivered(name)}
    unexpected = ALERT_NAMES - set(expect.fires)
    assert not ever & unexpected, f"pending or firing in Prometheus for {name}: {sorted(ever & unexpected)}"
    assert not delivered & unexpected, f"delivered to the webhook for {name}: {sorted(delivered & unexpected)}"
    assert ever == delivered == set(expect.fires)


def test_healthy_site_probes_all_succeed(e2e):
    result = e2e.lab.query(f'defender_probe_success{{site="{sc.HEALTHY}"}}')
    groups = {r["metric"]["group"] for r in result}
    assert groups == {"maps", "submission", "update", "adl", "crl"}
    assert len(result) == 10, [r["metric"] for r in result]
    assert all(r["value"][1] == "1" for r in result), [(r["metric"]["target"], r["value"][1]) for r in result]
    assert e2e.lab.prometheus.query_value(f'min(defender_maps_connection_valid{{site="{sc.HEALTHY}"}})') == 1
    assert e2e.lab.prometheus.query_value(f'min(defender_crl_reachable{{site="{sc.HEALTHY}"}})') == 1
    # MAPS went through Squid on the defender route; the CRLs did not (system route, direct).
    squid_log = "\n".join(e2e.site(sc.HEALTHY).squid.access_log_lines())
    assert "CONNECT wdcp.microsoft.com:443" in squid_log and "crl.microsoft.com" not in squid_log


def test_winhttp_maps_endpoint_itself_is_reachable(e2e):
    """The article's trap: the MAPS endpoint answers (probe success 1) while MAPS validation fails."""
    maps = f'{{site="{sc.WINHTTP}", group="maps", target="{sc.MAPS_URL}", route="defender"}}'
    assert e2e.lab.prometheus.query_value(f"defender_probe_success{maps}") == 1
    assert e2e.lab.prometheus.query_value(f"defender_maps_connection_valid{maps}") == 0
    assert e2e.lab.prometheus.query_value(f'min(defender_crl_reachable{{site="{sc.WINHTTP}", route="system"}})') == 0


# ------------------------------------------------------------------------------- dashboards

Check = Callable[[list[dict]], bool]


def _values(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result]


def _any(result):
    return bool(result)


def _finite(result):
    return any(math.isfinite(v) for v in _values(result))


def _positive(result):
    return any(v > 0 for v in _values(result))


def _all(value: float) -> Check:
    def check(result):
        return bool(result) and all(v == value for v in _values(result))
    check.__name__ = f"all == {value:g}"
    return check


def _some(value: float) -> Check:
    def check(result):
        return any(v == value for v in _values(result))
    check.__name__ = f"some == {value:g}"
    return check


def _label(name: str, value: str) -> Check:
    def check(result):
        return any(r["metric"].get(name) == value for r in result)
    check.__name__ = f"a series with {name}={value!r}"
    return check


@dataclass(frozen=True)
class Panel:
    """Where a panel's expression must have data: scenario, variables beyond job/site/instance, check."""

    scenario: str
    check: Check = _any
    group: str | None = None
    target: str | None = None
    route: str | None = None


OVERVIEW = "defender-connectivity-overview"  # the mixin's default uids (mixin/config.libsonnet)
DETAIL = "defender-connectivity-target"
HEALTHY_MAPS = {"group": "maps", "target": sc.MAPS_URL, "route": "defender"}

# (dashboard uid, panel title) -> one Panel per expression of that title, in expressions() order
PANELS: dict[tuple[str, str], list[Panel]] = {
    (OVERVIEW, "MAPS verdict"): [Panel(sc.HEALTHY, _all(1))],
    (OVERVIEW, "Failing probes"): [Panel(sc.WINHTTP, _positive)],
    (OVERVIEW, "TLS interception"): [Panel(sc.INSPECTION, _positive, group="maps")],
    (OVERVIEW, "Intercepted targets"): [Panel(sc.INSPECTION, _some(1), group="maps")],
    (OVERVIEW, "Firing Defender alerts"): [Panel(sc.WINHTTP, _positive)],
    (OVERVIEW, "Oldest probe result"): [Panel(sc.HEALTHY, _finite)],
    (OVERVIEW, "Group status per site"): [Panel(sc.HEALTHY, _all(1))],
    (OVERVIEW, "MAPS validation per site and route"): [Panel(sc.HEALTHY, _all(1))],
    (OVERVIEW, "MAPS verdict: hresult and cause"): [Panel(sc.WINHTTP, _label("cause", "winhttp_proxy_missing"))],
    (OVERVIEW, "Currently failing targets"): [Panel(sc.PORT80, _label("reason", "connect_refused"), group="adl")],
    (OVERVIEW, "Probe latency p50 / p95 per group"): [Panel(sc.HEALTHY, _finite), Panel(sc.HEALTHY, _finite)],
    (OVERVIEW, "Phase breakdown per group"): [Panel(sc.HEALTHY, _label("phase", "tls"))],
    (OVERVIEW, "TLS certificate expiry"): [Panel(sc.HEALTHY, _positive)],
    (OVERVIEW, "CRL freshness"): [Panel(sc.HEALTHY, _positive)],
    (OVERVIEW, "CRL reachability per route"): [Panel(sc.WINHTTP, _some(0))],
    # The article's failure: the system route cannot fetch the CRLs, so the crl group shows 0 there.
    (OVERVIEW, "The certificate engine's downloads (system route)"): [Panel(sc.WINHTTP, _some(0))],
    (OVERVIEW, "Revocation cache: time left"): [Panel(sc.CACHED, _positive, group="maps")],
    (OVERVIEW, "Firing alerts"): [Panel(sc.WINHTTP, _label("alertname", "DefenderMAPSRevocationCheckBlocked"))],
    (DETAIL, "Probe success"): [Panel(sc.HEALTHY, _all(1), **HEALTHY_MAPS)],
    (DETAIL, "Failure reason"): [Panel(sc.PORT80, _label("reason", "connect_refused"), group="adl",
                                       target=sc.ADL_HTTP, route="defender")],
    (DETAIL, "Catalogue entry"): [Panel(sc.HEALTHY, _label("pattern", "*.wdcp.microsoft.com"), **HEALTHY_MAPS)],
    (DETAIL, "Probe duration"): [Panel(sc.HEALTHY, _positive, **HEALTHY_MAPS)],
    (DETAIL, "Phases of the last probe"): [Panel(sc.HEALTHY, _label("phase", "proxy_connect"), **HEALTHY_MAPS)],
    (DETAIL, "Group latency p95"): [Panel(sc.HEALTHY, _finite, **HEALTHY_MAPS)],
    (DETAIL, "Probe results"): [Panel(sc.HEALTHY, _positive, **HEALTHY_MAPS)],
    (DETAIL, "HTTP status code"): [Panel(sc.HEALTHY, _all(200), **HEALTHY_MAPS)],
    (DETAIL, "MAPS validation"): [Panel(sc.WINHTTP, _all(0), **HEALTHY_MAPS)],
    (DETAIL, "MAPS verdict"): [Panel(sc.WINHTTP, _label("reason", "crl_unreachable"), **HEALTHY_MAPS)],
    (DETAIL, "Chain verified"): [Panel(sc.HEALTHY, _all(1), **HEALTHY_MAPS)],
    (DETAIL, "Intercepted"): [Panel(sc.INSPECTION, _all(1), **HEALTHY_MAPS)],
    (DETAIL, "Revoked"): [Panel(sc.REVOKED, _all(1), **HEALTHY_MAPS)],
    (DETAIL, "Certificate chain"): [Panel(sc.HEALTHY, _positive, **HEALTHY_MAPS)],
    (DETAIL, "TLS version"): [Panel(sc.HEALTHY, _any, **HEALTHY_MAPS)],
    (DETAIL, "TLS cipher"): [Panel(sc.HEALTHY, _any, **HEALTHY_MAPS)],
}
# Panels with no data in any lab scenario of this test, and why (add such a panel here with its
# reason rather than leave it unchecked).
_ENDPOINTS = "needs endpoints' textfiles beside the exporter: tests/test_e2e_agreement.py checks its data"
EXEMPT: dict[tuple[str, str], str] = {
    (OVERVIEW, "Emulation vs endpoints per site"): _ENDPOINTS,
    (OVERVIEW, "Failing endpoints by hresult and cause"): _ENDPOINTS,
    (OVERVIEW, "Endpoints agreeing with the emulation"): _ENDPOINTS,
}


def _by_panel() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for uid, title, expr in dashboard_queries.expressions():
        out.setdefault((uid, title), []).append(expr)
    return out


def test_every_panel_has_a_scenario_or_a_reason():
    panels = _by_panel()
    assert not set(PANELS) & set(EXEMPT)
    assert set(panels) == set(PANELS) | set(EXEMPT), (
        f"unmapped: {sorted(set(panels) - set(PANELS) - set(EXEMPT))}; "
        f"stale: {sorted((set(PANELS) | set(EXEMPT)) - set(panels))}")
    for key, specs in PANELS.items():
        assert len(specs) == len(panels[key]), f"{key}: {len(panels[key])} expressions, {len(specs)} specs"


def test_dashboard_expressions_parse_and_have_data(e2e):
    failures = []
    for key, exprs in _by_panel().items():
        for expr in exprs:
            e2e.lab.query(dashboard_queries.substitute(expr))  # all variables "All": must parse
        for expr, spec in zip(exprs, PANELS.get(key, [])):
            site = e2e.site(spec.scenario)
            variables = {"job": JOB, "site": site.name, "instance": site.address, "group": spec.group,
                         "target": spec.target, "route": spec.route}
            query = dashboard_queries.substitute(expr, variables)
            try:
                promlab.wait_until(lambda check=spec.check, query=query: check(e2e.lab.query(query)), timeout=20,
                                   message=f"{key} in {spec.scenario}")
            except TimeoutError:
                failures.append(f"{key[0]} / {key[1]} in {spec.scenario}: {getattr(spec.check, '__name__', spec.check)}"
                                f" not met by {query}\n    -> {e2e.lab.query(query)}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------- promtool


@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_promtool_check_metrics(e2e, name):
    status, page = e2e.site(name).exporter.get("/metrics")
    assert status == 200 and "defender_probe_success" in page
    lint = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True, text=True, timeout=30,
                          check=False)
    assert lint.stdout + lint.stderr == "" and lint.returncode == 0, lint.stdout + lint.stderr
