"""The Prometheus/Alertmanager harness (tests/promlab.py) against a static exposition.

Shipped rules with every `for:` shortened to 0s; the MAPS alerts must reach the webhook through a
real Alertmanager, and an alert whose condition is healthy must not.
"""

from __future__ import annotations

import yaml

import promlab

LABELS = 'group="maps",target="https://wdcp.microsoft.com/",route="defender"'
EXPOSITION = f"""\
# TYPE defender_maps_connection_valid gauge
defender_maps_connection_valid{{{LABELS},source="emulated"}} 0
# TYPE defender_maps_validation_info gauge
defender_maps_validation_info{{{LABELS},source="emulated",hresult="0x80072F8F",cause="winhttp_proxy_missing",reason="crl_unreachable"}} 1
# TYPE defender_tls_intercepted gauge
defender_tls_intercepted{{{LABELS}}} 0
"""


def test_shorten_for_rewrites_every_alert(tmp_path):
    paths = promlab.shorten_for(promlab.SHIPPED_RULE_FILES, tmp_path, for_="1s")
    alerts = [r for p in paths for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert alerts and all(a["for"] == "1s" for a in alerts)
    original = yaml.safe_load(promlab.SHIPPED_RULE_FILES[1].read_text())
    first = original["groups"][0]["rules"][0]
    assert alerts[0]["expr"] == first["expr"] and alerts[0]["annotations"] == first["annotations"]


def test_maps_alerts_reach_the_webhook(tmp_path):
    rules = promlab.shorten_for(promlab.SHIPPED_RULE_FILES, tmp_path / "rules", for_="0s")
    with promlab.exposition_server(EXPOSITION) as exposition, \
            promlab.lab(tmp_path, [exposition.address], rule_files=rules, labels={"site": "stockholm"}) as lab:
        lab.prometheus.wait_for_targets_up(timeout=20)
        result = promlab.wait_until(lambda: lab.query("defender_maps_connection_valid"), timeout=20)
        assert result[0]["metric"]["site"] == "stockholm" and result[0]["value"][1] == "0"

        failed = lab.wait_for_webhook("DefenderMAPSConnectionFailed", timeout=30)
        blocked = lab.wait_for_webhook("DefenderMAPSRevocationCheckBlocked", timeout=30)

        assert failed[0]["labels"]["severity"] == "critical"
        assert failed[0]["labels"]["site"] == "stockholm"
        assert "hr=0x80072F8F" in failed[0]["annotations"]["description"]
        assert blocked[0]["labels"]["hresult"] == "0x80072F8F"
        assert "0x80070006" in blocked[0]["annotations"]["description"]
        assert blocked[0]["annotations"]["runbook_url"].endswith("#defendermapsrevocationcheckblocked")

        # The healthy condition stays silent, in Prometheus and at the webhook.
        assert "DefenderTLSInspectionDetected" not in lab.prometheus.alertnames(state=None)
        assert "DefenderTLSInspectionDetected" not in lab.webhook.alertnames(status=None)
        assert {a["labels"]["alertname"] for a in lab.alertmanager.alerts()} >= {
            "DefenderMAPSConnectionFailed", "DefenderMAPSRevocationCheckBlocked"}
