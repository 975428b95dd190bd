"""The alert and recording rules: promtool, mixin conventions, runbooks, metric names, unit tests.

Also validates the shipped Prometheus and Alertmanager examples (docs/examples/) with
`promtool check config` and `amtool check-config`. The Prometheus tools are required:
the test fails, not skips, without them (`apt-get install prometheus prometheus-alertmanager`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import sys

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) without the package installed
    sys.path.insert(0, str(ROOT))

from support import known_metric, lint_alert, metric_names  # noqa: E402

ALERTS_DIR = ROOT / "alerts"
ALERT_RULES = ALERTS_DIR / "defender-connectivity.rules.yml"
RECORDING_RULES = ALERTS_DIR / "defender-connectivity-recording.rules.yml"
RULE_FILES = (ALERT_RULES, RECORDING_RULES)
UNIT_TESTS = sorted((ALERTS_DIR / "tests").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
EXAMPLES = ROOT / "docs" / "examples"
RUNBOOK_BASE = (
    "https://github.com/defender-connectivity-exporter/defender-connectivity-exporter"
    "/blob/main/docs/runbooks.md#")


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: apt-get install -y prometheus prometheus-alertmanager"
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _groups(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]


def _alerts() -> list[dict]:
    return [r for g in _groups(ALERT_RULES) for r in g["rules"] if "alert" in r]


def _records() -> list[dict]:
    return [r for path in RULE_FILES for g in _groups(path) for r in g["rules"] if "record" in r]


ALERTS = _alerts()
ALERT_IDS = [a["alert"] for a in ALERTS]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", RUNBOOKS.read_text(), re.M)}


# --- promtool ----------------------------------------------------------------

def test_promtool_check_rules():
    result = _run(_tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests():
    assert UNIT_TESTS, "no promtool unit tests in alerts/tests/"
    result = _run(_tool("promtool"), "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_lexer_finds_metric_names():
    expr = ('(time() - min without (group, target) (defender_probe_last_run_timestamp_seconds{x="a b"})) > 900 '
            'or on (job) defender:foo:bar * rate(up[5m]) and bool x_bucket offset 5m')
    assert metric_names(expr) == {"defender_probe_last_run_timestamp_seconds", "defender:foo:bar", "up", "x_bucket"}


# --- conventions ---------------------------------------------------------------

def test_lint_alert_finds_what_mixtool_would():
    bad = {"alert": "defender_thing down", "labels": {"severity": "page"},
           "annotations": {"summary": "{{ $labels.instance }} is down", "description": "down"}}
    found = {p.split("[", 1)[1].split("]", 1)[0] for p in lint_alert(bad)}
    assert found == {"alert-name-camelcase", "alert-severity-rule", "alert-for", "alert-summary-style",
                     "alert-description-style", "alert-runbook-url"}
    assert lint_alert(ALERTS[0]) == []


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_alert_follows_mixin_conventions(alert):
    name = alert["alert"]
    assert lint_alert(alert) == []
    assert re.fullmatch(r"Defender(?:[A-Z0-9][A-Za-z0-9]*)+", name), name
    annotations = alert["annotations"]
    assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower(), f"{name}: runbook_url"
    # The description says where: instance, and the target or url when the series has one.
    description = annotations["description"]
    assert "$labels.instance" in description, name


def test_alert_names_unique():
    assert len(ALERT_IDS) == len(set(ALERT_IDS))


def test_required_alerts_present():
    required = {
        "DefenderMAPSConnectionFailed": "critical",
        "DefenderMAPSRevocationCheckBlocked": "critical",
        "DefenderMAPSRevocationCachedOnly": "warning",
        "DefenderTLSInspectionDetected": "critical",
        "DefenderCRLUnreachable": "warning",
        "DefenderCRLStale": "warning",
        "DefenderUpdateEndpointsUnreachable": "warning",
        "DefenderSignatureUpdatePathsDown": "critical",
        "DefenderPort80Blocked": "warning",
        "DefenderSampleSubmissionUnreachable": "warning",
        "DefenderDiagnosticsUnreachable": "info",
        "DefenderProxyAuthenticationRequired": "critical",
        "DefenderEndpointCertificateExpiringSoon": "warning",
        "DefenderProbeLatencyHigh": "warning",
        "DefenderExporterProbesStale": "warning",
        "DefenderExporterConfigReloadFailed": "warning",
        "DefenderHostSignaturesOutdated": "warning",
        "DefenderHostSSLOptionsWeakened": "info",
    }
    got = {a["alert"]: a["labels"]["severity"] for a in ALERTS}
    for name, severity in required.items():
        assert got.get(name) == severity, name


def test_revocation_alert_names_the_article_hresults_and_remedy():
    from exporter.causes import ARTICLE_HRESULTS, Cause
    alert = next(a for a in ALERTS if a["alert"] == "DefenderMAPSRevocationCheckBlocked")
    assert f'cause="{Cause.WINHTTP_PROXY_MISSING}"' in alert["expr"]
    for hresult in ARTICLE_HRESULTS:
        assert hresult in alert["annotations"]["description"]
    assert "WinHTTP proxy" in alert["annotations"]["description"]


def test_label_values_in_rules_belong_to_the_contract():
    from exporter.causes import Cause
    from exporter.reasons import Reason
    from exporter.catalogue import builtin_catalogue
    catalogue = builtin_catalogue()
    groups = set(catalogue["groups"]) | {g for profile in catalogue["profiles"].values() for g in profile}
    for rule in ALERTS + _records():
        expr = rule["expr"]
        for value in re.findall(r'\breason="([^"]+)"', expr):
            assert value in set(Reason), (rule, value)
        for value in re.findall(r'\bcause="([^"]+)"', expr):
            assert value in set(Cause), (rule, value)
        for value in re.findall(r'\bgroup=~?"([^"]+)"', expr):
            assert set(value.split("|")) <= groups, (rule, value)


# --- runbooks ---------------------------------------------------------------------

def test_every_runbook_url_anchor_exists():
    anchors = runbook_anchors()
    for alert in ALERTS:
        url = alert["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        assert url.split("#", 1)[1] in anchors, url


def test_every_runbook_section_is_complete():
    text = RUNBOOKS.read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    for name in ALERT_IDS:
        assert name in sections, f"docs/runbooks.md lacks a section for {name}"
        body = sections[name]
        for part in ("**Meaning.**", "**Affected.**", "**Confirm.**", "**Fix", "**Safe to ignore?**"):
            assert part in body, (name, part)
    extra = set(sections) - set(ALERT_IDS)
    assert not extra, f"runbook sections without an alert: {extra}"
    for tool in ("defender-connectivity-exporter check", "-ValidateMapsConnection", "netsh winhttp show proxy"):
        assert tool in text


def test_slug_is_github_style():
    assert slug("DefenderMAPSConnectionFailed") == "defendermapsconnectionfailed"
    assert slug("How to fix: the WinHTTP proxy") == "how-to-fix-the-winhttp-proxy"


# --- metric names ------------------------------------------------------------------

def test_every_metric_in_rules_is_exported():
    recorded = {r["record"] for r in _records()}
    for rule in ALERTS + _records():
        for name in metric_names(rule["expr"]):
            assert known_metric(name, recorded), f"{rule.get('alert') or rule.get('record')}: unknown metric {name}"
    # Names used inside annotation templates (query "...") too.
    for alert in ALERTS:
        for query in re.findall(r'printf "((?:[^"\\]|\\.)*)"', alert["annotations"]["description"]):
            query = query.encode().decode("unicode_escape")
            for name in metric_names(query):
                assert known_metric(name, recorded), f"{alert['alert']}: unknown metric {name} in a template"


def test_recording_rules_are_named_by_convention_and_used():
    records = _records()
    assert any(r["record"] == "defender:probe_success:ratio_by_group" for r in records)
    for rule in records:
        assert re.fullmatch(r"defender:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
        assert "instance" in rule["expr"] and "job" in rule["expr"] and "site" in rule["expr"], rule["record"]


# --- unit-test coverage ------------------------------------------------------------

def _unit_test_cases() -> list[dict]:
    cases = []
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        for test in doc.get("tests", []):
            cases.extend(test.get("alert_rule_test", []))
    return cases


@pytest.mark.parametrize("name", ALERT_IDS)
def test_every_alert_has_unit_tests_on_both_sides_of_for(name):
    cases = [c for c in _unit_test_cases() if c["alertname"] == name]
    firing = [c for c in cases if c.get("exp_alerts")]
    silent = [c for c in cases if not c.get("exp_alerts")]
    assert firing, f"{name}: no promtool test where it fires"
    assert silent, f"{name}: no promtool test where it is still silent"
    for case in firing:
        for exp in case["exp_alerts"]:
            assert exp.get("exp_labels", {}).get("severity"), name
            assert exp.get("exp_annotations", {}).get("runbook_url", "").endswith("#" + name.lower()), name


# --- deployment examples -----------------------------------------------------------

def test_prometheus_examples_pass_promtool_check_config():
    configs = sorted(EXAMPLES.glob("prometheus*.yml"))
    assert configs, "docs/examples/prometheus.yml missing"
    for config in configs:
        result = _run(_tool("promtool"), "check", "config", str(config))
        assert result.returncode == 0, f"{config.name}: {result.stdout}{result.stderr}"


def test_prometheus_example_scrapes_with_site_label_and_loads_the_rules():
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"].startswith("defender-connectivity"))
    for static in job["static_configs"]:
        assert static["labels"].get("site"), static
        for target in static["targets"]:
            assert target.endswith(":10100"), target
    loaded = {(EXAMPLES / path).resolve() for path in config["rule_files"]}
    assert {path.resolve() for path in RULE_FILES} <= loaded, config["rule_files"]


def test_alertmanager_example_passes_amtool():
    result = _run(_tool("amtool"), "check-config", str(EXAMPLES / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_pages_on_maps_and_tickets_the_rest():
    result = _run(_tool("amtool"), "config", "routes", "test", "--config.file", str(EXAMPLES / "alertmanager.yml"),
                  "--verify.receivers=pager", "alertname=DefenderMAPSConnectionFailed", "severity=critical", "site=stockholm")
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run(_tool("amtool"), "config", "routes", "test", "--config.file", str(EXAMPLES / "alertmanager.yml"),
                  "--verify.receivers=tickets", "alertname=DefenderCRLUnreachable", "severity=warning", "site=stockholm")
    assert result.returncode == 0, result.stdout + result.stderr


def test_runbook_commands_check_with_the_sites_config():
    """`check` without --config.file probes the built-in catalogue directly, bypassing the site's
    routes: every `check` a runbook tells an operator to run names the config file."""
    text = RUNBOOKS.read_text()
    commands = re.findall(r"`(defender-connectivity-exporter check[^`]*)`", text)
    assert commands, "the runbooks name no check command"
    for command in commands:
        assert "--config.file=" in command, f"runbook command without --config.file: {command}"


@pytest.mark.slow
def test_runbook_base_is_one_setting_with_project_urls_and_documented_overrides(tmp_path):
    """The runbook URL is the mixin's runbookURLPattern; its default is pyproject's Runbooks URL;
    the README's commands to point it at internal Git or a wiki work as written (into a tmp dir)."""
    import shlex
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Homepage", "Documentation", "Runbooks", "Changelog", "Issues"} <= set(urls)
    default = re.search(r"runbookURLPattern: '([^']+)'", (ROOT / "mixin" / "config.libsonnet").read_text()).group(1)
    assert default == urls["Runbooks"] + "#%s"
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(python3 mixin/render\.py --out \S+ --config .*)$", readme, re.M)
    assert len(commands) >= 2, "the README shows how to render with an internal Git and a wiki runbook URL"
    if shutil.which("jsonnet") is None:
        pytest.skip("jsonnet not installed")
    for i, command in enumerate(commands):
        args = shlex.split(command)
        pattern = json.loads(args[args.index("--config") + 1])["runbookURLPattern"]
        out = tmp_path / str(i)
        args[args.index("--out") + 1] = str(out)
        args[0] = sys.executable
        subprocess.run(args, cwd=ROOT, check=True, timeout=120, capture_output=True)
        rules = yaml.safe_load((out / "alerts" / "defender-connectivity.rules.yml").read_text())
        alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
        assert alerts and all(r["annotations"]["runbook_url"] == pattern % r["alert"].lower() for r in alerts)
