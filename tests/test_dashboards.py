"""The Grafana dashboards (rendered by the mixin, mixin/dashboards/): conventions and queries.

tests/test_mixin.py checks the committed JSON equals the mixin's output. This file evaluates every
panel expression (template variables substituted) in a real, empty Prometheus (tests/promlab.py)
so that a typo in PromQL fails here and not in Grafana.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

import dashboard_queries as dq
import promlab
import promql_ast as ast
from support import known_metric, metric_names

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = dq.dashboards()
RECORDED = {r["record"] for p in promlab.SHIPPED_RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]
            for r in g["rules"] if "record" in r}


def _panels(dashboard: dict) -> list[dict]:
    return dq.panels(dashboard)


def test_the_two_dashboards_ship():
    assert set(COMMITTED) == {"defender-overview.json", "defender-target-detail.json"}


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_dashboard_conventions(name):
    d = COMMITTED[name]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"])
    assert d["schemaVersion"] >= 39
    assert "defender" in d["tags"] and d["title"].startswith("Defender connectivity")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in ("job", "site", "instance", "group"):
        v = variables[var]
        assert v["type"] == "query", var
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert query.startswith("label_values(") and query.endswith(f", {var})"), query
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in _panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]


def test_uids_are_stable_and_dashboards_link_each_other():
    overview, detail = COMMITTED["defender-overview.json"], COMMITTED["defender-target-detail.json"]
    assert overview["uid"] == "defender-connectivity-overview"
    assert detail["uid"] == "defender-connectivity-target"
    assert any(detail["uid"] in link["url"] and link["includeVars"] for link in overview["links"])
    assert any(overview["uid"] in link["url"] and link["includeVars"] for link in detail["links"])
    detail_vars = {v["name"] for v in detail["templating"]["list"]}
    assert {"target", "route"} <= detail_vars
    # The failing-targets table drills down into the detail dashboard with the row's target.
    failing = next(p for p in overview["panels"] if p["title"] == "Currently failing targets")
    url = failing["fieldConfig"]["defaults"]["links"][0]["url"]
    assert detail["uid"] in url and "var-target=${__data.fields.target}" in url


def test_overview_has_the_required_panels():
    panels = {p["title"]: p for p in _panels(COMMITTED["defender-overview.json"])}
    kinds = {p["type"] for p in panels.values()}
    assert {"state-timeline", "status-history", "table", "timeseries", "stat"} <= kinds
    exprs = " ".join(t["expr"] for p in panels.values() for t in p["targets"])
    for needle in ("defender_maps_validation_info", "defender_probe_failure_reason", "histogram_quantile(0.95",
                   "histogram_quantile(0.50", "defender_probe_phase_duration_seconds",
                   "defender_tls_cert_not_after_timestamp_seconds", "defender_tls_intercepted",
                   "defender_crl_next_update_timestamp_seconds", 'ALERTS{alertname=~"Defender.*"'):
        assert needle in exprs, needle


def test_every_expression_uses_known_metrics_and_the_variables():
    exprs = dq.expressions()
    assert len(exprs) > 20
    for uid, title, expr in exprs:
        for name in metric_names(expr):
            assert known_metric(name, RECORDED), f"{uid} / {title}: unknown metric {name}"
        assert "$instance" in expr and "$site" in expr and "$job" in expr, f"{uid} / {title}"


@pytest.mark.parametrize("expr, variables, expected", [
    ('a{job=~"$job"}', {"job": "defender-connectivity"}, 'a{job=~"defender-connectivity"}'),
    ('a{job=~"${job}"}', {"job": ["x", "y"]}, 'a{job=~"(x|y)"}'),
    ('a{job=~"$job"}', {"job": None}, 'a{job=~".*"}'),
    ('a{job=~"$job"}', {"job": "$__all"}, 'a{job=~".*"}'),
    ('a{job=~"$job"}', {}, 'a{job=~".*"}'),
    ('a{t=~"${target:regex}"}', {"target": "https://wdcp.microsoft.com/"}, r'a{t=~"https://wdcp\\.microsoft\\.com/"}'),
    ('a{t="${target:raw}"}', {"target": "https://wdcp.microsoft.com/"}, 'a{t="https://wdcp.microsoft.com/"}'),
    ('a{t=~"${g:pipe}"}', {"g": ["maps", "crl"]}, 'a{t=~"maps|crl"}'),
    ('a{t=~"[[g]]"}', {"g": "maps"}, 'a{t=~"maps"}'),
    ("rate(a[$__rate_interval])", {}, "rate(a[1m])"),
    ("rate(a[$__rate_interval])", {"__rate_interval": "4s"}, "rate(a[4s])"),
])
def test_substitute(expr, variables, expected):
    assert dq.substitute(expr, variables) == expected


def test_every_expression_evaluates_in_prometheus(tmp_path):
    """Substituted with All and with concrete values, every expression parses and runs."""
    cases = [{}, {"job": "defender-connectivity", "site": ["stockholm", "goteborg"], "instance": "127.0.0.1:10100",
                  "group": "maps", "target": "https://wdcp.microsoft.com/", "route": "defender"}]
    with promlab.prometheus(tmp_path, [], rule_files=promlab.SHIPPED_RULE_FILES) as prom:
        for variables in cases:
            for uid, title, expr in dq.expressions():
                prom.query(dq.substitute(expr, variables))  # raises with Prometheus' message


# --- Grafana's dashboard linter (grafana/dashboard-linter), its panel and target rules -----------------

RATE_SENTINEL = "7777s"  # stands for $__rate_interval while the expression is parsed
RATE_SENTINEL_WINDOW = timedelta(seconds=7777)
UNIT_PANELS = {"stat", "timeseries", "gauge", "bargauge"}  # panels that show a number (panel-units-rule)


def _parsed(expr: str):
    return ast.parse(expr.replace("$__rate_interval", RATE_SENTINEL))


def dashboard_lint(dashboard: dict) -> list[str]:
    problems = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query" and v.get("refresh") != 2:
            problems.append(f"[template-on-time-change-reload-rule] {v['name']}: refresh must be 2 (on time range change)")
    for p in dq.panels(dashboard):
        where = f"{dashboard['uid']} / {p['title']}"
        if p["type"] in UNIT_PANELS and not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"[panel-units-rule] {where}: no unit")
        for t in p.get("targets", []):
            tree = _parsed(t["expr"])
            for function, window in ast.range_functions(tree):
                if function in ("rate", "irate", "increase") and window != RATE_SENTINEL_WINDOW:
                    problems.append(f"[target-rate-interval-rule] {where}: {function}() must use [$__rate_interval]")
            for selector in ast.selectors(tree):
                m = ast.matchers(selector)
                for label, variable in (("job", "$job"), ("instance", "$instance"), ("site", "$site")):
                    if m.get(label) != ("=~", variable):
                        problems.append(f"[target-{label}-rule] {where}: {selector.name} lacks {label}=~\"{variable}\"")
    return problems


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_dashboard_linter_panel_and_target_rules(name):
    assert dashboard_lint(COMMITTED[name]) == []


def test_dashboard_lint_finds_what_the_linter_would():
    bad = copy.deepcopy(COMMITTED["defender-overview.json"])
    stat = next(p for p in bad["panels"] if p["type"] == "stat")
    stat["fieldConfig"]["defaults"].pop("unit")
    stat["targets"][0]["expr"] = 'sum(rate(defender_probes_total{job=~"$job", site=~"$site"}[5m]))'
    bad["templating"]["list"][1]["refresh"] = 1
    rules = {p.split("]")[0][1:] for p in dashboard_lint(bad)}
    assert rules == {"panel-units-rule", "target-rate-interval-rule", "target-instance-rule",
                     "template-on-time-change-reload-rule"}
