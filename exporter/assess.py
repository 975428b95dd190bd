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

Pinning of a chain that did NOT verify (an inspection box whose CA is not
installed, a captive portal): `intercepted` is judged from the presented
chain: intercepted unless some presented certificate is an expected root or
is signed by one. The probe's reason (tls_untrusted, ...) and hresult stay;
the verdict's cause becomes tls_inspection when the chain is intercepted.

Time: the revocation stage has its own budget (see _revocation_budget), the
CRLs of a chain are fetched concurrently, so a job ends within its timeout
plus a few seconds, well inside the scheduler's safety margin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from .causes import VERDICT_TABLE, Cause, Evidence, Finding, cause_for
from .config import Config, ProbeJob, Route
from .crl import CRLCache, RevocationStatus
from .probes import CertFacts, ProbeEnv, ProbeResult, run_probe
from .probes._net import Trace
from .probes._tls import TrustStore
from .probes.pac import PacSandbox
from .reasons import Reason
from .routes import Hop, RouteBook, RouteFailure, static_label
from .state import MapsVerdict, Outcome


@dataclass(frozen=True)
class ChainRevocation:
    statuses: tuple[tuple[str, RevocationStatus], ...]  # (certificate subject, status), leaf first
    # For a system route evaluated per URL: (CRL URL, "DIRECT (PAC ... entry 1 of 2)", ...).
    hops: tuple[tuple[str, str], ...] = ()

    def worst(self) -> RevocationStatus | None:
        order = ("revoked", "unreachable", "invalid", "stale")
        for wanted in order:
            for _, status in self.statuses:
                if status.status == wanted:
                    return status
        return None


# Over the group's timeout, the most a job may spend on revocation after a slow
# probe (the scheduler drops a job at timeout + 5 s).
REVOCATION_GRACE = 4.0
# A CRL fetch ends this long before the revocation stage's deadline, on its own timeout.
FETCH_MARGIN = 0.1
REVOCATION_MIN_BUDGET = 1.0

_STATUS_FINDING = {
    "revoked": Finding.CERT_REVOKED,
    "unreachable": Finding.CRL_UNREACHABLE,
    "invalid": Finding.CRL_INVALID,
    "stale": Finding.CRL_STALE,
}


class Assessor:
    """Runs a job: probe, then revocation and pinning, then the MAPS verdict."""

    def __init__(self, config: Config, *, crl_cache: CRLCache | None = None, trust: TrustStore | None = None,
                 pac_sandbox: PacSandbox | None = None):
        self.config = config
        self.trust = trust
        # Routes evaluated per URL (bypass, PAC, WPAD, fallback); the sandbox outlives reloads.
        self.routes = RouteBook(config, sandbox=pac_sandbox, trust=trust)
        self.crl_cache = crl_cache or CRLCache(config.limits, config.connect_to)
        self.crl_cache.reconfigure(config.limits, config.connect_to)
        self._roots: dict[bytes, x509.Certificate] | None = None
        self._judgements: OrderedDict[tuple[int, bytes, bytes], tuple[object, RevocationStatus, float]] = OrderedDict()

    @property
    def system_route(self) -> Route:
        return self.config.routes["system"]

    async def run(self, job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> Outcome:
        if job.route.static:
            probe = await run_probe(job, env, trace=trace)
            return await self.assess(job, probe, trace=trace, proxy=static_label(job.route))
        probe, hop = await self.routes.run(job, env, lambda j, e: run_probe(j, e, trace=trace))
        if trace:
            trace(f"route {job.route.name}: " + (f"carried by {hop.label} ({hop.via}{', ' + hop.how if hop.how else ''})"
                                                 if hop else "no proxy chosen"))
        return await self.assess(job, probe, trace=trace, proxy=hop.label if hop else "")

    async def assess(self, job: ProbeJob, probe: ProbeResult, *, trace: Trace | None = None,
                     proxy: str | None = None) -> Outcome:
        proxy = static_label(job.route) if proxy is None else proxy
        tls = probe.tls
        revocation: ChainRevocation | None = None
        intercepted: bool | None = None
        if tls is not None and tls.verified:
            budget = _revocation_budget(job.group.timeout, probe.duration)
            revocation = await self.check_revocation(job, tls.verified_path, trace=trace, budget=budget)
            if job.group.expected_roots:
                intercepted = bytes.fromhex(tls.verified_path[-1].fingerprint_sha256) not in job.group.expected_roots
                if trace:
                    trace(f"pinning: chain ends at {tls.verified_path[-1].subject}: "
                          + ("NOT an expected root (intercepted)" if intercepted else "expected root"))
        elif tls is not None and tls.presented and job.group.expected_roots:
            intercepted = not self._presented_reaches_expected_root(tls.presented, job.group.expected_roots)
            if trace:
                trace("pinning (unverified chain): " + (
                    "no presented certificate is, or is signed by, an expected root (intercepted)"
                    if intercepted else "the presented chain reaches an expected root"))
        revoked = None
        if revocation is not None:
            revoked = any(status.status == "revoked" for _, status in revocation.statuses)
        verdict = None
        if job.group.validate_maps:
            verdict = self.maps_verdict(job, probe, revocation, intercepted, proxy=proxy)
            if trace:
                trace(f"MAPS verdict: {'valid' if verdict.valid else f'invalid: {verdict.reason} -> {verdict.cause} ({verdict.hresult})'}")
        crl_urls = tuple(dict.fromkeys(u for c in (tls.verified_path if tls else ()) for u in c.crl_urls))
        return Outcome(probe, revoked=revoked, intercepted=intercepted, maps=verdict, crl_urls=crl_urls, proxy=proxy)

    async def check_revocation(self, job: ProbeJob, path, *, trace: Trace | None = None,
                               budget: float | None = None) -> ChainRevocation:
        """Each certificate but the anchor, against its own distribution points.

        The certificates are checked concurrently; within one certificate the
        distribution points are tried in order until one decides (good or
        revoked). A certificate whose check has not finished within `budget`
        seconds is "unreachable" (timed out)."""
        budget = job.group.timeout if budget is None else budget
        system = self.system_route
        certs = [_certificate(f.der) for f in path]
        deadline = time.monotonic() + budget
        hops: dict[str, Hop | RouteFailure] = {}

        async def route_for(url: str) -> Route | None:
            """The system route as WinHTTP would use it for this URL (None: it cannot say)."""
            if system.static:
                return system
            if url not in hops:
                try:
                    hops[url] = await asyncio.wait_for(self.routes.hop_for(system, url), _left(deadline))
                except RouteFailure as failure:
                    hops[url] = failure
                except TimeoutError:
                    hops[url] = RouteFailure(Reason.PAC_UNREACHABLE, "the PAC file did not arrive in time")
                if trace:
                    hop = hops[url]
                    trace(f"route {system.name} for {url}: " + (
                        f"{hop.label} ({hop.how or hop.via})" if isinstance(hop, Hop) else f"{hop.reason}: {hop.detail}"))
            hop = hops[url]
            return hop.route if isinstance(hop, Hop) else None

        async def one(i: int, facts: CertFacts) -> RevocationStatus:
            cert = certs[i]
            issuer = certs[i + 1] if i + 1 < len(certs) else None
            if issuer is None:  # not reached for a verified path; kept for partial paths
                for url in facts.ca_issuers_urls:
                    route = await route_for(url)
                    if route is None:
                        continue
                    issuer = await self.crl_cache.fetch_issuer(url, route, _left(deadline))
                    if issuer is not None:
                        break
            issuer_der = path[i + 1].der if i + 1 < len(path) else (
                issuer.public_bytes(Encoding.DER) if issuer is not None else b"")
            if not facts.crl_urls:
                if trace:
                    trace(f"CRL: {facts.subject} has no CRL distribution point -> unknown (does not fail)")
                return RevocationStatus("unknown", "", "no CRL distribution point")
            status = RevocationStatus("unreachable", "", "no distribution point tried")
            for url in facts.crl_urls:
                route = await route_for(url)
                if route is None:
                    failure = hops[url]
                    status = RevocationStatus("unreachable", url, f"{failure.reason}: {failure.detail}")
                    continue
                try:
                    # The fetch's own deadline comes first, so that a stall is named by
                    # the step it happened in (timeout vs connect_timeout), not cut off here.
                    check = await self.crl_cache.check(url, route, max(0.05, _left(deadline) - FETCH_MARGIN))
                except Exception as exc:  # noqa: BLE001 - a bug here must not lose the job
                    status = RevocationStatus("unreachable", url, f"CRL check failed: {exc}")
                    continue
                status = self._judge(cert, facts.der, issuer, issuer_der, check)
                if trace:
                    how = "304 not modified" if check.not_modified else (
                        f"HTTP {check.http_status}" if check.reachable else check.error)
                    trace(f"CRL {url} via route {route.name}: {how} -> {status.status}"
                          + (f" ({status.detail})" if status.detail else ""))
                if status.status in ("good", "revoked"):
                    break  # a usable CRL decides; otherwise try the next point
            return status

        tasks = [asyncio.ensure_future(one(i, facts)) for i, facts in enumerate(path[:-1])]
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=_left(deadline))
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        statuses = []
        for facts, task in zip(path[:-1], tasks):
            if task.done() and not task.cancelled() and task.exception() is None:
                statuses.append((facts.subject, task.result()))
            else:
                url = facts.crl_urls[0] if facts.crl_urls else ""
                statuses.append((facts.subject, RevocationStatus(
                    "unreachable", url, f"{Reason.TIMEOUT}: revocation check not finished within {budget:.1f} s",
                    reason=Reason.TIMEOUT)))
        described = tuple(
            (url, f"{hop.label} ({hop.how or 'route ' + hop.via})" if isinstance(hop, Hop) else f"nowhere ({hop.reason})")
            for url, hop in hops.items())
        return ChainRevocation(tuple(statuses), described)

    def _judge(self, cert: x509.Certificate, der: bytes, issuer: x509.Certificate | None, issuer_der: bytes,
               check) -> RevocationStatus:
        """CRLCache.judge, remembered per (CRL check, certificate): every probe of a
        target within RECHECK_SECONDS shares one check object, so its chain is
        judged once, not once per probe (issuer names, signature, serial look-up).
        A remembered verdict ends with the CRL's nextUpdate, when it turns stale."""
        key = (id(check), der, issuer_der)
        hit = self._judgements.get(key)
        now = time.time()
        if hit is not None and hit[0] is check and now < hit[2]:
            return hit[1]
        status = self.crl_cache.judge(cert, issuer, check, now=now)
        document = check.document
        until = document.next_update if document is not None and document.next_update is not None else now + 3600
        self._judgements[key] = (check, status, until)  # holding `check` keeps its id unique
        if len(self._judgements) > _JUDGEMENTS_KEPT:
            self._judgements.popitem(last=False)
        return status

    def _presented_reaches_expected_root(self, presented: tuple[CertFacts, ...], expected: frozenset[bytes]) -> bool:
        roots = [cert for fp, cert in self._known_roots().items() if fp in expected]
        for facts in presented:
            if bytes.fromhex(facts.fingerprint_sha256) in expected:
                return True
            try:
                cert = x509.load_der_x509_certificate(facts.der)
            except ValueError:
                continue
            for root in roots:
                if cert.issuer != root.subject:
                    continue
                try:
                    cert.verify_directly_issued_by(root)
                except Exception:  # noqa: BLE001, S112 - wrong signature or unsupported key: not issued by it
                    continue
                return True
        return False

    def _known_roots(self) -> dict[bytes, x509.Certificate]:
        """Certificates the expected_roots fingerprints can name: the trust store's anchors."""
        if self._roots is None:
            trust = self.trust or TrustStore(ca_file=self.config.tls.ca_file)
            self._roots = {cert.fingerprint(hashes.SHA256()): cert for cert in trust.anchors}
        return self._roots

    def maps_verdict(self, job: ProbeJob, probe: ProbeResult, revocation: ChainRevocation | None,
                     intercepted: bool | None, *, proxy: str | None = None) -> MapsVerdict:
        """The verdict, its cause chosen by causes.cause_for from what was seen, as for a host's hresult.
        `proxy` is the hop that carried the probe (DIRECT or host:port; default: the static route's)."""
        proxy = static_label(job.route) if proxy is None else proxy
        verdict = self._maps_verdict(job, probe, revocation, intercepted, proxy)
        if verdict.valid:
            return verdict
        cause = cause_for(verdict.hresult, Evidence(situation=Cause(verdict.cause), intercepted=bool(intercepted)))
        return dataclasses.replace(verdict, cause=str(cause))

    def _maps_verdict(self, job: ProbeJob, probe: ProbeResult, revocation: ChainRevocation | None,
                      intercepted: bool | None, proxy: str) -> MapsVerdict:
        if not probe.success:
            row = VERDICT_TABLE[str(probe.reason)]
            cause = row.cause
            detail = probe.detail
            if intercepted and probe.reason in _CHAIN_REASONS:
                # Windows fails on the untrusted/misnamed chain itself (the hresult stays);
                # the remedy is the inspection box's.
                cause = Cause.TLS_INSPECTION
                root = probe.tls.root.subject if probe.tls and probe.tls.root else "?"
                detail = f"{detail}; the presented chain ends at {root}, not at an expected root"
            return MapsVerdict(False, reason=str(probe.reason), hresult=row.hresult, cause=str(cause),
                               detail=detail)
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
                detail = f"{worst.url}: {worst.detail}"
                if finding == Finding.CRL_UNREACHABLE:
                    cause = self._unreachable_cause(worst, proxy)
                    how = dict(revocation.hops).get(worst.url)
                    if how is not None:
                        detail += f"; the {self.system_route.name} route ({self.system_route.kind}) sends it {how}"
                return MapsVerdict(False, reason=str(finding), hresult=row.hresult, cause=str(cause), detail=detail)
        return MapsVerdict(True)

    def _unreachable_cause(self, status: RevocationStatus, proxy: str) -> Cause:
        """The article's trap: MAPS reached through a proxy (Defender's static one
        or its PAC's choice) while the system route has no proxy configuration at
        all (no static proxy, PAC or WPAD) -> the system-wide WinHTTP proxy is
        missing. A system route that asks for proxy credentials -> proxy_auth.
        A CRL server that accepted and then stalled past the budget -> timeout.
        Any other case (same path, a WinHTTP proxy that cannot fetch the CRLs, or
        a PAC or bypass entry that sends them DIRECT into a firewall) -> the CRLs
        themselves are blocked."""
        configured = self.routes.configured(self.system_route)
        if configured and (status.reason == Reason.PROXY_AUTH_REQUIRED or status.http_status == 407):
            return Cause.PROXY_AUTH
        if status.reason == Reason.TIMEOUT:
            # The CRL server (or the proxy) took the connection and then stalled past the
            # budget: nothing blocks the CRLs, the path is too slow.
            return Cause.TIMEOUT
        if not configured and proxy not in ("DIRECT", ""):
            return Cause.WINHTTP_PROXY_MISSING
        return Cause.CRL_BLOCKED


_JUDGEMENTS_KEPT = 4096
_PARSED_KEPT = 4096
_parsed: OrderedDict[bytes, x509.Certificate] = OrderedDict()


def _certificate(der: bytes) -> x509.Certificate:
    """Parse a DER certificate once: the same chain comes back on every probe."""
    cert = _parsed.get(der)
    if cert is None:
        cert = _parsed[der] = x509.load_der_x509_certificate(der)
        if len(_parsed) > _PARSED_KEPT:
            _parsed.popitem(last=False)
    return cert


def _revocation_budget(timeout: float, probe_duration: float) -> float:
    """Seconds the revocation stage may take: the group's timeout, but no more
    than what keeps probe + revocation within timeout + REVOCATION_GRACE."""
    return max(REVOCATION_MIN_BUDGET, min(timeout, timeout + REVOCATION_GRACE - probe_duration))


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


_CHAIN_REASONS = (Reason.TLS_UNTRUSTED, Reason.TLS_HOSTNAME_MISMATCH)
