"""GET /probe?target=URL[&route=NAME][&group=NAME][&debug=true]: one probe, now.

Like blackbox_exporter's /probe, but only for targets of the running
configuration: the URL is looked up among the configured jobs and the
*configured* target is probed, never the caller's string, so /probe cannot be
turned into a scanner of arbitrary hosts. Any other URL gets 400 and nothing
is contacted.

A probe costs the endpoint a TCP connection and a TLS handshake, so on-demand
probes are rate limited (ProbeLimits):

- per target URL at most one probe every `per_target_seconds`;
- a global token bucket (`burst` tokens, refilled at `rate` per second);
- at most `in_flight` on-demand probes at once.

A refusal is 429 with Retry-After (whole seconds). The result is not written
into the exporter's store: /metrics keeps showing the scheduler's results.

The answer is the target's metric families (metrics.TARGET_FAMILIES) in the
exposition format, as /metrics shows them for that job, from the same samples
(collector.target_samples).

With debug=true it is a plain-text log of every phase (see render_debug).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import metrics as m
from .assess import Outcome
from .causes import REMEDIES, Cause
from .collector import target_samples
from .config import Config, ProbeJob
from .exposition import render as render_samples
from .reasons import REASON_DESCRIPTIONS, Reason
from .redact import Redactor
from .state import JobStats
from .utc import iso


@dataclass(frozen=True)
class ProbeLimits:
    per_target_seconds: float = 10.0
    burst: int = 10
    rate: float = 1 / 3  # tokens per second: 20 probes a minute after the burst
    in_flight: int = 4


class RateLimiter:
    """Per-target spacing plus a global token bucket; all on the event loop thread."""

    def __init__(self, limits: ProbeLimits, *, clock=time.monotonic):
        self.limits = limits
        self._clock = clock
        self._tokens = float(limits.burst)
        self._refilled = clock()
        self._last: dict[str, float] = {}
        self._running: set[str] = set()

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.limits.burst), self._tokens + (now - self._refilled) * self.limits.rate)
        self._refilled = now

    def acquire(self, key: str) -> float:
        """0 when a probe of `key` may start now (and books it), else seconds to wait."""
        now = self._clock()
        self._refill(now)
        if key in self._running:
            return max(1.0, self.limits.per_target_seconds)
        last = self._last.get(key)
        if last is not None and now - last < self.limits.per_target_seconds:
            return self.limits.per_target_seconds - (now - last)
        if len(self._running) >= self.limits.in_flight:
            return 1.0
        if self._tokens < 1.0:
            return (1.0 - self._tokens) / self.limits.rate if self.limits.rate > 0 else 3600.0
        self._tokens -= 1.0
        self._last[key] = now
        self._running.add(key)
        if len(self._last) > 10_000:  # targets come from the config, but stay bounded anyway
            cutoff = now - self.limits.per_target_seconds
            self._last = {k: t for k, t in self._last.items() if t > cutoff}
        return 0.0

    def release(self, key: str) -> None:
        self._running.discard(key)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


# --------------------------------------------------------------------------- allow-list


class NotAllowed(Exception):
    """The request names no configured job; the message says why (safe to show)."""


def _normal(url: str) -> tuple | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    scheme = parts.scheme.lower()
    port = port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname.lower().rstrip("."), port, path


def find_job(config: Config, target: str, *, route: str | None = None, group: str | None = None) -> ProbeJob:
    """The configured job for a requested target URL (exact or equivalent URL)."""
    if not target:
        raise NotAllowed("missing parameter: target")
    if len(target) > 2048:
        raise NotAllowed("target is not a configured target")
    wanted = _normal(target)
    candidates = []
    for g in config.groups:
        if group is not None and g.name != group:
            continue
        for t in g.targets:
            if t.url == target or (wanted is not None and _normal(t.url) == wanted):
                candidates.append((g, t))
    if not candidates:
        raise NotAllowed("target is not a configured target"
                         + (f" of group {group!r}" if group is not None else "")
                         + "; /probe only probes targets of the running configuration")
    for g, t in candidates:
        names = g.routes if route is None else [r for r in g.routes if r == route]
        if names:
            return ProbeJob(g, t, config.routes[names[0]])
    routes = sorted({r for g, _ in candidates for r in g.routes})
    raise NotAllowed(f"route {route!r} is not configured for this target (configured: {', '.join(routes)})")


# --------------------------------------------------------------------------- running


@dataclass
class OnDemandProbe:
    job: ProbeJob
    outcome: Outcome | None = None
    log: list[str] = field(default_factory=list)
    started: float = 0.0
    error: str = ""


async def run(exporter, job: ProbeJob) -> OnDemandProbe:
    """Probe and assess one job with the exporter's current settings, logging every step."""
    result = OnDemandProbe(job, started=time.time())
    assessor, env = exporter.assessor, exporter.env  # a reload during the probe does not mix configs
    try:
        async with asyncio.timeout(job.budget.hard):
            result.outcome = await assessor.run(job, env, trace=result.log.append)
    except TimeoutError:
        result.error = f"the probe and its assessment overran {job.budget.hard:.0f} s"
    return result


def exposition(probe: OnDemandProbe) -> bytes:
    """The same families as /metrics, for this one job (counters count this one probe)."""
    stats = JobStats()
    if probe.outcome is not None:
        stats = JobStats(successes=int(probe.outcome.probe.success), failures=int(not probe.outcome.probe.success))
    text = render_samples(target_samples(probe.job, stats, probe.outcome), m.TARGET_FAMILIES)
    # The HELP texts speak of /metrics, whose values come from the scheduler; these were measured now.
    return text.replace(m.CACHED.strip(), "Measured now by /probe.").encode()


# --------------------------------------------------------------------------- debug text



def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"in {days:.0f} days" if days >= 0 else f"EXPIRED {-days:.0f} days ago"


def render_debug(probe: OnDemandProbe, redact: Redactor) -> str:
    job = probe.job
    out: list[str] = []
    add = out.append
    proxy = job.route.proxy
    add(f"On-demand probe of {job.target.url}")
    add(f"  group {job.group.name}, route {job.route.name} "
        f"({'proxy ' + proxy.redacted() if proxy else 'direct'}), timeout {job.budget.probe:g} s")
    add(f"  started {iso(probe.started)}")
    add("")
    add("== Log ==")
    out.extend(probe.log or ["(nothing logged)"])
    add("")
    outcome = probe.outcome
    if outcome is None:
        add(f"== Result ==\nNO RESULT: {probe.error}")
    else:
        p = outcome.probe
        add("== Result ==")
        add(f"success:      {'yes' if p.success else 'NO'}")
        if p.reason is not None:
            add(f"reason:       {p.reason} ({REASON_DESCRIPTIONS.get(Reason(p.reason), '')})")
            add(f"detail:       {p.detail}")
        add(f"duration:     {p.duration * 1000:.1f} ms")
        add("phases:       " + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in p.phases))
        add(f"peer:         {p.peer or '-'}")
        if proxy is not None:
            add(f"CONNECT:      {p.proxy_status or 'no answer'}")
        add(f"HTTP status:  {p.http_status or '-'}")
        tls = p.tls
        if tls is not None:
            add("")
            add(f"== TLS: {tls.version} {tls.cipher} ==")
            add("Certificate chain as presented (depth 0 = leaf):")
            for depth, cert in enumerate(tls.presented):
                add(f"  [{depth}] subject:     {cert.subject}")
                add(f"      issuer:      {cert.issuer}")
                add(f"      notBefore:   {iso(cert.not_before)}")
                add(f"      notAfter:    {iso(cert.not_after)} ({_days(cert.not_after - time.time())})")
                add(f"      serial:      {cert.serial}")
                add(f"      sha256:      {cert.fingerprint_sha256}")
                for url in cert.crl_urls:
                    add(f"      CRL:         {url}")
            if tls.verified:
                add("Verified path: " + " -> ".join(c.subject for c in tls.verified_path))
            else:
                add(f"NOT VERIFIED: {tls.verify_error}")
        add("")
        add("== Revocation and pinning ==")
        add("revoked:      " + {None: "not checked", True: "YES", False: "no"}[outcome.revoked])
        add("intercepted:  " + {None: "not checked", True: "YES (chain ends outside the expected roots)",
                                False: "no"}[outcome.intercepted])
        for url in outcome.crl_urls:
            add(f"CRL point:    {url}")
        verdict = outcome.maps
        if verdict is not None:
            add("")
            add("== MAPS verdict (as MpCmdRun -ValidateMapsConnection) ==")
            if verdict.valid:
                add("VALID")
            else:
                add(f"INVALID: reason {verdict.reason}, hresult {verdict.hresult}, cause {verdict.cause}")
                if verdict.detail:
                    add(f"detail: {verdict.detail}")
                try:
                    add(f"remedy: {REMEDIES[Cause(verdict.cause)]}")
                except ValueError:
                    pass
    add("")
    add("== Metrics ==")
    add(exposition(probe).decode())
    return redact("\n".join(out))
