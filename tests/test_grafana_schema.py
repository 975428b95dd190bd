"""The shipped dashboards against Grafana's own published types (npm @grafana/schema), with tsc.

No Grafana server can run here, so the dashboards are checked the way Grafana's frontend code is:
each dashboard becomes a TypeScript module whose object literals are typed with @grafana/schema's
`Dashboard`, `VariableModel`, `RowPanel` and, per panel type, the panel plugin's own `Options` and
`FieldConfig` (stat, timeseries, table, state-timeline, status-history), and the TypeScript
compiler (npm `typescript`) checks them with excess-property checks on. JSON spells enum members
by value ("background", 1), so every enum is widened to its values (`JsonOf<T>`).

Fields the schema does not describe but Grafana itself writes are removed before the check, each
with its reason (ALLOWED_EXTRAS). The npm packages live in tests/.npm (tests/run.sh installs them).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import dashboard_queries as dq

ROOT = Path(__file__).resolve().parent.parent
NPM = ROOT / "tests" / ".npm"
TSC = NPM / "node_modules" / ".bin" / "tsc"
SCHEMA = NPM / "node_modules" / "@grafana" / "schema"
INSTALL = "bash tests/run.sh installs them: npm install --prefix tests/.npm @grafana/schema typescript"

# Panel type -> the plugin's panelcfg module in @grafana/schema (Options, FieldConfig).
PANEL_MODULES = {
    "stat": "stat/panelcfg/x/StatPanelCfg_types.gen",
    "timeseries": "timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen",
    "table": "table/panelcfg/x/TablePanelCfg_types.gen",
    "state-timeline": "statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen",
    "status-history": "statushistory/panelcfg/x/StatusHistoryPanelCfg_types.gen",
}

# Written by Grafana, absent from @grafana/schema: (where, key) -> why it stays in our JSON.
ALLOWED_EXTRAS = {
    # The query editor stores the query's text beside the structured query; Grafana shows it in
    # the variables list and keeps it when the dashboard is saved.
    ("variable", "definition"): "Grafana's query-variable editor writes it",
}
# The Prometheus data source's query fields (its PromQuery type lives in @grafana/prometheus, not
# in @grafana/schema, whose DataQuery has only the common fields).
PROM_QUERY = """
interface PromQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  range?: boolean;
  interval?: string;
  exemplar?: boolean;
}
"""

PRELUDE = """
import type { Dashboard, RowPanel, VariableModel, FieldConfigSource, FieldConfig, DataQuery, Panel }
  from '@grafana/schema';
%(imports)s

// JSON writes enum members as their values: accept "background" where the type says BigValueColorMode.
type JsonOf<T> =
  T extends string ? `${T}` :
  T extends number ? (`${T}` extends `${infer N extends number}` ? N : T) :
  T extends boolean ? T :
  T extends readonly (infer U)[] ? JsonOf<U>[] :
  T extends object ? { [K in keyof T]: JsonOf<T[K]> } :
  T;
%(prom_query)s
// A panel of one plugin: its own options and custom field config, checked strictly (the veneer's
// FieldConfig lets `custom` hold anything).
type PanelOf<O, C> = Omit<Panel, 'options' | 'fieldConfig' | 'targets'> & {
  options: O;
  fieldConfig: Omit<FieldConfigSource, 'defaults'> & { defaults: Omit<FieldConfig, 'custom'> & { custom?: C } };
  targets: PromQuery[];
};
type DashboardShell = Omit<Dashboard, 'panels' | 'templating'> & { panels: unknown[]; templating: { list: unknown[] } };
"""


def _strip_extras(dashboard: dict) -> dict:
    d = copy.deepcopy(dashboard)
    for variable in d["templating"]["list"]:
        for (where, key) in ALLOWED_EXTRAS:
            if where == "variable":
                variable.pop(key, None)
    return d


def typescript_module(dashboard: dict) -> str:
    d = _strip_extras(dashboard)
    imports = "\n".join(f"import type * as P{i} from '@grafana/schema/dist/esm/raw/composable/{module}';"
                        for i, module in enumerate(PANEL_MODULES.values()))
    alias = {kind: f"P{i}" for i, kind in enumerate(PANEL_MODULES)}
    out = [PRELUDE % {"imports": imports, "prom_query": PROM_QUERY}]
    panels, variables = d.pop("panels"), d.pop("templating")["list"]
    out.append(f"export const dashboard: JsonOf<DashboardShell> = "
               f"{json.dumps({**d, 'panels': [], 'templating': {'list': []}}, indent=1)};")
    for i, variable in enumerate(variables):
        out.append(f"export const variable{i}: JsonOf<VariableModel> = {json.dumps(variable, indent=1)};")
    for panel in dq.panels({"panels": panels}) + [p for p in panels if p["type"] == "row"]:
        name = f"panel{panel['id']}"
        if panel["type"] == "row":
            out.append(f"export const {name}: JsonOf<RowPanel> = {json.dumps(panel, indent=1)};")
            continue
        module = alias.get(panel["type"])
        assert module, f"{panel['title']}: no @grafana/schema panelcfg for panel type {panel['type']!r}"
        custom = "Record<string, never>" if panel["type"] == "stat" else f"{module}.FieldConfig"
        out.append(f"// {panel['title']}\n"
                   f"export const {name}: JsonOf<PanelOf<{module}.Options, {custom}>> = {json.dumps(panel, indent=1)};")
    return "\n".join(out) + "\n"


def tsc(modules: dict[str, str]) -> subprocess.CompletedProcess:
    """tsc over `modules` (file name -> source), in a directory below tests/.npm so that the
    packages resolve as they would in a project (package.json `exports` included)."""
    with tempfile.TemporaryDirectory(dir=NPM, prefix="check-") as directory:
        return _tsc(Path(directory), modules)


def _tsc(workdir: Path, modules: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in modules.items():
        (workdir / name).write_text(text)
    (workdir / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "module": "esnext", "moduleResolution": "bundler",
                            "target": "es2022", "skipLibCheck": True, "types": []},
        "files": sorted(modules),
    }))
    return subprocess.run([str(TSC), "-p", str(workdir / "tsconfig.json"), "--pretty", "false"],
                          capture_output=True, text=True, timeout=300, cwd=workdir)


@pytest.fixture(scope="module")
def tools():
    assert TSC.exists(), f"{TSC} missing: {INSTALL}"
    assert (SCHEMA / "package.json").exists(), f"@grafana/schema missing: {INSTALL}"
    assert shutil.which("node"), "node missing (Debian package nodejs)"


def test_dashboards_type_check_against_grafana_schema(tools):
    modules = {f"{Path(name).stem}.ts": typescript_module(d) for name, d in dq.dashboards().items()}
    result = tsc(modules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_finds_what_grafana_would_reject(tools):
    """A misspelt field, an unknown enum value and a wrong type each fail tsc."""
    overview = dq.dashboards()["defender-overview.json"]
    broken = {}
    bad = copy.deepcopy(overview)
    stat = next(p for p in bad["panels"] if p["type"] == "stat")
    stat["options"]["colourMode"] = stat["options"].pop("colorMode")
    broken["misspelt.ts"] = typescript_module(bad)
    bad = copy.deepcopy(overview)
    next(p for p in bad["panels"] if p["type"] == "stat")["options"]["colorMode"] = "rainbow"
    broken["enum.ts"] = typescript_module(bad)
    bad = copy.deepcopy(overview)
    bad["templating"]["list"][1]["refresh"] = "on load"
    broken["type.ts"] = typescript_module(bad)
    result = tsc(broken)
    errors = result.stdout + result.stderr
    for name in broken:
        assert re.search(rf"{re.escape(name)}\(\d+,\d+\): error TS", errors), (name, errors)
