"""Many sites, one store: three exporters, two collectors, VictoriaMetrics and a Prometheus receiver.

Three sites of the lab (tests/e2e_scenarios.py: healthy, the article's missing WinHTTP proxy, TLS
inspection), each a real exporter probing its own lab servers through Squid. Two are scraped by a
Prometheus in agent mode, the third by vmagent; both collectors remote-write everything into
VictoriaMetrics and into a Prometheus with the remote-write receiver on, and mark what they send
with an external label `collector`. vmalert evaluates the shipped recording and alert rules
(every `for:` shortened to 0s) against VictoriaMetrics, writes the results back, and sends alerts
to a real Alertmanager, whose webhook the test reads. The overview dashboard's fleet queries
("which sites cannot reach MAPS now, and why") must give the same answer from both stores.

docs/deployment.md ("Many sites, one store") documents the same topology.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pytest
import yaml

import dashboard_queries as dq
import e2e_scenarios as sc
import promlab
import vmlab

pytestmark = [pytest.mark.slow, pytest.mark.squid]

JOB = "defender-connectivity"
SITES = (sc.HEALTHY, sc.WINHTTP, sc.INSPECTION)
AGENT_SITES = SITES[:2]  # through Prometheus in agent mode; the rest through vmagent
WAIT = 45.0
OVERVIEW = "defender-connectivity-overview"


@dataclass
class Fleet:
    net: sc.LabNetwork
    vm: vmlab.VictoriaMetrics
    receiver: promlab.Prometheus
    webhook: promlab.WebhookReceiver
    vmalert: vmlab.Agent
    started: float

    def stores(self) -> dict[str, promlab.Prometheus]:
        return {"victoriametrics": self.vm, "prometheus-receiver": self.receiver}

    def address(self, site: str) -> str:
        return self.net.sites[site].address


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, lab_pki):
    workdir = tmp_path_factory.mktemp("many-sites")
    rules = promlab.shorten_for(promlab.SHIPPED_RULE_FILES, workdir / "rules", for_="0s")
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(sc.network(workdir / "net", lab_pki, names=SITES))
        vm = stack.enter_context(vmlab.victoria_metrics(workdir / "vm"))
        receiver = stack.enter_context(promlab.prometheus(workdir / "receiver", [], remote_write_receiver=True))
        stores = [vm.write_url, f"{receiver.url}/api/v1/write"]
        webhook = stack.enter_context(promlab.webhook_receiver())
        manager = stack.enter_context(promlab.alertmanager(workdir / "alertmanager", webhook.url))
        stack.enter_context(promlab.prometheus(
            workdir / "agent", [net.sites[s].scrape_target() for s in AGENT_SITES], job=JOB, agent=True,
            remote_write=stores, external_labels={"collector": "prometheus-agent"}))
        stack.enter_context(vmlab.vmagent(
            workdir / "vmagent",
            [{"job_name": JOB, "static_configs": [net.sites[s].scrape_target() for s in SITES if s not in AGENT_SITES]}],
            stores, labels={"collector": "vmagent"}))
        alerting = stack.enter_context(vmlab.vmalert(workdir / "vmalert", rules, vm, notifier_url=manager.url))
        yield Fleet(net, vm, receiver, webhook, alerting, time.monotonic())


def _by_site(result: list[dict]) -> dict[str, str]:
    return {r["metric"]["site"]: r["value"][1] for r in result}


def _panel_exprs(title: str) -> list[str]:
    exprs = [e for uid, t, e in dq.expressions() if uid == OVERVIEW and t == title]
    assert exprs, f"the overview has no panel {title!r}"
    return exprs


# --- the stores hold every site ---------------------------------------------------------------

@pytest.mark.parametrize("store", ["victoriametrics", "prometheus-receiver"])
def test_every_site_reaches_the_store_with_site_job_instance_and_collector(fleet, store):
    db = fleet.stores()[store]
    result = promlab.wait_until(
        lambda: (r := db.query("defender_exporter_build_info")) and len(r) == len(SITES) and r,
        timeout=WAIT, message=lambda: f"{len(SITES)} exporters in {store}: {db.query('defender_exporter_build_info')}")
    seen = {r["metric"]["site"]: r["metric"] for r in result}
    assert set(seen) == set(SITES)
    for site, labels in seen.items():
        assert labels["job"] == JOB and labels["instance"] == fleet.address(site)
        assert labels["collector"] == ("prometheus-agent" if site in AGENT_SITES else "vmagent")
    up = promlab.wait_until(lambda: (r := db.query(f'up{{job="{JOB}"}}')) and len(r) == len(SITES) and r,
                            timeout=WAIT, message=f"up for every site in {store}")
    assert {r["value"][1] for r in up} == {"1"}


# --- vmalert: the shipped rules, evaluated against VictoriaMetrics --------------------------------

def test_vmalert_loads_every_shipped_group(fleet):
    groups = promlab._get_json(f"{fleet.vmalert.url}/api/v1/rules")["data"]["groups"]  # Prometheus' API
    shipped = [g["name"] for p in promlab.SHIPPED_RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]]
    assert sorted(g["name"] for g in groups) == sorted(shipped)
    shipped_rules = sum(len(g["rules"]) for p in promlab.SHIPPED_RULE_FILES
                        for g in yaml.safe_load(p.read_text())["groups"])
    assert sum(len(g["rules"]) for g in groups) == shipped_rules


def test_recording_rules_are_written_back_into_victoriametrics(fleet):
    verdicts = promlab.wait_until(
        lambda: len(v := _by_site(fleet.vm.query("defender:maps_connection_valid:min"))) == len(SITES) and v,
        timeout=WAIT, message=lambda: f"defender:maps_connection_valid:min: {fleet.vm.query('defender:maps_connection_valid:min')}")
    assert verdicts == {sc.HEALTHY: "1", sc.WINHTTP: "0", sc.INSPECTION: "0"}


def _delivered(fleet: Fleet, alertname: str, site: str) -> dict:
    def find():
        return [a for a in fleet.webhook.alerts(status="firing")
                if a["labels"].get("alertname") == alertname and a["labels"].get("site") == site]
    return promlab.wait_until(find, timeout=WAIT, message=lambda: (
        f"{alertname} for {site} at the webhook; delivered: "
        f"{sorted({(a['labels']['alertname'], a['labels'].get('site')) for a in fleet.webhook.alerts()})}"))[0]


def test_vmalert_sends_the_sites_alerts_through_alertmanager_with_their_templates(fleet):
    blocked = _delivered(fleet, "DefenderMAPSRevocationCheckBlocked", sc.WINHTTP)
    assert blocked["labels"]["severity"] == "critical" and blocked["labels"]["hresult"] == "0x80072F8F"
    assert "netsh winhttp set proxy" in blocked["annotations"]["description"]
    assert f"(site {sc.WINHTTP})" in blocked["annotations"]["description"]
    failed = _delivered(fleet, "DefenderMAPSConnectionFailed", sc.WINHTTP)
    # The description's `query` template ran in vmalert, against VictoriaMetrics.
    assert "hr=0x80072F8F, cause winhttp_proxy_missing" in failed["annotations"]["description"]
    inspection = _delivered(fleet, "DefenderTLSInspectionDetected", sc.INSPECTION)
    assert inspection["labels"]["collector"] == "vmagent"
    assert inspection["annotations"]["runbook_url"].endswith("#defendertlsinspectiondetected")


def test_the_healthy_site_raises_nothing(fleet):
    _delivered(fleet, "DefenderMAPSConnectionFailed", sc.INSPECTION)  # evaluation is well under way
    left = 5.0 - (time.monotonic() - fleet.started)
    if left > 0:
        time.sleep(left)
    alerts = promlab._get_json(f"{fleet.vmalert.url}/api/v1/alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["labels"].get("site") == sc.HEALTHY]
    assert not [a for a in fleet.webhook.alerts() if a["labels"].get("site") == sc.HEALTHY]


# --- the dashboards' fleet queries, from either store ------------------------------------------

def _fleet_answer(db: promlab.Prometheus) -> dict:
    """Which sites cannot reach MAPS now, and why: the overview's MAPS panels, variables at All."""
    (verdict_expr,) = _panel_exprs("MAPS verdict")
    (why_expr,) = _panel_exprs("MAPS verdict: hresult and cause")
    verdict = _by_site(db.query(dq.substitute(verdict_expr)))
    why = sorted((r["metric"]["site"], r["metric"]["target"], r["metric"]["route"], r["metric"]["cause"],
                  r["metric"]["hresult"], r["metric"]["reason"]) for r in db.query(dq.substitute(why_expr)))
    return {"verdict": verdict, "why": why}


def test_fleet_queries_answer_alike_from_victoriametrics_and_prometheus(fleet):
    expected_verdict = {sc.HEALTHY: "1", sc.WINHTTP: "0", sc.INSPECTION: "0"}
    answers = {}
    for name, db in fleet.stores().items():
        answers[name] = promlab.wait_until(
            lambda db=db: (a := _fleet_answer(db))["verdict"] == expected_verdict and len(a["why"]) >= 2 and a,
            timeout=WAIT, message=lambda db=db, name=name: f"fleet answer from {name}: {_fleet_answer(db)}")
    assert answers["victoriametrics"] == answers["prometheus-receiver"]
    causes = {(site, cause, hresult) for site, _, _, cause, hresult, _ in answers["victoriametrics"]["why"]}
    assert (sc.WINHTTP, "winhttp_proxy_missing", "0x80072F8F") in causes
    assert {site for site, *_ in causes} == {sc.WINHTTP, sc.INSPECTION}


def test_every_dashboard_query_runs_on_both_stores(fleet):
    """MetricsQL is a superset of PromQL, with differences: every panel must parse and run on both."""
    promlab.wait_until(lambda: len(fleet.vm.query("defender_exporter_build_info")) == len(SITES),
                       timeout=WAIT, message="every site in VictoriaMetrics")
    failures = []
    for name, db in fleet.stores().items():
        for uid, title, expr in dq.expressions():
            try:
                db.query(dq.substitute(expr))
            except promlab.PromLabError as exc:
                failures.append(f"{name}: {uid} / {title}: {exc}")
    assert not failures, "\n".join(failures)
    firing = fleet.vm.query(dq.substitute(_panel_exprs("Firing Defender alerts")[0]))
    assert firing and float(firing[0]["value"][1]) >= 1, "vmalert writes ALERTS back into VictoriaMetrics"
