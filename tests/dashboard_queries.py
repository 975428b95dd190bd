"""The PromQL of the shipped Grafana dashboards, and Grafana's template-variable substitution.

`expressions()` lists every (dashboard uid, panel title, expression) of dashboards/*.json (which the
mixin renders; see mixin/README.md) and `substitute()` fills in template variables the way
Grafana's Prometheus data source does, so that tests can evaluate every panel's query through a
real Prometheus or VictoriaMetrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILES = tuple(sorted((ROOT / "dashboards").glob("*.json")))


def dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON model, as shipped."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARD_FILES}


def panels(dashboard: dict) -> list[dict]:
    """Every panel that queries (rows excluded, panels inside collapsed rows included)."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def expressions() -> list[tuple[str, str, str]]:
    """Every (dashboard uid, panel title, PromQL expression) of every panel target."""
    return [(d["uid"], p["title"], t["expr"])
            for d in dashboards().values() for p in panels(d) for t in p.get("targets", [])]


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
