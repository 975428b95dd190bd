"""End to end: the emulation against the endpoints' own verdicts, per site.

Two sites of tests/e2e_scenarios.py run with their real exporters: `healthy` (the emulation
validates MAPS) and `winhttp-proxy-missing` (it fails, the article's case). Each site has three
stand-in endpoints: `host --textfile` runs the stand-in MpCmdRun/netsh/reg/powershell once and
writes its file, and a real node_exporter per endpoint serves it. One real Prometheus scrapes
the exporters (job defender-connectivity) and the node_exporters (job node), all with the
site's `site` label, evaluating the shipped rules (every `for:` set to 5s); one Alertmanager
delivers to a webhook.

At `healthy` two of three endpoints fail as the article describes while the emulation passes:
the endpoints lack the WinHTTP proxy the site's config assumes. DefenderEmulationDisagreesWithEndpoints
must reach the webhook for that site, with the counts and hresult; at the other site two of
three endpoints fail as the emulation does, so it must stay silent. The agreement row of the
overview dashboard is evaluated there too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import dashboard_queries
import e2e_scenarios as sc
import nodelab
import promlab
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.squid]

STANDINS = Path(__file__).parent / "standins"
ALERT = "DefenderEmulationDisagreesWithEndpoints"
# Per site: the stand-in scenario of each endpoint.
ENDPOINTS = {
    sc.HEALTHY: ("winhttp_missing", "winhttp_missing", "healthy"),   # disagree with a passing emulation
    sc.WINHTTP: ("winhttp_missing", "winhttp_missing", "healthy"),   # agree with a failing one
}


def _write_textfile(directory: Path, scenario: str) -> None:
    config = directory.parent / "host.yml"
    config.write_text(yaml.safe_dump({"host": {
        "mode": "windows", "timeout": "20s", "mpcmdrun": str(STANDINS / "MpCmdRun.exe"),
        "netsh": str(STANDINS / "netsh"), "reg": str(STANDINS / "reg"), "powershell": str(STANDINS / "powershell")}}))
    result = subprocess.run([sys.executable, "-m", "exporter", "host", "--config.file", str(config),
                             "--textfile", str(directory)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, STANDIN_SCENARIO=scenario), check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def agreement(tmp_path_factory, lab_pki):
    workdir = tmp_path_factory.mktemp("agreement")
    # 5 s, not 0: while Prometheus has scraped only some endpoints, a site may look as if it
    # disagreed for a scrape or two; the shipped 30 minutes sit over that, and so must the test.
    rules = promlab.shorten_for(promlab.SHIPPED_RULE_FILES, workdir / "rules", for_="5s")
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(sc.network(workdir / "net", lab_pki, names=tuple(ENDPOINTS)))
        node_targets = []
        for site, scenarios in ENDPOINTS.items():
            for i, scenario in enumerate(scenarios):
                directory = workdir / "endpoints" / site / f"ws-{i}" / "textfiles"
                directory.mkdir(parents=True)
                _write_textfile(directory, scenario)
                node = stack.enter_context(nodelab.node_exporter(directory))
                node_targets.append({"targets": [node.address], "labels": {"site": site}})
        node_job = {"job_name": "node", "static_configs": node_targets}
        lab = stack.enter_context(promlab.lab(
            workdir / "promlab", [site.scrape_target() for site in net.sites.values()], rule_files=rules,
            job="defender-connectivity", extra_scrape_configs=[node_job]))
        lab.prometheus.wait_for_targets_up(timeout=30)
        endpoints = sum(map(len, ENDPOINTS.values()))
        promlab.wait_until(lambda: lab.prometheus.query_value('count(up{job="node"} == 1)') == endpoints,
                           timeout=30, message="every endpoint's node_exporter scraped")
        yield lab, {name: site.address for name, site in net.sites.items()}


def _wait_value(lab, expr: str, expected: float) -> None:
    """Until `expr` has the one value `expected` (rules follow scrapes by up to an evaluation)."""
    def values():
        return [float(r["value"][1]) for r in lab.query(expr)]
    promlab.wait_until(lambda: values() == [expected], timeout=30,
                       message=lambda: f"{expr} == {expected}, have {values()}")


def _at(site: str, net_sites) -> str:
    """The selector of the site's exporter (the per-site counts are kept per exporter)."""
    return f'site="{site}", instance="{net_sites[site]}"'


def test_the_rules_count_the_endpoints_per_site(agreement):
    lab, exporters = agreement
    for site in ENDPOINTS:
        at = _at(site, exporters)
        _wait_value(lab, f"defender:maps_endpoints_reporting:count{{{at}}}", 3)
        _wait_value(lab, f"defender:maps_endpoints_failing:count{{{at}}}", 2)
        by_cause = f'defender:maps_endpoints_failing:count_by_hresult_cause{{{at}, hresult="0x80072F8F", cause="winhttp_proxy_missing"}}'
        _wait_value(lab, by_cause, 2)
    # The emulation at `healthy` passes (1 of 3 endpoints agree), at the WinHTTP site it fails (2 of 3).
    _wait_value(lab, f"defender:maps_emulated_valid:min{{{_at(sc.HEALTHY, exporters)}}}", 1)
    _wait_value(lab, f"defender:maps_emulated_valid:min{{{_at(sc.WINHTTP, exporters)}}}", 0)
    _wait_value(lab, f"defender:maps_endpoints_agreeing:count{{{_at(sc.HEALTHY, exporters)}}}", 1)
    _wait_value(lab, f"defender:maps_endpoints_agreeing:count{{{_at(sc.WINHTTP, exporters)}}}", 2)


def test_disagreement_reaches_the_webhook_for_that_site_only(agreement):
    lab, exporters = agreement
    alerts = lab.wait_for_webhook(ALERT, timeout=45)
    assert {a["labels"]["site"] for a in alerts} == {sc.HEALTHY}
    alert = alerts[0]
    assert alert["labels"]["severity"] == "info"
    description = alert["annotations"]["description"]
    assert alert["labels"]["instance"] == exporters[sc.HEALTHY]
    for text in (f"At {exporters[sc.HEALTHY]} (site {sc.HEALTHY}) the emulated MAPS verdict is valid",
                 "only 33.33% of the 3 endpoints of the site",
                 "failing: 2 with hr=0x80072F8F (winhttp_proxy_missing)"):
        assert text in description, description
    assert alert["annotations"]["runbook_url"].endswith("#" + ALERT.lower())
    ever = lab.query(f'count_over_time(ALERTS{{alertname="{ALERT}", alertstate="firing", site="{sc.WINHTTP}"}}[1h])')
    assert ever == [], ever


PANELS = {
    "Emulation vs endpoints per site": ("1", "3", "2", "0.3333333333333333"),
    "Failing endpoints by hresult and cause": ("2",),
    "Endpoints agreeing with the emulation": ("0.3333333333333333",),
}


def test_the_dashboard_row_shows_the_disagreement(agreement):
    lab, exporters = agreement
    exprs: dict[str, list[str]] = {}
    for uid, title, expr in dashboard_queries.expressions():
        if title in PANELS:
            exprs.setdefault(title, []).append(expr)
    assert set(exprs) == set(PANELS)
    for title, expected in PANELS.items():
        got = []
        for expr in exprs[title]:
            query = dashboard_queries.substitute(expr, {"job": "defender-connectivity", "site": sc.HEALTHY,
                                                        "instance": exporters[sc.HEALTHY]})
            result = promlab.wait_until(lambda q=query: lab.query(q), timeout=30, message=f"{title}: {query}")
            got.append(result[0]["value"][1])
        assert tuple(got) == expected, (title, got)
