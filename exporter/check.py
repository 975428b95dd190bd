"""`check`: probe once, print a table per group and the MAPS verdict.

Text for a person at a terminal (progress on stderr when it is a terminal);
JSON for scripts, with a stable shape (docs/check-json.md; a test keeps the
two in step):

    {"format": 1, "success": false,
     "groups": [{"group": "maps", "targets": [{"target": ..., "route": ..., "pattern": ...,
                 "success": false, "reason": "dns_error", "detail": ..., "duration_seconds": 0.001,
                 "http_status": 0, "phases": {...}, "tls_verified": null,
                 "revoked": null, "intercepted": null}]}],
     "maps": [{"target": ..., "route": ..., "source": "emulated", "valid": false,
               "hresult": "0x80072EE7", "cause": "dns_failure", "reason": "dns_error", "detail": ...,
               "message": "ValidateMapsConnection ...", "remedy": "..."}]}

Exit codes: 0 every check passed, 1 a probe failed or a MAPS verdict is
invalid, 2 bad usage (unknown flag or --group, bad configuration file).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections import Counter
from typing import TextIO

from .assess import MapsVerdict, Outcome
from .causes import REMEDIES, Cause
from .causes import mpcmdrun_line as failure_line
from .config import ConfigError, load_config
from .redact import Redactor
from .wording import plural

JSON_FORMAT_VERSION = 1


def mpcmdrun_line(verdict: MapsVerdict) -> str:
    """The verdict in MpCmdRun's own words; `httpcore=`/`httpcode=` only where Microsoft shows one
    for that hresult (causes.HRESULTS), since we cannot know what MpCmdRun would print otherwise."""
    if verdict.valid:
        return "ValidateMapsConnection successfully established a connection to MAPS"
    return failure_line(verdict.hresult)


def run_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    known = {g.name for g in config.groups}
    unknown = [g for g in args.group if g not in known]
    if unknown:
        print(f"error: --group: unknown group {unknown[0]!r} (configured: {', '.join(sorted(known))})",
              file=sys.stderr)
        return 2
    if getattr(args, "routes", False):
        return run_routes(config, args.group, args.format, sys.stdout)
    jobs = [job for job in config.jobs() if not args.group or job.group.name in args.group]
    results = asyncio.run(_probe_all(config, jobs, progress=sys.stderr if sys.stderr.isatty() else None))
    ok = all(_job_ok(o) for _, o in results)
    redact = Redactor(config)  # probe details may quote what a proxy said
    if args.format == "json":
        document = {**_as_json(results, ok), "connectivity": config.connectivity, "region": config.region}
        sys.stdout.write(redact(json.dumps(document, indent=2)) + "\n")
    else:
        text = io.StringIO()
        text.write(f"Catalogue: {_profile_line(config)}\n")
        _print_text(results, text)
        sys.stdout.write(redact(text.getvalue()))
    return 0 if ok else 1


def _profile_line(config) -> str:
    """Which catalogue the check used, so that a result is read against the right host list."""
    profile = {"standard": "standard connectivity (the article's hosts)",
               "streamlined": "streamlined connectivity (*.endpoint.security.microsoft.com)"}[config.connectivity]
    region = "every region" if config.region == "all" else f"region {config.region}"
    mirror = f", trust lists from {config.ctl_mirror_url}" if config.ctl_mirror_url else ""
    return f"{profile}, {region}{mirror}"


def _remedy(cause: str) -> str | None:
    try:
        return REMEDIES.get(Cause(cause)) if cause else None
    except ValueError:  # a cause from a newer table: no remedy text, still no crash
        return None


def _job_ok(outcome: Outcome) -> bool:
    return outcome.probe.success and (outcome.maps is None or outcome.maps.valid)


async def _probe_all(config, jobs, *, progress: TextIO | None):
    from .assess import Assessor
    from .probes import ProbeEnv

    env = ProbeEnv.from_config(config)
    assessor = Assessor(config, trust=env.trust)
    env = env.with_system_routes(assessor.system_routes_for)
    semaphore = asyncio.Semaphore(config.concurrency)
    done = 0
    results: list = [None] * len(jobs)

    async def one(i: int, job) -> None:
        nonlocal done
        async with semaphore:
            results[i] = (job, await assessor.run(job, env))
        done += 1
        if progress is not None:
            progress.write(f"\rprobing: {done}/{len(jobs)} done")
            progress.flush()

    async with asyncio.TaskGroup() as group:
        for i, job in enumerate(jobs):
            group.create_task(one(i, job))
    if progress is not None:
        progress.write("\r" + " " * 40 + "\r")
    return results


def _print_text(results, out: TextIO) -> None:
    groups: dict[str, list] = {}
    for job, outcome in results:
        groups.setdefault(job.group.name, []).append((job, outcome))
    width = max((len(job.target.url) for job, _ in results), default=20)
    for name, rows in groups.items():
        description = rows[0][0].group.description
        out.write(f"\n{name}" + (f": {description}" if description else "") + "\n")
        out.write(f"  {'RESULT':6}  {'LATENCY':>9}  {'TARGET':{width}}  {'ROUTE':8}  REASON\n")
        for job, outcome in rows:
            probe = outcome.probe
            result = "ok" if probe.success else "FAIL"
            latency = f"{probe.duration * 1000:7.1f}ms"
            why = f"{probe.reason}: {probe.detail}" if probe.reason else f"HTTP {probe.http_status}"
            extras = outcome.findings()
            if outcome.proxy and not job.route.static:
                extras.append(f"via {outcome.proxy}")
            if extras:
                why += " [" + ", ".join(extras) + "]"
            out.write(f"  {result:6}  {latency:>9}  {job.target.url:{width}}  {job.route.name:8}  {why}\n")
    verdicts = [(job, o.maps) for job, o in results if o.maps is not None]
    if verdicts:
        out.write("\nMAPS validation (emulating MpCmdRun -ValidateMapsConnection)\n")
    for job, verdict in verdicts:
        out.write(f"\n  {job.target.url} (route {job.route.name}):\n  {mpcmdrun_line(verdict)}\n")
        if verdict.revocation:
            out.write(f"  revocation decided by: {verdict.revocation}\n")
        if not verdict.valid:
            out.write(f"  reason: {verdict.reason}" + (f" ({verdict.detail})" if verdict.detail else "") + "\n")
            out.write(f"  cause:  {verdict.cause}\n")
            remedy = _remedy(verdict.cause)
            if remedy:
                out.write(f"  fix:    {remedy}\n")
    out.write(f"\n{summary_line(results)}\n")


def summary_line(results) -> str:
    """What passed and, first, what failed: the probes (by reason) and the MAPS verdicts (by
    cause), so a green table above a failed verdict is not summed up as "0 of 1 checks passed".

        OK: all 5 probes succeeded; the MAPS verdict is valid.
        FAILED: the MAPS verdict is invalid (winhttp_proxy_missing, hr=0x80072F8F); the probe succeeded.
    """
    probes = [o.probe for _, o in results]
    failed = [p for p in probes if not p.success]
    if failed:
        reasons = Counter(str(p.reason) for p in failed)
        by_reason = ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common())
        probe_part = ("the probe failed" if len(probes) == 1 else f"{len(failed)} of {len(probes)} probes failed")
        probe_part += f" ({by_reason})"
    else:
        probe_part = "the probe succeeded" if len(probes) == 1 else f"all {plural(len(probes), 'probe')} succeeded"
    verdicts = [o.maps for _, o in results if o.maps is not None]
    invalid = [v for v in verdicts if not v.valid]
    parts_failed, parts_ok = ([probe_part], []) if failed else ([], [probe_part])
    if invalid:
        causes = " / ".join(dict.fromkeys(f"{v.cause}, hr={v.hresult}" for v in invalid))
        parts_failed.append(f"the MAPS verdict is invalid ({causes})" if len(verdicts) == 1 else
                            f"{len(invalid)} of {len(verdicts)} MAPS verdicts are invalid ({causes})")
    elif verdicts:
        parts_ok.append("the MAPS verdict is valid" if len(verdicts) == 1 else
                        f"all {len(verdicts)} MAPS verdicts are valid")
    return ("FAILED: " if parts_failed else "OK: ") + "; ".join(parts_failed + parts_ok) + "."


def _as_json(results, ok: bool) -> dict:
    groups: dict[str, list] = {}
    maps = []
    for job, outcome in results:
        probe = outcome.probe
        groups.setdefault(job.group.name, []).append({
            "target": job.target.url,
            "route": job.route.name,
            "pattern": job.target.pattern,
            "success": probe.success,
            "reason": str(probe.reason) if probe.reason else None,
            "detail": probe.detail,
            "duration_seconds": round(probe.duration, 6),
            "http_status": probe.http_status,
            "phases": {k: round(v, 6) for k, v in probe.phases},
            "tls_verified": probe.tls.verified if probe.tls else None,
            "revoked": outcome.revoked,
            "intercepted": outcome.intercepted,
            "proxy": outcome.proxy or None,
        })
        if outcome.maps is not None:
            v = outcome.maps
            maps.append({
                "target": job.target.url,
                "route": job.route.name,
                "source": v.source,
                "valid": v.valid,
                "hresult": v.hresult or None,
                "cause": v.cause or None,
                "reason": v.reason or None,
                "detail": v.detail or None,
                "message": mpcmdrun_line(v),
                "remedy": _remedy(v.cause),
                "revocation": v.revocation or None,
                "revocation_valid_until": outcome.revocation_valid_until,
            })
    return {
        "format": JSON_FORMAT_VERSION,
        "success": ok,
        "groups": [{"group": name, "targets": rows} for name, rows in groups.items()],
        "maps": maps,
    }


# ----------------------------------------------------------------------------- check --routes


def run_routes(config, groups: list[str], fmt: str, out: TextIO) -> int:
    """For every target of the (chosen) groups: what each route gives it, PAC evaluated, no probe.
    Exit 1 when a route could not say (PAC unreachable or broken), else 0."""
    rows = asyncio.run(_route_rows(config, groups))
    ok = not any(row["error"] for row in rows)
    if fmt == "json":
        json.dump({"format": JSON_FORMAT_VERSION, "success": ok, "routes": rows}, out, indent=2)
        out.write("\n")
        return 0 if ok else 1
    width = max((len(r["route"] if r["route"] == r["member"] else f"{r['route']}/{r['member']}") for r in rows),
                default=8)
    current = None
    for row in rows:
        if (row["group"], row["target"]) != current:
            current = (row["group"], row["target"])
            out.write(f"\n{row['group']}  {row['target']}\n")
        name = row["route"] if row["route"] == row["member"] else f"{row['route']}/{row['member']}"
        out.write(f"  {name:{width}}  {row['error'] or row['proxy']}\n")
    return 0 if ok else 1


async def _route_rows(config, groups: list[str]) -> list[dict]:
    from .routes import RouteBook

    book = RouteBook(config)
    rows = []
    try:
        for group in config.groups:
            if groups and group.name not in groups:
                continue
            for target in group.targets:
                for route in config.routes.values():
                    for member, text in await book.describe(route, target):
                        failed = text.startswith(("pac_unreachable:", "pac_error:"))
                        rows.append({"group": group.name, "target": target.url, "route": route.name,
                                     "member": member, "proxy": None if failed else text,
                                     "error": text if failed else None})
    finally:
        book.close()
    return rows
