"""The pages a person reads: the status page at / and the running config at /config.

The status page is plain server-rendered HTML with inline CSS, no scripts and
no external assets, meant for a NOC wall screen: large type, and every status
said in words (OK / FAILING / PENDING) as well as in colour. It reads only the
ResultStore, like /metrics; every value from the config or from a peer is
escaped.

    Defender connectivity: 2 of 5 probes FAILING
    MAPS connection: INVALID -- winhttp_proxy_missing (0x80072F8F) ... remedy ...
    maps  (MAPS cloud protection)
      FAILING  https://wdcp.microsoft.com/  defender  412 ms  crl_unreachable ...  12 s ago  [debug probe]
"""

from __future__ import annotations

import html
import time
from urllib.parse import urlencode

import yaml

from . import __version__
from .causes import REMEDIES, Cause
from .config import Config
from .ondemand import Redactor
from .reasons import REASON_DESCRIPTIONS, Reason
from .state import ResultStore

REFRESH_SECONDS = 15

_CSS = """
:root { color-scheme: dark; }
body { margin: 0; padding: 1.2rem 2rem; background: #111417; color: #e8eaed;
       font: 22px/1.45 "DejaVu Sans", "Segoe UI", system-ui, sans-serif; }
h1 { font-size: 2.1rem; margin: 0 0 .3rem; }
h2 { font-size: 1.6rem; margin: 1.6rem 0 .4rem; border-bottom: 2px solid #3c4043; padding-bottom: .2rem; }
h2 small { font-size: 1rem; color: #9aa0a6; font-weight: normal; }
a { color: #8ab4f8; }
.meta { color: #9aa0a6; font-size: 1rem; }
.banner { font-size: 1.7rem; font-weight: bold; padding: .6rem 1rem; border-radius: .4rem; margin: .8rem 0; }
.banner.ok { background: #0d3b1e; border-left: .7rem solid #34a853; }
.banner.fail { background: #4a1012; border-left: .7rem solid #ea4335; }
.banner.pending { background: #3b3207; border-left: .7rem solid #fbbc04; }
.maps { background: #1e2226; border: 2px solid #ea4335; border-radius: .4rem; padding: .6rem 1rem; margin: .6rem 0; }
.maps.ok { border-color: #34a853; }
.maps h3 { margin: 0 0 .3rem; font-size: 1.4rem; }
.maps p { margin: .3rem 0; }
.remedy { font-size: 1.05rem; color: #d2d5d9; }
table { border-collapse: collapse; width: 100%; }
th { text-align: left; font-size: 1rem; color: #9aa0a6; padding: .2rem .6rem; }
td { padding: .45rem .6rem; border-top: 1px solid #2d3135; vertical-align: top; }
tr.fail td { background: #2a1416; }
.status { display: inline-block; min-width: 6.5em; text-align: center; font-weight: bold;
          border-radius: .3rem; padding: .1rem .5rem; }
.status.ok { background: #34a853; color: #000; }
.status.fail { background: #ea4335; color: #fff; }
.status.pending { background: #fbbc04; color: #000; }
.target { font-family: "DejaVu Sans Mono", monospace; white-space: nowrap; }
.nowrap { white-space: nowrap; }
.reason { font-weight: bold; }
.detail { font-size: .95rem; color: #c4c7ca; word-break: break-word; }
.num { text-align: right; white-space: nowrap; }
footer { margin-top: 2rem; font-size: 1rem; color: #9aa0a6; }
"""


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


def _probe_link(group: str, url: str, route: str) -> str:
    return "probe?" + urlencode({"target": url, "route": route, "group": group, "debug": "true"})


def render_status(config: Config, store: ResultStore, *, now: float | None = None) -> str:
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
        + ("last reload OK" if store.reload_successful else "<strong>LAST RELOAD FAILED</strong> (running the previous configuration)")
        + f' &middot; <a href="metrics">/metrics</a> &middot; <a href="config">/config</a>'
        f" &middot; page refreshes every {REFRESH_SECONDS} s</div>",
        f'<div class="banner {banner[0]}" id="summary">{_e(banner[1])}</div>',
    ]
    parts.append(_maps_section(jobs, outcomes, redact))

    by_group: dict[str, list] = {}
    for job in jobs:
        by_group.setdefault(job.group.name, []).append(job)
    for group in config.groups:
        members = by_group.get(group.name)
        if not members:
            continue
        bad = sum(1 for j in members if outcomes.get(j.key) is not None and not outcomes[j.key].probe.success)
        state = f"{bad} failing" if bad else "all OK"
        parts.append(f'<h2 id="group-{_e(group.name)}">{_e(group.name)} <small>{_e(group.description)} '
                     f"&middot; {len(members)} probes, {state} &middot; every {group.interval:g} s</small></h2>")
        parts.append('<table><thead><tr><th>Status</th><th>Target</th><th>Route</th><th class="num">Latency</th>'
                     '<th>Reason</th><th class="num">Result age</th><th>MAPS verdict</th><th>Debug</th></tr></thead><tbody>')
        for job in members:
            parts.append(_row(job, outcomes.get(job.key), now, redact))
        parts.append("</tbody></table>")

    parts.append(f"<footer>Rendered {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}. "
                 "Latency is the last probe's wall time; a result's age is the time since that probe finished. "
                 'The debug links run one probe now and show every phase (rate limited).</footer>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _row(job, outcome, now: float, redact: Redactor) -> str:
    link = f'<a class="nowrap" href="{_e(_probe_link(job.group.name, job.target.url, job.route.name))}">debug probe</a>'
    target = f'<td class="target">{_e(job.target.url)}</td><td>{_e(job.route.name)}</td>'
    if outcome is None:
        return (f'<tr class="pending"><td><span class="status pending">PENDING</span></td>{target}'
                f'<td class="num">-</td><td>no result yet</td><td class="num">-</td><td>-</td><td>{link}</td></tr>')
    p = outcome.probe
    if p.success:
        status = '<span class="status ok">&#10004; OK</span>'
        reason = f"HTTP {p.http_status}" if p.http_status else "reached"
        notes = []
        if outcome.revoked:
            notes.append("certificate REVOKED")
        if outcome.intercepted:
            notes.append("TLS INTERCEPTED (chain ends outside the expected roots)")
        if notes:
            reason += f'<div class="detail">{_e("; ".join(notes))}</div>'
    else:
        status = '<span class="status fail">&#10008; FAILING</span>'
        try:
            description = REASON_DESCRIPTIONS.get(Reason(p.reason), "")
        except ValueError:
            description = ""
        reason = (f'<span class="reason">{_e(p.reason)}</span>: {_e(description)}'
                  f'<div class="detail">{_e(redact(p.detail))}</div>')
    verdict = outcome.maps
    if verdict is None:
        maps = "-"
    elif verdict.valid:
        maps = '<span class="status ok">&#10004; VALID</span>'
    else:
        maps = (f'<span class="status fail">&#10008; INVALID</span><div class="detail">cause '
                f'<strong>{_e(verdict.cause)}</strong>, {_e(verdict.hresult)}</div>')
    cls = "ok" if p.success and (verdict is None or verdict.valid) else "fail"
    return (f'<tr class="{cls}"><td>{status}</td>{target}<td class="num">{p.duration * 1000:.0f} ms</td>'
            f'<td>{reason}</td><td class="num">{_e(_age(now - p.finished_at))}</td><td>{maps}</td><td>{link}</td></tr>')


def _maps_section(jobs, outcomes, redact: Redactor) -> str:
    maps_jobs = [j for j in jobs if j.group.validate_maps]
    if not maps_jobs:
        return ""
    verdicts = [(j, outcomes[j.key].maps) for j in maps_jobs if outcomes.get(j.key) is not None and outcomes[j.key].maps]
    invalid = [(j, v) for j, v in verdicts if not v.valid]
    if not verdicts:
        return '<div class="maps"><h3>MAPS connection: PENDING</h3><p>No MAPS target has a result yet.</p></div>'
    if not invalid:
        return (f'<div class="maps ok" id="maps"><h3>MAPS connection: &#10004; VALID</h3>'
                f"<p>All {len(verdicts)} MAPS probes validate as MpCmdRun -ValidateMapsConnection would.</p></div>")
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
    """The running configuration in the config file's shape, proxy passwords redacted."""
    data: dict = {
        "interval": _duration(config.interval),
        "timeout": _duration(config.timeout),
        "concurrency": config.concurrency,
        "routes": {name: {"proxy": route.proxy.redacted() if route.proxy else None}
                   for name, route in config.routes.items()},
        "connect_to": [
            f"{c.from_host}:{'' if c.from_port is None else c.from_port}:{c.to_host}:{'' if c.to_port is None else c.to_port}"
            for c in config.connect_to
        ],
        "tls": {"ca_file": config.tls.ca_file, "ssl_options": config.tls.ssl_options},
        "limits": {"header_bytes": config.limits.header_bytes, "body_bytes": config.limits.body_bytes,
                   "crl_bytes": config.limits.crl_bytes},
        "groups": {},
    }
    for group in config.groups:
        data["groups"][group.name] = {
            "description": group.description,
            "route": list(group.routes),
            "interval": _duration(group.interval),
            "timeout": _duration(group.timeout),
            "validate_maps": group.validate_maps,
            "expected_roots": sorted(fp.hex() for fp in group.expected_roots),
            "targets": [t.url if t.pattern == t.url else {"url": t.url, "pattern": t.pattern} for t in group.targets],
        }
    host = getattr(config, "host", None)
    if host is not None:
        import dataclasses

        if dataclasses.is_dataclass(host):
            data["host"] = {k: (_duration(v) if k in ("interval", "timeout") and isinstance(v, (int, float))
                                and not isinstance(v, bool) else v)
                            for k, v in dataclasses.asdict(host).items()}
    return data


def render_config(config: Config) -> str:
    header = (f"# Running configuration, loaded from {config.source}.\n"
              "# Built-in catalogue merged in; proxy passwords are shown as <redacted>.\n")
    body = yaml.safe_dump(config_as_dict(config), sort_keys=False, allow_unicode=True, width=120)
    return Redactor(config)(header + body)
