"""The pages a person reads: the status page at / and the running config at /config.

The status page is plain server-rendered HTML with inline CSS, no scripts and
no external assets, meant for a NOC wall screen: large type, and every status
said in words (OK / FAILING / PENDING) as well as in colour. It reads only the
ResultStore, like /metrics; every value from the config or from a peer is
escaped.

    FAILING: 2 of 5 probes failing, MAPS validation fails on 1
    MAPS connection: INVALID -- winhttp_proxy_missing (0x80072F8F) ... remedy ...
    Needs attention                       (failing and pending targets first, group by group)
      maps  Cloud-delivered protection . 1 of 2 failing
        FAILING  https://wdcp.microsoft.com/  defender  crl_unreachable ...  412 ms  12 s ago  INVALID
        OK       1 other target OK [show]
      reasons: crl_unreachable: ...
    Healthy                               (one line per group)
      OK  update  Signature updates . all 3 targets OK . every 60 s [show the 3 targets]
"""

from __future__ import annotations

import dataclasses
import html
import time
from urllib.parse import urlencode

import yaml

from . import __version__
from .causes import REMEDIES, Cause
from .catalogue import CONFIG_SOURCE
from .config import Config
from .reasons import REASON_DESCRIPTIONS, Reason
from .redact import Redactor
from .state import ResultStore
from .wording import plural

REFRESH_SECONDS = 15
# A group whose failing (or pending) targets all say the same thing is one line, the targets
# behind a <details>: sixty rows of "dns_error" say no more than one, and push the rest off
# the screen. Below this many targets, each keeps its row.
COLLAPSE_AT = 4

# Sized for a NOC: the type grows with the screen (about 16 px at 1366, 19 px at 1920 and 30 px
# at 3840 wide), the table has fixed column shares so a long URL cannot squeeze the reason, and
# nothing is wider than the window (tests/test_statuspage.py checks 1366, 1920 and 3840 px).
_CSS = """
:root { color-scheme: dark; font-size: clamp(15px, calc(8.6px + .55vw), 34px); }
* { box-sizing: border-box; }
body { margin: 0; padding: .8rem 1.4rem; background: #111417; color: #e8eaed; overflow-wrap: anywhere;
       font: 1rem/1.35 "DejaVu Sans", "Segoe UI", system-ui, sans-serif; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
h2 { font-size: 1.2rem; margin: 1rem 0 .3rem; }
a { color: #8ab4f8; overflow-wrap: normal; }
.meta { color: #9aa0a6; font-size: .85rem; }
.banner { font-size: 1.35rem; font-weight: bold; padding: .4rem .8rem; border-radius: .3rem; margin: .6rem 0; }
.banner.ok { background: #0d3b1e; border-left: .6rem solid #34a853; }
.banner.fail { background: #4a1012; border-left: .6rem solid #ea4335; }
.banner.pending { background: #3b3207; border-left: .6rem solid #fbbc04; }
.maps { background: #1e2226; border: 2px solid #ea4335; border-radius: .3rem; padding: .4rem .8rem; margin: .5rem 0; }
.maps.ok { border-color: #34a853; }
.maps h3 { margin: 0 0 .2rem; font-size: 1.15rem; }
.maps p { margin: .2rem 0; }
.remedy { font-size: .95rem; color: #d2d5d9; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th { text-align: left; font-size: .8rem; color: #9aa0a6; padding: .1rem .4rem; font-weight: normal; }
td { padding: .2rem .4rem; border-top: 1px solid #2d3135; vertical-align: top; }
tr.group th { font-size: 1rem; color: #e8eaed; font-weight: bold; padding-top: .5rem; border-top: 2px solid #3c4043; }
tr.group small { color: #9aa0a6; font-weight: normal; }
col.c-status { width: 7.2em; } col.c-route { width: 5.6em; } col.c-latency { width: 4.8em; }
col.c-age { width: 4.8em; } col.c-maps { width: 11.8em; } col.c-debug { width: 4.2em; }
col.c-target { width: 26%; }
.status { display: inline-block; width: 6.6em; text-align: center; font-weight: bold; white-space: nowrap;
          border-radius: .25rem; padding: 0 .3rem; }
.status.ok { background: #34a853; color: #000; }
.status.fail { background: #ea4335; color: #fff; }
.status.pending { background: #fbbc04; color: #000; }
.target { font-family: "DejaVu Sans Mono", monospace; font-size: .9rem; }
.reason { font-weight: bold; }
.detail { font-size: .85rem; color: #c4c7ca; }
/* Two lines of a probe's detail at most; the whole text is the cell's tooltip and in the debug probe. */
td .detail { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2; line-clamp: 2;
             overflow: hidden; }
.cause { font-size: .85rem; overflow-wrap: normal; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; }
details { display: inline-block; vertical-align: top; margin-left: .4rem; }
details summary { cursor: pointer; color: #8ab4f8; }
details[open] { display: block; margin-left: 0; }
details ul { margin: .2rem 0; padding-left: 1.2rem; }
.healthy { list-style: none; padding: 0; margin: .2rem 0; }
.healthy li { padding: .15rem 0; border-top: 1px solid #2d3135; }
.healthy .status { margin-right: .5rem; }
.legend { font-size: .85rem; color: #c4c7ca; margin: .4rem 0; }
footer { margin-top: 1rem; font-size: .8rem; color: #9aa0a6; }
"""

_COLUMNS = ("status", "target", "route", "reason", "latency", "age", "maps", "debug")
_HEADINGS = ('Status', 'Target', 'Route', 'Reason', 'Latency', 'Age', 'MAPS verdict', '')


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _remedy(cause: str) -> str:
    try:
        return REMEDIES[Cause(cause)]
    except (ValueError, KeyError):
        return ""


def _reason_description(reason) -> str:
    try:
        return REASON_DESCRIPTIONS.get(Reason(reason), "")
    except ValueError:
        return ""


def _probe_link(group: str, url: str, route: str) -> str:
    return "probe?" + urlencode({"target": url, "route": route, "group": group, "debug": "true"})


def _healthy(outcome) -> bool:
    return outcome is not None and outcome.probe.success and (outcome.maps is None or outcome.maps.valid)


def render_status(config: Config, store: ResultStore, *, reload_successful: bool = True,
                  now: float | None = None) -> str:
    now = time.time() if now is None else now
    redact = Redactor(config)
    jobs = list(store.jobs.values())
    outcomes = {key: store.latest.get(key) for key in store.jobs}
    failing = sum(1 for o in outcomes.values() if o is not None and not o.probe.success)
    pending = sum(1 for o in outcomes.values() if o is None)
    total = len(jobs)

    maps_invalid = sum(1 for o in outcomes.values() if o is not None and o.maps is not None and not o.maps.valid)
    if failing or maps_invalid:
        problems = [f"{failing} of {total} probes failing"] if failing else []
        if maps_invalid:
            problems.append(f"MAPS validation fails on {maps_invalid}")
        banner = ("fail", "FAILING: " + ", ".join(problems))
    elif pending:
        banner = ("pending", f"PENDING: {pending} of {total} probes have no result yet")
    else:
        banner = ("ok", f"ALL OK: {total} of {total} probes succeed")

    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(banner[1])} - Defender connectivity</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Defender connectivity</h1>",
        f'<div class="meta">defender-connectivity-exporter {_e(__version__)} &middot; configuration '
        f"{_e(redact(config.source))} &middot; "
        + ("last reload OK" if reload_successful else "<strong>LAST RELOAD FAILED</strong> (running the previous configuration)")
        + f' &middot; <a href="metrics">/metrics</a> &middot; <a href="config">/config</a>'
        f" &middot; page refreshes every {REFRESH_SECONDS} s</div>",
        f'<div class="banner {banner[0]}" id="summary">{_e(banner[1])}</div>',
    ]
    parts.append(_maps_section(jobs, outcomes, redact))

    by_group: dict[str, list] = {}
    for job in jobs:
        by_group.setdefault(job.group.name, []).append(job)
    groups = [(group, by_group[group.name]) for group in config.groups if by_group.get(group.name)]
    # Failing (and pending) targets first, group by group; then one line per healthy group.
    attention = [(g, members) for g, members in groups if not all(_healthy(outcomes.get(j.key)) for j in members)]
    healthy = [(g, members) for g, members in groups if all(_healthy(outcomes.get(j.key)) for j in members)]
    reasons_shown: set[str] = set()
    if attention:
        parts.append('<h2 id="attention">Needs attention</h2><table id="failing">')
        parts.append("<colgroup>" + "".join(f'<col class="c-{c}">' for c in _COLUMNS) + "</colgroup>")
        parts.append("<thead><tr>" + "".join(f"<th>{h}</th>" for h in _HEADINGS) + "</tr></thead>")
        for group, members in attention:
            parts.append(_group_rows(group, members, outcomes, now, redact, reasons_shown))
        parts.append("</table>")
        if reasons_shown:
            parts.append('<p class="legend" id="legend">' + " &middot; ".join(
                f'<strong>{_e(r)}</strong>: {_e(_reason_description(r))}' for r in sorted(reasons_shown)
                if _reason_description(r)) + "</p>")
    if healthy:
        parts.append('<h2 id="healthy">Healthy</h2><ul class="healthy">')
        for group, members in healthy:
            parts.append(f'<li id="group-{_e(group.name)}"><span class="status ok">&#10004; OK</span>'
                         f"<strong>{_e(group.name)}</strong> {_e(group.description)} &middot; "
                         f"{_all_ok(len(members))} &middot; every {group.interval:g} s"
                         f"{_target_list(members, outcomes, now)}</li>")
        parts.append("</ul>")

    parts.append(f"<footer>Rendered {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}. "
                 "Latency is the last probe's wall time; a result's age is the time since that probe finished. "
                 'The debug links run one probe now and show every phase (rate limited).</footer>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _all_ok(count: int) -> str:
    return "the target is OK" if count == 1 else f"all {count} targets OK"


def _target_list(members, outcomes, now: float, label: str | None = None) -> str:
    """The targets behind a collapsed line, each with its age and debug link."""
    items = []
    for job in members:
        outcome = outcomes.get(job.key)
        age = _e(_age(now - outcome.probe.finished_at)) if outcome is not None else "no result yet"
        items.append(f'<li><span class="target">{_e(job.target.url)}</span> ({_e(job.route.name)}, {age}) '
                     f'<a href="{_e(_probe_link(job.group.name, job.target.url, job.route.name))}">debug probe</a></li>')
    summary = label or ("show the target" if len(members) == 1 else f"show the {len(members)} targets")
    return f'<details><summary>{_e(summary)}</summary><ul>{"".join(items)}</ul></details>'


def _same_failure(outcome) -> tuple | None:
    """What a failing or pending row says, for collapsing identical ones (None: healthy)."""
    if outcome is None:
        return ("pending",)
    if _healthy(outcome):
        return None
    verdict = outcome.maps
    return ("fail", outcome.probe.success, str(outcome.probe.reason or ""),
            (verdict.valid, verdict.cause, verdict.hresult) if verdict is not None else None)


def _group_rows(group, members, outcomes, now: float, redact: Redactor, reasons_shown: set[str]) -> str:
    bad = [j for j in members if not _healthy(outcomes.get(j.key))]
    good = [j for j in members if _healthy(outcomes.get(j.key))]
    failing = sum(1 for j in bad if outcomes.get(j.key) is not None)
    counts = [f"{failing} of {len(members)} failing"] if failing else []
    if len(bad) > failing:
        counts.append(f"{len(bad) - failing} pending")
    rows = [f'<tr class="group" id="group-{_e(group.name)}"><th colspan="{len(_COLUMNS)}">{_e(group.name)} '
            f"<small>{_e(group.description)} &middot; {', '.join(counts)} &middot; every {group.interval:g} s</small>"
            "</th></tr>"]
    kinds = {_same_failure(outcomes.get(j.key)) for j in bad}
    if len(bad) >= COLLAPSE_AT and len(kinds) == 1:
        # One line for them all: the first one's row, its target cell listing every target.
        first = outcomes.get(bad[0].key)
        listing = _target_list(bad, outcomes, now, label=f"all {len(bad)} targets" if not good
                               else f"{len(bad)} targets")
        rows.append(_row(bad[0], first, now, redact, reasons_shown, target_cell=listing, collapsed=True))
    else:
        rows.extend(_row(job, outcomes.get(job.key), now, redact, reasons_shown) for job in bad)
    if good:
        rows.append(f'<tr class="ok"><td><span class="status ok">&#10004; OK</span></td>'
                    f'<td colspan="{len(_COLUMNS) - 1}">{plural(len(good), "other target")} OK'
                    f"{_target_list(good, outcomes, now)}</td></tr>")
    return "\n".join(rows)


def _row(job, outcome, now: float, redact: Redactor, reasons_shown: set[str], *, target_cell: str | None = None,
         collapsed: bool = False) -> str:
    link = ("" if collapsed else
            f'<a href="{_e(_probe_link(job.group.name, job.target.url, job.route.name))}" '
            'title="run one probe now and show every phase">debug</a>')
    target = target_cell if target_cell is not None else f'<span class="target">{_e(job.target.url)}</span>'
    cells = f'<td class="target-cell">{target}</td><td>{_e(job.route.name)}</td>'
    if outcome is None:
        return (f'<tr class="pending"><td><span class="status pending">PENDING</span></td>{cells}'
                f'<td>no result yet</td><td class="num">-</td><td class="num">-</td><td>-</td><td>{link}</td></tr>')
    p = outcome.probe
    if p.success:
        status = '<span class="status ok">&#10004; OK</span>'
        reason = f"HTTP {p.http_status}" if p.http_status else "reached"
        notes = outcome.findings()
        if notes:
            reason += f'<div class="detail">{_e("; ".join(notes))}</div>'
    else:
        status = '<span class="status fail">&#10008; FAILING</span>'
        reasons_shown.add(str(p.reason))
        example = "e.g. " if collapsed else ""
        reason = (f'<span class="reason" title="{_e(_reason_description(p.reason))}">{_e(p.reason)}</span>'
                  + (f'<div class="detail" title="{_e(redact(p.detail))}">{example}{_e(redact(p.detail))}</div>'
                     if p.detail else ""))
    verdict = outcome.maps
    if verdict is None:
        maps = "-"
    elif verdict.valid:
        maps = '<span class="status ok">&#10004; VALID</span>'
    else:
        maps = (f'<span class="status fail">&#10008; INVALID</span><div class="cause">'
                f'<strong>{_e(verdict.cause)}</strong><br>{_e(verdict.hresult)}</div>')
    cls = "ok" if _healthy(outcome) else "fail"
    return (f'<tr class="{cls}"><td>{status}</td>{cells}<td>{reason}</td>'
            f'<td class="num">{p.duration * 1000:.0f} ms</td>'
            f'<td class="num">{_e(_age(now - p.finished_at))}</td><td>{maps}</td><td>{link}</td></tr>')


def _maps_section(jobs, outcomes, redact: Redactor) -> str:
    maps_jobs = [j for j in jobs if j.group.validate_maps]
    if not maps_jobs:
        return ""
    verdicts = [(j, outcomes[j.key].maps) for j in maps_jobs if outcomes.get(j.key) is not None and outcomes[j.key].maps]
    invalid = [(j, v) for j, v in verdicts if not v.valid]
    if not verdicts:
        return '<div class="maps"><h3>MAPS connection: PENDING</h3><p>No MAPS target has a result yet.</p></div>'
    if not invalid:
        every = "The MAPS probe validates" if len(verdicts) == 1 else f"All {len(verdicts)} MAPS probes validate"
        return (f'<div class="maps ok" id="maps"><h3>MAPS connection: &#10004; VALID</h3>'
                f"<p>{every} as MpCmdRun -ValidateMapsConnection would.</p></div>")
    by_cause: dict[tuple[str, str], list] = {}
    for job, verdict in invalid:
        by_cause.setdefault((verdict.cause, verdict.hresult), []).append((job, verdict))
    parts = [f'<div class="maps" id="maps"><h3>MAPS connection: &#10008; INVALID on {len(invalid)} of '
             f"{len(verdicts)} probes</h3>"]
    for (cause, hresult), items in sorted(by_cause.items()):
        targets = ", ".join(f"{j.target.url} ({j.route.name})" for j, _ in items[:6])
        if len(items) > 6:
            targets += f" and {len(items) - 6} more"
        reasons = ", ".join(sorted({v.reason for _, v in items}))
        detail = items[0][1].detail
        parts.append(f'<p><strong>Cause: {_e(cause)}</strong> &middot; MpCmdRun would print {_e(hresult)} '
                     f"&middot; reason {_e(reasons)}</p>")
        parts.append(f'<p class="detail">Affected: {_e(targets)}'
                     + (f"<br>Example: {_e(redact(detail))}" if detail else "") + "</p>")
        remedy = _remedy(cause)
        if remedy:
            parts.append(f'<p class="remedy">Remedy: {_e(remedy)}</p>')
    parts.append("</div>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- /config


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if seconds == int(seconds):
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def config_as_dict(config: Config) -> dict:
    """The running configuration in the config file's shape, proxy passwords redacted.

    Given back as a config file it yields the same jobs: disabled groups are
    shown with `enabled: false`, every setting with its value (tests/test_web.py)."""
    data: dict = {
        "interval": _duration(config.interval),
        "timeout": _duration(config.timeout),
        "concurrency": config.concurrency,
        "connectivity": config.connectivity,
        "region": config.region,
        "ctl_mirror_url": config.ctl_mirror_url,
        "routes": {name: _route_as_config(route) for name, route in config.routes.items()},
        "connect_to": [
            ":".join((_bracketed(c.from_host), "" if c.from_port is None else str(c.from_port),
                      _bracketed(c.to_host), "" if c.to_port is None else str(c.to_port)))
            for c in config.connect_to
        ],
        "tls": {"ca_file": config.tls.ca_file, "ssl_options": config.tls.ssl_options,
                "ocsp_stapling": config.tls.ocsp_stapling},
        "limits": {"header_bytes": config.limits.header_bytes, "body_bytes": config.limits.body_bytes,
                   "crl_bytes": config.limits.crl_bytes},
        "groups": {},
    }
    for group in (*config.groups, *config.disabled_groups):
        shown = {
            "enabled": group.enabled,
            "description": group.description,
            "route": list(group.routes),
            "interval": _duration(group.interval),
            "timeout": _duration(group.timeout),
            "validate_maps": group.validate_maps,
            "expected_roots": sorted(fp.hex() for fp in group.expected_roots),
            "targets": [_target_as_config(t) for t in group.targets],
        }
        if group.content is not None:
            shown["content"] = group.content
        data["groups"][group.name] = shown
    host = dataclasses.asdict(config.host)
    data["host"] = {k: _duration(v) if k in ("interval", "timeout") else v for k, v in host.items()}
    return data


def _route_as_config(route) -> dict:
    """A route in the config file's shape, whichever its kind (config._route reads it back)."""
    if route.kind == "pac":
        return {"pac": route.pac, "pac_route": route.pac_route, "pac_interval": _duration(route.pac_interval)}
    if route.kind == "wpad":
        return {"wpad": True, "wpad_domain": route.wpad_domain}
    if route.kind == "fallback":
        return {"fallback": list(route.fallback)}
    shown: dict = {"proxy": route.proxy.redacted() if route.proxy else None}
    if route.bypass:
        shown["bypass"] = list(route.bypass)
    return shown


def _target_as_config(target) -> str | dict:
    shown: dict = {"url": target.url}
    if target.pattern != target.url:
        shown["pattern"] = target.pattern
    if target.source != CONFIG_SOURCE:
        shown["source"] = target.source
    if target.region is not None:
        shown["region"] = target.region
    expect = {}  # the target's expectations, its group's merged in (config._target reads them back)
    if target.expect.statuses:
        expect["status"] = list(target.expect.statuses)
    if target.expect.content is not None:
        expect["content"] = target.expect.content
    if target.expect.body is not None:
        expect["body"] = target.expect.body.pattern.decode()
    if expect:
        shown["expect"] = expect
    return target.url if len(shown) == 1 else shown


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def render_config(config: Config) -> str:
    header = (f"# Running configuration, loaded from {config.source}.\n"
              "# Built-in catalogue merged in; proxy passwords are shown as <redacted>.\n")
    body = yaml.safe_dump(config_as_dict(config), sort_keys=False, allow_unicode=True, width=120)
    return Redactor(config)(header + body)
