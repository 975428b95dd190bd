"""After the probe: revocation, pinning and the MAPS verdict for one job.

The probe says whether the endpoint was reached over a valid TLS connection.
This module adds what Windows checks on top, without changing the probe's
success or reason:

- revocation: every certificate of the verified chain (leaf and
  intermediates) against its CRL distribution points, fetched on the
  **system** route, the path the OS uses (see crl.py);
- pinning: the chain must end at one of the group's expected roots, else the
  connection is intercepted (a TLS-inspecting proxy, even a trusted one);
- for groups with `validate_maps`, the verdict MpCmdRun -ValidateMapsConnection
  would give, with the hresult, the cause and the reason (causes.py).

A certificate with no CRL distribution point has revocation status "unknown"
(as Windows' chain engine reports it); it does not fail the verdict, since the
legitimate Microsoft chains always carry one and a chain without is caught by
pinning instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .causes import VERDICT_TABLE, Cause, Finding
from .config import Config, ProbeJob, Route
from .crl import CRLCache, RevocationStatus
from .probes import ProbeEnv, ProbeResult, run_probe
from .probes._net import Trace
from .state import MapsVerdict, Outcome


@dataclass(frozen=True)
class ChainRevocation:
    statuses: tuple[tuple[str, RevocationStatus], ...]  # (certificate subject, status), leaf first

    def worst(self) -> RevocationStatus | None:
        order = ("revoked", "unreachable", "invalid", "stale")
        for wanted in order:
            for _, status in self.statuses:
                if status.status == wanted:
                    return status
        return None


_STATUS_FINDING = {
    "revoked": Finding.CERT_REVOKED,
    "unreachable": Finding.CRL_UNREACHABLE,
    "invalid": Finding.CRL_INVALID,
    "stale": Finding.CRL_STALE,
}


class Assessor:
    """Runs a job: probe, then revocation and pinning, then the MAPS verdict."""

    def __init__(self, config: Config, *, crl_cache: CRLCache | None = None):
        self.config = config
        self.crl_cache = crl_cache or CRLCache(config.limits, config.connect_to)
        self.crl_cache.reconfigure(config.limits, config.connect_to)

    @property
    def system_route(self) -> Route:
        return self.config.routes["system"]

    async def run(self, job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> Outcome:
        probe = await run_probe(job, env, trace=trace)
        return await self.assess(job, probe, trace=trace)

    async def assess(self, job: ProbeJob, probe: ProbeResult, *, trace: Trace | None = None) -> Outcome:
        tls = probe.tls
        revocation: ChainRevocation | None = None
        intercepted: bool | None = None
        if tls is not None and tls.verified:
            revocation = await self.check_revocation(job, tls.verified_path, trace=trace)
            if job.group.expected_roots:
                intercepted = tls.verified_path[-1].fingerprint_sha256 not in {
                    fp.hex() for fp in job.group.expected_roots
                }
                if trace:
                    trace(f"pinning: chain ends at {tls.verified_path[-1].subject}: "
                          + ("NOT an expected root (intercepted)" if intercepted else "expected root"))
        revoked = None
        if revocation is not None:
            revoked = any(status.status == "revoked" for _, status in revocation.statuses)
        verdict = None
        if job.group.validate_maps:
            verdict = self.maps_verdict(job, probe, revocation, intercepted)
            if trace:
                trace(f"MAPS verdict: {'valid' if verdict.valid else f'invalid: {verdict.reason} -> {verdict.cause} ({verdict.hresult})'}")
        crl_urls = tuple(dict.fromkeys(u for c in (tls.verified_path if tls else ()) for u in c.crl_urls))
        return Outcome(probe, revoked=revoked, intercepted=intercepted, maps=verdict, crl_urls=crl_urls)

    async def check_revocation(self, job: ProbeJob, path, *, trace: Trace | None = None) -> ChainRevocation:
        """Each certificate but the anchor, against its own distribution points."""
        statuses = []
        route = self.system_route
        certs = [x509.load_der_x509_certificate(f.der) for f in path]
        for i, facts in enumerate(path[:-1]):
            cert = certs[i]
            issuer = certs[i + 1] if i + 1 < len(certs) else None
            if issuer is None:
                for url in facts.ca_issuers_urls:
                    issuer = await self.crl_cache.fetch_issuer(url, route, job.group.timeout)
                    if issuer is not None:
                        break
            if not facts.crl_urls:
                statuses.append((facts.subject, RevocationStatus("unknown", "", "no CRL distribution point")))
                continue
            status = None
            for url in facts.crl_urls:
                check = await self.crl_cache.check(url, route, job.group.timeout)
                status = self.crl_cache.judge(cert, issuer, check)
                if trace:
                    how = "304 not modified" if check.not_modified else (
                        f"HTTP {check.http_status}" if check.reachable else check.error)
                    trace(f"CRL {url} via route {route.name}: {how} -> {status.status}"
                          + (f" ({status.detail})" if status.detail else ""))
                if status.status in ("good", "revoked"):
                    break  # a usable CRL decides; otherwise try the next point
            statuses.append((facts.subject, status))
        return ChainRevocation(tuple(statuses))

    def maps_verdict(self, job: ProbeJob, probe: ProbeResult, revocation: ChainRevocation | None,
                     intercepted: bool | None) -> MapsVerdict:
        if not probe.success:
            row = VERDICT_TABLE[str(probe.reason)]
            return MapsVerdict(False, reason=str(probe.reason), hresult=row.hresult, cause=str(row.cause),
                               detail=probe.detail)
        tls_options = self.config.tls
        if tls_options.pinning and intercepted:
            row = VERDICT_TABLE[Finding.TLS_INTERCEPTED]
            root = probe.tls.root.subject if probe.tls and probe.tls.root else "?"
            return MapsVerdict(False, reason=str(Finding.TLS_INTERCEPTED), hresult=row.hresult,
                               cause=str(row.cause), detail=f"chain ends at {root}")
        if tls_options.revocation and revocation is not None:
            worst = revocation.worst()
            if worst is not None:
                finding = _STATUS_FINDING[worst.status]
                row = VERDICT_TABLE[finding]
                cause = row.cause
                if finding == Finding.CRL_UNREACHABLE:
                    cause = self._unreachable_cause(job)
                return MapsVerdict(False, reason=str(finding), hresult=row.hresult, cause=str(cause),
                                   detail=f"{worst.url}: {worst.detail}")
        return MapsVerdict(True)

    def _unreachable_cause(self, job: ProbeJob) -> Cause:
        """The article's trap: MAPS reachable on Defender's path, CRLs not on a
        different system path -> the system-wide WinHTTP proxy is missing. On
        the same path, the CRLs themselves are blocked."""
        if self.system_route.proxy != job.route.proxy:
            return Cause.WINHTTP_PROXY_MISSING
        return Cause.CRL_BLOCKED
