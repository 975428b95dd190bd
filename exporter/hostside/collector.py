r"""Host-side collectors: run Defender's own tools on this machine (off by default).

On a Windows endpoint (mode ``windows``) one collection runs, concurrently:

- ``MpCmdRun.exe -ValidateMapsConnection``                 -> MAPS verdict, source ``mpcmdrun``
- ``netsh winhttp show proxy``                             -> system-wide WinHTTP proxy
- ``reg query "HKLM\...\Windows Defender\Spynet" /v SSLOptions``
- ``reg query "HKLM\...\Windows Defender" /v ProxyServer``
- ``powershell -NoProfile -NonInteractive -Command "(Get-MpComputerStatus).AntivirusSignatureAge"``

On Linux or macOS with Defender for Endpoint (mode ``mdatp``) it runs
``mdatp connectivity test`` -> MAPS verdict, source ``mdatp``. Mode ``auto``
picks ``windows`` on Windows and ``mdatp`` elsewhere.

API::

    cfg = HostConfig(enabled=True)                  # config.HostConfig: the `host:` section
    snapshot = await collect_host(cfg)              # never raises for a tool's sake
    samples = host_samples(snapshot)                # no I/O; call on every scrape

``collect_host`` ignores ``enabled``: the scheduler decides whether and every
``interval`` seconds when to call it. ``timeout`` bounds every command (they run
in parallel, so also the whole collection). Whatever could not be run or parsed
is listed in ``snapshot.errors`` (``"netsh: not found: netsh"``,
``"mpcmdrun: timed out after 120s"``) and the matching series are left out.

The series of ``host_samples`` (specs of exporter.metrics; Windows, no WinHTTP proxy)::

    MAPS_CONNECTION_VALID{group="maps",target="MpCmdRun -ValidateMapsConnection",route="defender",source="mpcmdrun"} 0.0
    MAPS_VALIDATION_INFO{group="maps",target="MpCmdRun -ValidateMapsConnection",route="defender",source="mpcmdrun",hresult="0x80072F8F",cause="winhttp_proxy_missing",reason="mpcmdrun_failed"} 1.0
    HOST_WINHTTP_PROXY_CONFIGURED 0.0
    HOST_SSL_OPTIONS 3.0
    HOST_SIGNATURE_AGE 2.0

MAPS_VALIDATION_INFO is present only while the tool reports a
failure. Its ``reason`` says which tool reported it, since the host tools do
not tell the probe reasons apart: ``mpcmdrun_failed`` or ``mdatp_failed``.
``hresult`` is what MpCmdRun printed (``""`` for mdatp, which prints none);
``cause`` is :func:`exporter.causes.cause_for` of that hresult (the emulation uses the
same function), with the evidence at hand: netsh's WinHTTP proxy, and what the caller
passes in ``evidence`` (the emulation's verdicts; see runtime.py); ``""`` for an hresult
no row names, always ``""`` for mdatp. The MAPS series are absent when the tool could
not be run or its output not understood; a host gauge is absent when its
command failed. HOST_SSL_OPTIONS is 3 when the value is not set
(the documented default).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from exporter import metrics
from exporter.causes import Cause, Evidence
from exporter.config import HostConfig
from exporter.metrics import MetricSpec

from .mdatp import MdatpConnectivity, parse_connectivity_test
from .mpcmdrun import MapsValidation, parse_validate_maps
from .proxysettings import (
    SYSTEM_CONNECTIONS,
    SYSTEM_INTERNET_SETTINGS,
    ProxySettings,
    defender_settings,
    parse_advproxy,
    parse_internet_settings,
    parse_policy_string,
)
from .registry import DEFENDER_KEY, SPYNET_KEY, parse_proxy_server, parse_ssl_options
from .runner import RunResult, run_command
from .signatures import parse_signature_age
from .winhttp import WinHttpProxy, parse_winhttp_proxy

MPCMDRUN_TARGET = "MpCmdRun -ValidateMapsConnection"
MDATP_TARGET = "mdatp connectivity test"
REASON_MPCMDRUN = "mpcmdrun_failed"
REASON_MDATP = "mdatp_failed"


@dataclass(frozen=True)
class HostMaps:
    """The MAPS verdict of a host tool."""

    source: str   # mpcmdrun | mdatp
    target: str   # MPCMDRUN_TARGET | MDATP_TARGET
    valid: bool
    hresult: str = ""
    cause: str = ""
    reason: str = ""  # REASON_MPCMDRUN / REASON_MDATP while failing, else ""
    httpcore: int | None = None
    failed_urls: tuple[str, ...] = ()  # mdatp only


@dataclass(frozen=True)
class HostSnapshot:
    """One host-side collection. ``None`` fields were not collected (see ``errors``)."""

    mode: str
    taken_at: float
    maps: HostMaps | None = None
    winhttp: WinHttpProxy | None = None
    ssl_options: int | None = None
    ssl_options_set: bool = False  # False: SSLOptions absent, ssl_options is the default 3
    proxy_server: str | None = None  # Defender policy ProxyServer, None when not set
    signature_age_days: int | None = None
    errors: tuple[str, ...] = field(default=())
    # Proxy settings as the endpoint has them (None: not collected), by source:
    # Defender's policy (ProxyServer, ProxyPacUrl, ProxyBypass), `netsh winhttp show advproxy`,
    # SYSTEM's Internet settings (HKU\S-1-5-18).
    defender_proxy: ProxySettings | None = None
    winhttp_advproxy: ProxySettings | None = None
    system_internet: ProxySettings | None = None
    # (route, expected from the config, found on the host); set by the exporter (routes.py).
    route_checks: tuple[tuple[str, str, str], ...] = ()
    # Each collector run, by name ("mpcmdrun", "reg SSLOptions", ...), and whether it ran
    # and its output was understood (its errors start with its name).
    collectors: tuple[tuple[str, bool], ...] = field(default=())


def _maps_from_mpcmdrun(v: MapsValidation) -> HostMaps:
    return HostMaps(source="mpcmdrun", target=MPCMDRUN_TARGET, valid=v.valid,
                    hresult="" if v.valid else v.hresult, cause="" if v.valid else v.cause,
                    reason="" if v.valid else REASON_MPCMDRUN, httpcore=v.httpcore)


def _maps_from_mdatp(c: MdatpConnectivity) -> HostMaps:
    return HostMaps(source="mdatp", target=MDATP_TARGET, valid=c.valid,
                    reason="" if c.valid else REASON_MDATP, failed_urls=c.failed)


def emulated_evidence(store: Any) -> Evidence:
    """What the emulation knows now (a ResultStore's latest MAPS outcomes), for the host's hresult:
    whether a MAPS chain was intercepted, and the commonest cause of the failing emulated verdicts
    (cause_for uses it only where the host's hresult can mean it)."""
    outcomes = [o for o in store.latest.values() if o.maps is not None]
    failing = Counter(o.maps.cause for o in outcomes if not o.maps.valid and o.maps.cause)
    situation = Cause(failing.most_common(1)[0][0]) if failing else None
    return Evidence(situation=situation, intercepted=any(o.intercepted for o in outcomes))


async def collect_host(cfg: HostConfig, *, evidence: Evidence = Evidence()) -> HostSnapshot:
    """Run the host tools of ``cfg.effective_mode()`` and parse their output.

    ``evidence``: what the exporter knows besides (the emulation's findings); netsh's
    WinHTTP proxy is added to it before MpCmdRun's hresult becomes a cause."""
    mode = cfg.effective_mode()
    errors: list[str] = []

    def ran(name: str, r: RunResult) -> bool:
        if r.error:
            errors.append(f"{name}: {r.error}")
            return False
        return True

    if mode == "mdatp":
        r = await run_command([cfg.mdatp, "connectivity", "test"], timeout=cfg.timeout)
        maps = None
        if ran("mdatp", r):
            c = parse_connectivity_test(r.stdout, r.exit_code)
            if c.parsed:
                maps = _maps_from_mdatp(c)
            else:
                errors.append(f"mdatp: {c.error}")
        return HostSnapshot(mode=mode, taken_at=time.time(), maps=maps, errors=tuple(errors),
                            collectors=_outcomes(("mdatp",), errors))

    commands = {
        "mpcmdrun": [cfg.mpcmdrun, "-ValidateMapsConnection"],
        "netsh": [cfg.netsh, "winhttp", "show", "proxy"],
        "reg SSLOptions": [cfg.reg, "query", SPYNET_KEY, "/v", "SSLOptions"],
        "reg ProxyServer": [cfg.reg, "query", DEFENDER_KEY, "/v", "ProxyServer"],
        "powershell": [cfg.powershell, "-NoProfile", "-NonInteractive", "-Command",
                       "(Get-MpComputerStatus).AntivirusSignatureAge"],
        "reg ProxyPacUrl": [cfg.reg, "query", DEFENDER_KEY, "/v", "ProxyPacUrl"],
        "reg ProxyBypass": [cfg.reg, "query", DEFENDER_KEY, "/v", "ProxyBypass"],
        "netsh advproxy": [cfg.netsh, "winhttp", "show", "advproxy"],
        "reg SYSTEM Internet Settings": [cfg.reg, "query", SYSTEM_INTERNET_SETTINGS],
        "reg SYSTEM Connections": [cfg.reg, "query", SYSTEM_CONNECTIONS, "/v", "DefaultConnectionSettings"],
    }
    async with asyncio.TaskGroup() as tg:
        tasks = {k: tg.create_task(run_command(argv, timeout=cfg.timeout)) for k, argv in commands.items()}
    res = {k: t.result() for k, t in tasks.items()}

    fields: dict[str, Any] = {}
    if ran("netsh", r := res["netsh"]):
        w = parse_winhttp_proxy(r.stdout)
        if w.parsed:
            fields["winhttp"] = w
            evidence = dataclasses.replace(evidence, winhttp_proxy=w.configured)
        else:
            errors.append(f"netsh: {w.error}")
    if ran("mpcmdrun", r := res["mpcmdrun"]):
        v = parse_validate_maps(r.stdout, r.exit_code, evidence=evidence)
        if v.parsed:
            fields["maps"] = _maps_from_mpcmdrun(v)
        else:
            errors.append(f"mpcmdrun: {v.error}")
    if ran("reg SSLOptions", r := res["reg SSLOptions"]):
        s = parse_ssl_options(r.stdout, exit_code=r.exit_code, stderr=r.stderr)
        if s.parsed:
            fields["ssl_options"], fields["ssl_options_set"] = s.value, s.present
        else:
            errors.append(f"reg SSLOptions: {s.error}")
    if ran("reg ProxyServer", r := res["reg ProxyServer"]):
        p = parse_proxy_server(r.stdout, exit_code=r.exit_code, stderr=r.stderr)
        if p.parsed:
            fields["proxy_server"] = p.value
        else:
            errors.append(f"reg ProxyServer: {p.error}")
    if ran("powershell", r := res["powershell"]):
        a = parse_signature_age(r.stdout)
        if a.parsed:
            fields["signature_age_days"] = a.days
        else:
            errors.append(f"powershell: {a.error}")
    _proxy_fields(res, fields, errors, ran)
    # "reg SYSTEM Connections" is read as a part of "reg SYSTEM Internet Settings", not on its own.
    collectors = tuple(name for name in commands if name != "reg SYSTEM Connections")
    return HostSnapshot(mode=mode, taken_at=time.time(), errors=tuple(errors),
                        collectors=_outcomes(collectors, errors), **fields)


def _outcomes(names: tuple[str, ...], errors: list[str]) -> tuple[tuple[str, bool], ...]:
    return tuple((name, not any(e.startswith(f"{name}: ") for e in errors)) for name in names)


def _proxy_fields(res: dict[str, RunResult], fields: dict[str, Any], errors: list[str], ran) -> None:
    """Defender's PAC/bypass policy values, WinHTTP's advanced settings, SYSTEM's Internet settings."""
    policy: dict[str, str] = {}
    for name in ("ProxyPacUrl", "ProxyBypass"):
        if ran(f"reg {name}", r := res[f"reg {name}"]):
            ok, value, error = parse_policy_string(r.stdout, name, exit_code=r.exit_code, stderr=r.stderr)
            if ok:
                policy[name] = value
            else:
                errors.append(f"reg {name}: {error}")
    if len(policy) == 2 and "proxy_server" in fields:  # all three policy values read
        fields["defender_proxy"] = defender_settings(fields["proxy_server"], policy["ProxyPacUrl"],
                                                     policy["ProxyBypass"])
    r = res["netsh advproxy"]
    if r.error:
        errors.append(f"netsh advproxy: {r.error}")
    else:
        adv = parse_advproxy(r.stdout)
        if adv.parsed:
            fields["winhttp_advproxy"] = adv
        else:  # older Windows has no advproxy: not an error worth a warning on every collection
            errors.append(f"netsh advproxy: {adv.error}")
    if ran("reg SYSTEM Internet Settings", r := res["reg SYSTEM Internet Settings"]):
        connections = res["reg SYSTEM Connections"]
        system = parse_internet_settings(r.stdout, connections.stdout if not connections.error else None,
                                         exit_code=r.exit_code)
        if system.parsed:
            fields["system_internet"] = system
        else:
            errors.append(f"reg SYSTEM Internet Settings: {system.error}")


def host_samples(snapshot: HostSnapshot | None) -> list[tuple[MetricSpec, tuple[str, ...], float]]:
    """The samples of one snapshot, as ``(spec, label values, value)`` (see the
    module docstring); no I/O. The MAPS verdict joins the families of the
    probed targets' verdicts."""
    if snapshot is None:
        return []
    out: list[tuple[MetricSpec, tuple[str, ...], float]] = []
    m = snapshot.maps
    if m is not None:
        base = ("maps", m.target, "defender", m.source)
        out.append((metrics.MAPS_CONNECTION_VALID, base, 1.0 if m.valid else 0.0))
        if not m.valid:
            out.append((metrics.MAPS_VALIDATION_INFO, base + (m.hresult, m.cause, m.reason), 1.0))
    if snapshot.winhttp is not None:
        out.append((metrics.HOST_WINHTTP_PROXY_CONFIGURED, (), 1.0 if snapshot.winhttp.configured else 0.0))
    if snapshot.ssl_options is not None:
        out.append((metrics.HOST_SSL_OPTIONS, (), float(snapshot.ssl_options)))
    if snapshot.signature_age_days is not None:
        out.append((metrics.HOST_SIGNATURE_AGE, (), float(snapshot.signature_age_days)))
    settings = [(source, value) for source, value in (
        ("defender_policy", snapshot.defender_proxy), ("winhttp_advproxy", snapshot.winhttp_advproxy),
        ("system_internet_settings", snapshot.system_internet)) if value is not None]
    if snapshot.winhttp is not None:
        settings.append(("winhttp", ProxySettings(parsed=True, proxy=snapshot.winhttp.proxy or "",
                                                  bypass=";".join(snapshot.winhttp.bypass))))
    for source, value in settings:
        out.append((metrics.HOST_PROXY_SETTINGS,
                    (source, value.proxy, value.bypass, value.pac_url, "1" if value.autodetect else "0"), 1.0))
    for route, expected, found in snapshot.route_checks:
        out.append((metrics.HOST_ROUTE_MISMATCH, (route, expected, found), 0.0 if expected == found else 1.0))
    return out
