#!/usr/bin/env python3
"""Build the Grafana dashboards of defender-connectivity-exporter from Python.

    python dashboards/build.py          # writes dashboards/defender-overview.json and
                                        # dashboards/defender-target-detail.json

The JSON files are committed; tests/test_dashboards.py checks they equal what this script builds.
`expressions()` lists every (dashboard, panel title, PromQL expression) and `substitute()` fills in
template variables the way Grafana does, so that a test can evaluate every panel's query through
a real Prometheus (tests/promlab.py).

Conventions (kubernetes-mixin / node-mixin): stable uids, tags, a `${datasource}` variable used by
every panel, job/site/instance/group variables from label_values(), links between the dashboards.
Metric names come from exporter/metrics.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
TAGS = ["defender", "defender-connectivity", "microsoft-defender-antivirus"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

OVERVIEW_UID = "defender-connectivity-overview"
OVERVIEW_TITLE = "Defender connectivity / Overview"
OVERVIEW_FILE = "defender-overview.json"
DETAIL_UID = "defender-connectivity-target"
DETAIL_TITLE = "Defender connectivity / Target detail"
DETAIL_FILE = "defender-target-detail.json"

# Label selectors shared by the panels; every one filters by the template variables.
SEL = 'job=~"$job", site=~"$site", instance=~"$instance"'
SEL_G = SEL + ', group=~"$group"'
SEL_T = SEL_G + ', target=~"$target", route=~"$route"'

OK_FAIL = [{"type": "value", "options": {
    "0": {"text": "FAIL", "color": "red", "index": 0},
    "1": {"text": "OK", "color": "green", "index": 1},
}}]
YES_NO_BAD = [{"type": "value", "options": {
    "0": {"text": "no", "color": "green", "index": 0},
    "1": {"text": "YES", "color": "red", "index": 1},
}}]


def _thresholds(*steps: tuple[float | None, str]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


RED_GREEN = _thresholds((None, "red"), (1, "green"))
RATIO_STEPS = _thresholds((None, "red"), (0.5, "orange"), (1, "green"))
EXPIRY_STEPS = _thresholds((None, "red"), (7 * 86400, "orange"), (14 * 86400, "green"))


# --- building blocks -------------------------------------------------------------------

class _Builder:
    """Hands out panel ids and lays panels out left to right, top to bottom, on the 24-column grid."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False, ref: str = "A") -> dict:
    t = {"datasource": DATASOURCE, "expr": expr, "refId": ref, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def panel(kind: str, title: str, description: str, targets: list[dict], *, unit: str | None = None,
          mappings: list | None = None, thresholds: dict | None = None, options: dict | None = None,
          custom: dict | None = None, transformations: list | None = None, links: list | None = None,
          overrides: list | None = None, min_: float | None = None, max_: float | None = None) -> dict:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if mappings:
        defaults["mappings"] = mappings
    if thresholds:
        defaults["thresholds"] = thresholds
        defaults["color"] = {"mode": "thresholds"}
    if custom:
        defaults["custom"] = custom
    if links:
        defaults["links"] = links
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    p = {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
         "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
         "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
         "options": options or {}}
    if transformations:
        p["transformations"] = transformations
    return p


def info_table(title: str, description: str, expr: str, *, hide: Iterable[str] = (), unit: str | None = None,
               links: list | None = None, value_name: str | None = None, sort_by: str | None = None,
               mappings: list | None = None, thresholds: dict | None = None) -> dict:
    """A table of the label sets an instant query returns (info metrics, failing series)."""
    exclude = {name: True for name in ("Time", "__name__", *hide)}
    if value_name is None:
        exclude["Value"] = True
    organize = {"excludeByName": exclude, "renameByName": {"Value": value_name} if value_name else {}}
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": False}]
    return panel("table", title, description, [target(expr, instant=True, table=True)], unit=unit,
                 links=links, mappings=mappings, thresholds=thresholds, options=options,
                 custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
                 transformations=[{"id": "organize", "options": organize}])


def stat(title: str, description: str, expr: str, legend: str = "", *, unit: str | None = None,
         mappings: list | None = None, thresholds: dict | None = None) -> dict:
    return panel("stat", title, description, [target(expr, legend, instant=True)], unit=unit, mappings=mappings,
                 thresholds=thresholds,
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "background", "graphMode": "none", "textMode": "auto",
                          "justifyMode": "auto", "orientation": "auto"})


def timeseries(title: str, description: str, targets: list[dict], *, unit: str, stacked: bool = False,
               bars: bool = False) -> dict:
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 60 if bars else 10,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stacked else "none", "group": "A"}}
    return panel("timeseries", title, description, targets, unit=unit, custom=custom,
                 options={"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                     "calcs": ["lastNotNull", "max"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}})


def state_timeline(kind: str, title: str, description: str, expr: str, legend: str, *, mappings: list | None,
                   thresholds: dict, unit: str | None = None) -> dict:
    options = {"showValue": "never", "rowHeight": 0.9, "legend": {"displayMode": "list", "placement": "bottom",
                                                               "showLegend": True},
               "tooltip": {"mode": "single", "sort": "none"}}
    if kind == "state-timeline":
        options.update({"mergeValues": True, "alignValue": "left"})
    else:
        options.update({"colWidth": 0.9})
    return panel(kind, title, description, [target(expr, legend)], unit=unit, mappings=mappings,
                 thresholds=thresholds, options=options, custom={"fillOpacity": 80, "lineWidth": 0})


def _variable_links(uid: str, title: str) -> list[dict]:
    return [{"title": title, "type": "link", "url": f"/d/{uid}", "includeVars": True, "keepTime": True,
             "icon": "dashboard", "tags": [], "asDropdown": False, "targetBlank": False, "tooltip": title}]


def _detail_data_link() -> list[dict]:
    url = (f"/d/{DETAIL_UID}?${{__url_time_range}}&var-datasource=${{datasource}}"
           "&var-job=${__data.fields.job}&var-site=${__data.fields.site}&var-instance=${__data.fields.instance}"
           "&var-group=${__data.fields.group}&var-target=${__data.fields.target}&var-route=${__data.fields.route}")
    return [{"title": "Target detail", "url": url, "targetBlank": False}]


# --- template variables -------------------------------------------------------------------

def _datasource_variable() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def _query_variable(name: str, label: str, metric: str, selector: str) -> dict:
    query = f"label_values({metric}{{{selector}}}, {name})" if selector else f"label_values({metric}, {name})"
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "current": {}, "hide": 0, "includeAll": True, "multi": True, "allValue": ".*", "options": [],
            "refresh": 2, "regex": "", "sort": 1, "skipUrlSync": False}


def _variables(*, detail: bool) -> list[dict]:
    variables = [
        _datasource_variable(),
        _query_variable("job", "Job", "defender_exporter_build_info", ""),
        _query_variable("site", "Site", "defender_exporter_build_info", 'job=~"$job"'),
        _query_variable("instance", "Instance", "defender_exporter_build_info", 'job=~"$job", site=~"$site"'),
        _query_variable("group", "Group", "defender_target_info", SEL),
    ]
    if detail:
        variables += [
            _query_variable("target", "Target", "defender_target_info", SEL_G),
            _query_variable("route", "Route", "defender_target_info", SEL_G + ', target=~"$target"'),
        ]
    return variables


def _dashboard(uid: str, title: str, description: str, panels: list[dict], *, detail: bool, links: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": links,
        "templating": {"list": _variables(detail=detail)},
        "panels": panels,
    }


# --- the dashboards -------------------------------------------------------------------------

def overview() -> dict:
    b = _Builder()
    b.row("Verdicts")
    b.add(stat("MAPS verdict", "Cloud-delivered protection (MAPS) per site: FAIL if any validation fails "
               "(the emulation of MpCmdRun -ValidateMapsConnection or a host collector).",
               f"min by (site, instance) (defender_maps_connection_valid{{{SEL}}})", "{{site}} {{instance}}",
               mappings=OK_FAIL, thresholds=RED_GREEN), w=8, h=5)
    b.add(stat("Failing probes", "Probes whose last run failed.",
               f"count(defender_probe_success{{{SEL_G}}} == 0) or vector(0)",
               thresholds=_thresholds((None, "green"), (1, "red"))), w=4, h=5)
    b.add(stat("TLS interception", "Targets whose chain ends at a root outside the group's expected roots.",
               f"count(defender_tls_intercepted{{{SEL_G}}} == 1) or vector(0)",
               thresholds=_thresholds((None, "green"), (1, "red"))), w=4, h=5)
    b.add(stat("Firing Defender alerts", "Alerts of alerts/defender-connectivity.rules.yml firing now.",
               f'count(ALERTS{{alertname=~"Defender.*", alertstate="firing", {SEL}}}) or vector(0)',
               thresholds=_thresholds((None, "green"), (1, "orange"))), w=4, h=5)
    b.add(stat("Oldest probe result", "Age of the oldest cached probe result (DefenderExporterProbesStale at 15m).",
               f"time() - min(defender_probe_last_run_timestamp_seconds{{{SEL_G}}})", unit="s",
               thresholds=_thresholds((None, "green"), (300, "orange"), (900, "red"))), w=4, h=5)
    b.add(state_timeline("state-timeline", "Group status per site",
                         "Share of each group's probes (all targets and routes) that succeeded: "
                         "green all, orange some, red none.",
                         f"avg by (site, instance, group) (defender_probe_success{{{SEL_G}}})",
                         "{{site}} {{instance}} {{group}}", mappings=None, thresholds=RATIO_STEPS, unit="percentunit"),
          w=24, h=10)
    b.add(state_timeline("status-history", "MAPS validation per site and route",
                         "defender_maps_connection_valid, worst of targets and sources.",
                         f"min by (site, instance, route, source) (defender_maps_connection_valid{{{SEL}}})",
                         "{{site}} {{instance}} {{route}} {{source}}", mappings=OK_FAIL, thresholds=RED_GREEN),
          w=24, h=7)
    b.row("Why")
    b.add(info_table("MAPS verdict: hresult and cause",
                     "Failing MAPS validations with the hresult MpCmdRun -ValidateMapsConnection would print, "
                     "the cause and the reason (see docs/runbooks.md).",
                     f"defender_maps_validation_info{{{SEL}}} == 1", hide=("job",), links=_detail_data_link()),
          w=24, h=7)
    b.add(info_table("Currently failing targets", "Every target whose last probe failed, with the reason.",
                     f"defender_probe_failure_reason{{{SEL_G}}} == 1", hide=("job",), links=_detail_data_link()),
          w=24, h=9)
    b.row("Latency")
    b.add(timeseries("Probe latency p50 / p95 per group", "From the defender_probe_latency_seconds histogram.", [
        target("histogram_quantile(0.50, sum by (site, group, le) (rate(defender_probe_latency_seconds_bucket"
               f"{{{SEL_G}}}[$__rate_interval])))", "p50 {{site}} {{group}}"),
        target("histogram_quantile(0.95, sum by (site, group, le) (rate(defender_probe_latency_seconds_bucket"
               f"{{{SEL_G}}}[$__rate_interval])))", "p95 {{site}} {{group}}"),
    ], unit="s"), w=12, h=9)
    b.add(timeseries("Phase breakdown per group", "Average time of each phase of the last probe "
                     "(resolve, connect, proxy_connect, tls, processing, transfer).", [
        target(f"avg by (group, phase) (defender_probe_phase_duration_seconds{{{SEL_G}}})", "{{group}} {{phase}}"),
    ], unit="s", stacked=True, bars=True), w=12, h=9)
    b.row("TLS and CRLs")
    b.add(info_table("TLS certificate expiry", "Time left until notAfter of each presented certificate "
                     "(depth 0 = leaf).",
                     "min by (site, instance, group, target, depth, subject, issuer) "
                     f"(defender_tls_cert_not_after_timestamp_seconds{{{SEL_G}}}) - time()",
                     unit="s", value_name="expires in", sort_by="expires in", thresholds=EXPIRY_STEPS), w=12, h=9)
    b.add(info_table("Intercepted targets", "Targets whose chain does not end at the group's expected roots.",
                     f"max by (site, instance, group, target, route) (defender_tls_intercepted{{{SEL_G}}})",
                     value_name="intercepted", mappings=YES_NO_BAD, sort_by="intercepted"), w=12, h=9)
    b.add(info_table("CRL freshness", "Time left until nextUpdate of each cached CRL (negative: stale).",
                     f"max by (site, instance, url) (defender_crl_next_update_timestamp_seconds{{{SEL}}}) - time()",
                     unit="s", value_name="nextUpdate in", sort_by="nextUpdate in",
                     thresholds=_thresholds((None, "red"), (0, "orange"), (86400, "green"))), w=12, h=8)
    b.add(state_timeline("status-history", "CRL reachability per route",
                         "Whether the CRL distribution points answer on each route (system = WinHTTP).",
                         f"min by (site, instance, route) (defender_crl_reachable{{{SEL}}})",
                         "{{site}} {{instance}} {{route}}", mappings=OK_FAIL, thresholds=RED_GREEN), w=12, h=8)
    b.row("Alerts")
    b.add(info_table("Firing alerts", "Defender alerts firing now (ALERTS).",
                     f'ALERTS{{alertname=~"Defender.*", alertstate="firing", {SEL}}}',
                     hide=("alertstate",)), w=24, h=8)
    return _dashboard(OVERVIEW_UID, OVERVIEW_TITLE,
                      "Can Microsoft Defender Antivirus reach its cloud services from each site, and if not, why.",
                      b.panels, detail=False, links=_variable_links(DETAIL_UID, "Target detail"))


def target_detail() -> dict:
    b = _Builder()
    b.row("Probe")
    b.add(state_timeline("status-history", "Probe success", "defender_probe_success per target and route.",
                         f"defender_probe_success{{{SEL_T}}}", "{{instance}} {{target}} ({{route}})",
                         mappings=OK_FAIL, thresholds=RED_GREEN), w=24, h=8)
    b.add(info_table("Failure reason", "Why the last probe failed.",
                     f"defender_probe_failure_reason{{{SEL_T}}} == 1", hide=("job",)), w=12, h=6)
    b.add(info_table("Catalogue entry", "The published pattern and port each target stands for.",
                     f"defender_target_info{{{SEL_T}}}", hide=("job",)), w=12, h=6)
    b.add(timeseries("Probe duration", "Wall time of the last probe.", [
        target(f"defender_probe_duration_seconds{{{SEL_T}}}", "{{target}} ({{route}})")], unit="s"), w=12, h=8)
    b.add(timeseries("Phases of the last probe", "resolve, connect, proxy_connect, tls, processing, transfer.", [
        target(f"defender_probe_phase_duration_seconds{{{SEL_T}}}", "{{target}} ({{route}}) {{phase}}")],
        unit="s", stacked=True, bars=True), w=12, h=8)
    b.add(timeseries("Group latency p95",
                     "95th percentile of every probe of the target's group on its route (the "
                     "defender_probe_latency_seconds histogram is kept per group and route, not per target).", [
        target("histogram_quantile(0.95, sum by (group, route, le) (rate(defender_probe_latency_seconds_bucket"
               f"{{{SEL_G}, route=~\"$route\"}}[$__rate_interval])))", "p95 {{group}} ({{route}})")],
        unit="s"), w=12, h=8)
    b.add(timeseries("Probe results", "Probes per second by result.", [
        target(f"sum by (target, route, result) (rate(defender_probes_total{{{SEL_T}}}[$__rate_interval]))",
               "{{target}} ({{route}}) {{result}}")], unit="ops"), w=12, h=8)
    b.add(timeseries("HTTP status code", "Status of the last answer (0 = none).", [
        target(f"defender_probe_http_status_code{{{SEL_T}}}", "{{target}} ({{route}})")], unit="none"), w=12, h=8)
    b.add(state_timeline("status-history", "MAPS validation", "defender_maps_connection_valid of the target.",
                         f"defender_maps_connection_valid{{{SEL_T}}}", "{{target}} ({{route}}, {{source}})",
                         mappings=OK_FAIL, thresholds=RED_GREEN), w=12, h=8)
    b.add(info_table("MAPS verdict", "hresult, cause and reason while MAPS validation fails.",
                     f"defender_maps_validation_info{{{SEL_T}}} == 1", hide=("job",)), w=24, h=5)
    b.row("TLS")
    b.add(stat("Chain verified", "The presented chain verifies to a trust anchor for the host name.",
               f"min(defender_tls_chain_verified{{{SEL_T}}})", mappings=OK_FAIL, thresholds=RED_GREEN), w=8, h=4)
    b.add(stat("Intercepted", "The chain ends outside the group's expected roots (TLS inspection).",
               f"max(defender_tls_intercepted{{{SEL_T}}})", mappings=YES_NO_BAD,
               thresholds=_thresholds((None, "green"), (1, "red"))), w=8, h=4)
    b.add(stat("Revoked", "A certificate of the chain is on its issuer's CRL.",
               f"max(defender_tls_cert_revoked{{{SEL_T}}})", mappings=YES_NO_BAD,
               thresholds=_thresholds((None, "green"), (1, "red"))), w=8, h=4)
    b.add(info_table("Certificate chain", "Every presented certificate with its notAfter (depth 0 = leaf).",
                     f"defender_tls_cert_not_after_timestamp_seconds{{{SEL_T}}} * 1000", hide=("job",),
                     unit="dateTimeAsIso", value_name="notAfter", sort_by="depth"), w=24, h=8)
    b.add(info_table("TLS version", "Negotiated by the last probe.",
                     f"defender_tls_version_info{{{SEL_T}}}", hide=("job",)), w=12, h=6)
    b.add(info_table("TLS cipher", "Negotiated by the last probe.",
                     f"defender_tls_cipher_info{{{SEL_T}}}", hide=("job",)), w=12, h=6)
    return _dashboard(DETAIL_UID, DETAIL_TITLE,
                      "One Defender endpoint (target) on one route: probe, phases, TLS chain, MAPS verdict.",
                      b.panels, detail=True, links=_variable_links(OVERVIEW_UID, "Overview"))


DASHBOARDS = {OVERVIEW_FILE: overview, DETAIL_FILE: target_detail}


def build() -> dict[str, dict]:
    """File name -> dashboard JSON model."""
    return {name: make() for name, make in DASHBOARDS.items()}


def render(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def expressions() -> list[tuple[str, str, str]]:
    """Every (dashboard uid, panel title, PromQL expression) of every panel target."""
    out = []
    for dashboard in build().values():
        for p in dashboard["panels"]:
            for t in p.get("targets", []):
                out.append((dashboard["uid"], p["title"], t["expr"]))
    return out


# --- template variable substitution ------------------------------------------------------------

BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}
_ALL = {None, "All", "$__all", ".*"}
_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")


def _regex_escape(value: str) -> str:
    # As Grafana's Prometheus data source does: escaped for a regex inside a PromQL string.
    return re.sub(r"[\\^$*+?.()|\[\]{}]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, variables: Mapping[str, str | list[str] | None] | None = None) -> str:
    """Replace `$var`, `${var}`, `${var:format}` and `[[var]]` the way Grafana does for Prometheus.

    `variables` maps names to a value, a list of values, or None / "All" / "$__all" / [] for All,
    which becomes `.*` (the variables' allValue, for `=~`). Values are regex-escaped (Grafana's
    default for multi-value variables); `:raw` leaves them as they are, `:pipe` joins with `|`,
    `:csv` with `,`. Unknown variables default to All; `$__rate_interval`, `$__interval` and
    `$__range` default to BUILTINS unless given.
    """
    values = {**BUILTINS, **(variables or {})}

    def replace(m: re.Match) -> str:
        name = m.group(1) or m.group(3) or m.group(5)
        fmt = m.group(2) or m.group(4) or "regex"
        value = values.get(name)
        if name in BUILTINS and name not in (variables or {}):
            return BUILTINS[name]
        items = [value] if isinstance(value, str) else list(value or [])
        if not items or any(item in _ALL for item in items):
            return ".*"
        if fmt == "raw":
            return ",".join(items) if len(items) > 1 else items[0]
        if fmt == "pipe":
            return "|".join(items)
        if fmt == "csv":
            return ",".join(items)
        escaped = [_regex_escape(item) for item in items]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return _VAR.sub(replace, expr)


def main() -> None:
    for name, dashboard in build().items():
        (HERE / name).write_text(render(dashboard), encoding="utf-8")
        print(f"wrote dashboards/{name}")


if __name__ == "__main__":
    main()
