"""Rule checks beyond promtool, the ones pint makes offline, on a real PromQL parser.

- alerts/template: every `$labels.X` an alert's summary or description uses is carried by every
  series its expression returns (after `by`/`without`, vector matching, `or`); a label lost in an
  aggregation renders as an empty string in the page;
- promql/rate: every range of rate()/increase()/... spans at least two scrape intervals of the
  shipped scrape configs (otherwise one missed scrape leaves no two samples to compute from);
- promql/regexp: label regexes are anchored by Prometheus itself, so no explicit ^ or $ (which
  suggests the author thought otherwise) and no `=~` without regex syntax (that is `=`);
- alerts/for: every alert waits a `for` before it fires;
- promql/aggregate: every recording rule keeps job, instance and the site label.

Label sets of the exporter's metrics come from exporter/metrics.py plus the target labels the
scrape configs add (job, instance, site).
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

import promlab
import promql_ast as ast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter import metrics  # noqa: E402

TARGET_LABELS = frozenset({"job", "instance", "site"})
RATE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv"}
SCRAPE_CONFIGS = (ROOT / "docs" / "examples" / "prometheus.yml",
                  ROOT / "deploy" / "kubernetes" / "site" / "servicemonitor.yaml")


def _groups() -> list[dict]:
    return [g for p in promlab.SHIPPED_RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]]


RULES = [r for g in _groups() for r in g["rules"]]
ALERTS = [r for r in RULES if "alert" in r]
RECORDS = [r for r in RULES if "record" in r]


def _seconds(duration: str) -> float:
    return ast.pp.parse_duration(duration).total_seconds()


def labels_of(name: str | None) -> frozenset[str] | None:
    """The labels a metric (or a recording rule's output) has: known for everything the rules use."""
    specs = {s.name: s for s in metrics.ALL}
    for spec in metrics.ALL:
        if spec.type == "histogram":
            specs.setdefault(spec.name + "_bucket", type(spec)(spec.name + "_bucket", "counter", "", spec.labels + ("le",)))
            specs.setdefault(spec.name + "_count", spec)
            specs.setdefault(spec.name + "_sum", spec)
    if name in specs:
        return frozenset(specs[name].labels) | TARGET_LABELS
    if name == "up":
        return TARGET_LABELS
    record = next((r for r in RECORDS if r["record"] == name), None)
    if record is not None:
        return ast.output_labels(record["expr"], labels_of)
    return None


def test_output_labels_follow_aggregation_and_matching():
    known = {"a": frozenset({"job", "instance", "x", "y"}), "b": frozenset({"job", "instance", "pattern", "z"})}
    of = known.get
    assert ast.output_labels("sum by (job, x) (a)", of) == {"job", "x"}
    assert ast.output_labels("sum without (x) (a)", of) == {"job", "instance", "y"}
    assert ast.output_labels("count(a)", of) == frozenset()
    assert ast.output_labels("a * on (job, instance) group_left (pattern) b", of) == {"job", "instance", "x", "y", "pattern"}
    assert ast.output_labels("(sum by (job) (a)) or (sum by (job, x) (a))", of) == {"job"}
    assert ast.output_labels("histogram_quantile(0.9, sum by (job, le) (rate(a[5m])))", of) == {"job"}
    assert ast.output_labels("time() - a > 5", of) == known["a"]
    assert ast.output_labels("a and on (job) b", of) == known["a"]
    assert ast.output_labels("unknown_metric", of) is ast.ANY


# --- alerts/template ---------------------------------------------------------------------------

def template_labels(alert: dict) -> set[str]:
    text = " ".join(str(v) for v in alert.get("annotations", {}).values())
    text += " " + " ".join(str(v) for v in alert.get("labels", {}).values())
    return set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text))


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_labels_in_templates_survive_the_expression(alert):
    carried = ast.output_labels(alert["expr"], labels_of)
    assert carried is not ast.ANY, f"{alert['alert']}: a metric of unknown labels in {alert['expr']}"
    missing = template_labels(alert) - carried
    assert not missing, f"{alert['alert']}: {sorted(missing)} used in templates but not in {sorted(carried)}"


def test_template_check_fails_on_a_lost_label():
    alert = {"alert": "X", "expr": "count by (job, instance) (defender_probe_success == 0) > 0",
             "annotations": {"description": "{{ $labels.target }} at {{ $labels.instance }}"}}
    carried = ast.output_labels(alert["expr"], labels_of)
    assert template_labels(alert) - carried == {"target"}


# --- promql/rate -----------------------------------------------------------------------------------

def scrape_intervals() -> dict[str, float]:
    out = {}
    prom = yaml.safe_load(SCRAPE_CONFIGS[0].read_text())
    default = prom.get("global", {}).get("scrape_interval", "1m")
    for job in prom["scrape_configs"]:
        out[f"{SCRAPE_CONFIGS[0].name}:{job['job_name']}"] = _seconds(job.get("scrape_interval", default))
    monitor = yaml.safe_load(SCRAPE_CONFIGS[1].read_text())
    for endpoint in monitor["spec"]["endpoints"]:
        out[f"ServiceMonitor:{endpoint['port']}"] = _seconds(endpoint["interval"])
    return out


@pytest.mark.parametrize("rule", RULES, ids=[r.get("alert") or r.get("record") for r in RULES])
def test_rate_ranges_cover_two_scrape_intervals(rule):
    longest = max(scrape_intervals().values())
    for function, window in ast.range_functions(rule["expr"]):
        if function in RATE_FUNCTIONS:
            assert window >= timedelta(seconds=2 * longest), (
                f"{function}() over {window} < 2 x the {longest:.0f}s scrape interval of the shipped configs")


def test_scrape_intervals_are_read():
    intervals = scrape_intervals()
    assert len(intervals) >= 2 and all(v > 0 for v in intervals.values()), intervals


# --- promql/regexp ----------------------------------------------------------------------------------

REGEX_SYNTAX = re.compile(r"[.*+?()\[\]{}|\\^$]")


def regex_problems(expr: str) -> list[str]:
    problems = []
    for selector in ast.selectors(expr):
        for label, (op, value) in ast.matchers(selector).items():
            if op not in ("=~", "!~"):
                continue
            if value.startswith("^") or value.endswith("$") and not value.endswith("\\$"):
                problems.append(f'{label}{op}"{value}": Prometheus anchors label regexes; drop ^ and $')
            if not REGEX_SYNTAX.search(value) and "$" not in value:
                problems.append(f'{label}{op}"{value}": no regex syntax, use {"=" if op == "=~" else "!="}')
    return problems


@pytest.mark.parametrize("rule", RULES, ids=[r.get("alert") or r.get("record") for r in RULES])
def test_regexes_are_anchored_as_intended(rule):
    assert regex_problems(rule["expr"]) == []


def test_regex_check_finds_redundant_anchors_and_needless_regexes():
    assert len(regex_problems('a{group=~"^maps$"}')) == 1
    assert len(regex_problems('a{group=~"maps"}')) == 1
    assert regex_problems('a{group=~"maps|crl", job=~"defender-connectivity.*"}') == []


# --- alerts/for, promql/aggregate -----------------------------------------------------------------------

@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_every_alert_waits_before_firing(alert):
    assert "for" in alert, f"{alert['alert']}: no for: (fires on the first evaluation, pages on a blip)"
    assert _seconds(alert["for"]) >= 60, f"{alert['alert']}: for: {alert['for']}"


@pytest.mark.parametrize("record", RECORDS, ids=[r["record"] for r in RECORDS])
def test_recording_rules_keep_the_exporter_and_site(record):
    carried = ast.output_labels(record["expr"], labels_of)
    assert carried is not ast.ANY and TARGET_LABELS <= carried, (record["record"], carried)
