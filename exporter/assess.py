"""After the probe: revocation, pinning and the MAPS verdict for one job.

The probe says whether the endpoint was reached over a valid TLS connection
(missing issuers fetched by AIA on the system route, see aia.py). This module
adds what Windows checks on top, without changing the probe's success or reason:

- revocation: every certificate of the verified chain but the root, in
  Windows' order: its OCSP responders (ocsp.py), then its CRL distribution
  points (crl.py), all fetched on the **system** route, the path the OS uses;
  a certificate naming neither fails (revocation_info_missing), as WinHTTP
  fails it on Windows;
- the endpoint cache model: until when an endpoint that fetched the chain's
  revocation data while it could keeps passing (Outcome.revocation_valid_until);
- pinning: the chain must end at one of the group's expected roots, else the
  connection is intercepted (a TLS-inspecting proxy, even a trusted one);
- for groups with `validate_maps`, the verdict MpCmdRun -ValidateMapsConnection
  would give, with the hresult, the cause and the reason (causes.py).

Pinning of a chain that did NOT verify (an inspection box whose CA is not
installed, a captive portal): `intercepted` is judged from the presented
chain: intercepted unless some presented certificate is an expected root or
is signed by one. The probe's reason (tls_untrusted, ...) and hresult stay;
the verdict's cause becomes tls_inspection when the chain is intercepted. A
chain left incomplete because its issuer could not be fetched is not judged.

Time: the revocation stage has its own share of the job's budget
(budget.JobBudget.revocation), the certificates of a chain are checked
concurrently, and within one certificate each URL but the last gets half the
budget left (as Windows' accumulative revocation timeout does), so a hanging
OCSP responder leaves time for the CRLs; a job ends within its timeout plus a
few seconds, before the scheduler stops waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .budget import FETCH_MARGIN
from .causes import VERDICT_TABLE, Cause, Evidence, Finding, cause_for
from .config import Config, ProbeJob, Route
from .crl import CRLCache, RevocationStatus, Source, Status
from .ocsp import OCSPCache, staple_status
from .probes import CertFacts, ProbeEnv, ProbeResult, run_probe
from .probes._net import Trace
from .probes._tls import TrustStore
from .probes.pac import PacSandbox
from .reasons import Reason
from .routes import Hop, RouteBook, RouteFailure, static_label


@dataclass(frozen=True)
class MapsVerdict:
    """Would `MpCmdRun -ValidateMapsConnection` succeed over this target?"""

    valid: bool
    source: str = "emulated"
    reason: str = ""  # the probe's reason or a revocation/pinning finding
    hresult: str = ""
    cause: str = ""
    detail: str = ""
    # Which revocation source decided each certificate ("CN=...: ocsp http://..., CN=...: crl http://...").
    revocation: str = ""


@dataclass(frozen=True)
class Outcome:
    """Everything learnt from one run of a job: the probe and its assessment."""

    probe: ProbeResult
    # Revocation and pinning (None: not judged, e.g. plain HTTP or turned off).
    revoked: bool | None = None
    intercepted: bool | None = None
    maps: MapsVerdict | None = None
    crl_urls: tuple[str, ...] = ()
    # The proxy that carried the probe (DIRECT, or host:port); "" when none was chosen.
    proxy: str = ""
    # The endpoint cache model: until when an endpoint that fetched the chain's revocation data
    # when it still could keeps passing (None: unknown, e.g. nothing good fetched yet).
    revocation_valid_until: float | None = None

    def findings(self) -> list[str]:
        """What the assessment found beyond the probe, in words (check, the status page)."""
        found = []
        if self.intercepted:
            found.append("TLS intercepted (the chain ends outside the expected roots)")
        if self.revoked:
            found.append("certificate revoked")
        return found


@dataclass(frozen=True)
class ChainRevocation:
    statuses: tuple[tuple[str, RevocationStatus], ...]  # (certificate subject, status), leaf first
    # For a system route evaluated per URL: (CRL URL, "DIRECT (PAC ... entry 1 of 2)", ...).
    hops: tuple[tuple[str, str], ...] = ()
    # Per certificate (same order): until when the endpoint's cache (the last good OCSP answer or
    # CRL it could fetch) keeps it passing; None where no good answer was ever fetched.
    cached_until: tuple[float | None, ...] = ()

    def worst(self) -> RevocationStatus | None:
        for wanted in _WORST_FIRST:
            for _, status in self.statuses:
                if status.status is wanted:
                    return status
        return None

    def valid_until(self) -> float | None:
        """The earliest expiry of the cached answers the chain needs: until then an endpoint that
        fetched them when it still could keeps passing. None if a certificate has none (or is revoked)."""
        if not self.statuses or any(s.status in (Status.REVOKED, Status.NO_INFO) for _, s in self.statuses):
            return None
        if len(self.cached_until) != len(self.statuses) or any(u is None for u in self.cached_until):
            return None
        return min(u for u in self.cached_until if u is not None)

    def decided_by(self) -> str:
        """Which source decided each certificate, e.g. "CN=leaf: ocsp http://..., CN=CA: crl http://..."."""
        return ", ".join(f"{subject}: {s.source} {s.url}".rstrip() for subject, s in self.statuses
                         if s.status.decides)


# Worst first: what the verdict reports when several certificates fail.
_WORST_FIRST = (Status.REVOKED, Status.UNREACHABLE, Status.INVALID, Status.STALE, Status.NO_INFO)


_STATUS_FINDING = {
    Status.REVOKED: Finding.CERT_REVOKED,
    Status.UNREACHABLE: Finding.CRL_UNREACHABLE,
    Status.INVALID: Finding.CRL_INVALID,
    Status.STALE: Finding.CRL_STALE,
    Status.NO_INFO: Finding.REVOCATION_INFO_MISSING,
}
# A certificate without distribution points whose OCSP responders did not decide.
_OCSP_FINDING = {
    Status.UNREACHABLE: Finding.OCSP_UNREACHABLE,
    Status.INVALID: Finding.OCSP_INVALID,
    Status.STALE: Finding.OCSP_STALE,
    Status.REVOKED: Finding.CERT_REVOKED,
}


class Assessor:
    """Runs a job: probe, then revocation and pinning, then the MAPS verdict."""

    def __init__(self, config: Config, *, crl_cache: CRLCache | None = None, ocsp_cache: OCSPCache | None = None,
                 trust: TrustStore | None = None, pac_sandbox: PacSandbox | None = None):
        self.config = config
        self.trust = trust
        # Routes evaluated per URL (bypass, PAC, WPAD, fallback); the sandbox outlives reloads.
        self.routes = RouteBook(config, sandbox=pac_sandbox, trust=trust)
        self._crl_carriers: dict[str, tuple[object, Hop]] = {}  # CRL URL -> (its last check, the hop that made it)
        self._ocsp_carriers: OrderedDict[tuple[str, bytes], tuple[object, Hop]] = OrderedDict()  # (URL, cert DER) -> the same
        self.crl_cache = crl_cache or CRLCache(config.limits, config.connect_to)
        self.crl_cache.reconfigure(config.limits, config.connect_to)
        self.ocsp_cache = ocsp_cache or OCSPCache(config.limits, config.connect_to)
        self.ocsp_cache.reconfigure(config.limits, config.connect_to)
        self._roots: dict[bytes, x509.Certificate] | None = None
        self._judgements: OrderedDict[tuple[int, bytes, bytes], tuple[object, RevocationStatus, float]] = OrderedDict()
        # Parsed certificates by DER: the same chains come back on every probe.
        self._parsed: OrderedDict[bytes, x509.Certificate] = OrderedDict()

    @property
    def system_route(self) -> Route:
        return self.config.routes["system"]

    async def system_routes_for(self, url: str) -> tuple[Route, ...]:
        """The routes the system route gives `url` (a CRL, OCSP or caIssuers URL) in failover order;
        RouteFailure when it gives none. What the probers' AIA fetches ask (ProbeEnv.with_system_routes)."""
        system = self.system_route
        if system.static:
            return (system,)
        return tuple(hop.route for hop in await self.routes.hops_for(system, url))

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
            budget = job.budget.revocation(probe.duration)
            revocation = await self.check_revocation(job, tls.verified_path, trace=trace, budget=budget,
                                                     staple=tls.ocsp_staple)
            if job.group.expected_roots:
                intercepted = bytes.fromhex(tls.verified_path[-1].fingerprint_sha256) not in job.group.expected_roots
                if trace:
                    trace(f"pinning: chain ends at {tls.verified_path[-1].subject}: "
                          + ("NOT an expected root (intercepted)" if intercepted else "expected root"))
        elif tls is not None and tls.aia_error and probe.reason == Reason.TLS_UNTRUSTED:
            # The issuer could not be fetched: the chain is incomplete, which says nothing
            # about interception (Microsoft's leaf alone is not signed by a root either).
            if trace:
                trace(f"pinning: not judged, the chain lacks an issuer ({tls.aia_error})")
        elif tls is not None and tls.presented and job.group.expected_roots:
            intercepted = not self._presented_reaches_expected_root(tls.presented, job.group.expected_roots)
            if trace:
                trace("pinning (unverified chain): " + (
                    "no presented certificate is, or is signed by, an expected root (intercepted)"
                    if intercepted else "the presented chain reaches an expected root"))
        revoked = None
        if revocation is not None:
            revoked = any(status.status is Status.REVOKED for _, status in revocation.statuses)
        verdict = None
        if job.group.validate_maps:
            verdict = self.maps_verdict(job, probe, revocation, intercepted, proxy=proxy)
            if trace:
                trace(f"MAPS verdict: {'valid' if verdict.valid else f'invalid: {verdict.reason} -> {verdict.cause} ({verdict.hresult})'}")
        crl_urls = tuple(dict.fromkeys(u for c in (tls.verified_path if tls else ()) for u in c.crl_urls))
        valid_until = revocation.valid_until() if revocation is not None and job.group.validate_maps else None
        return Outcome(probe, revoked=revoked, intercepted=intercepted, maps=verdict, crl_urls=crl_urls, proxy=proxy,
                       revocation_valid_until=valid_until)

    async def check_revocation(self, job: ProbeJob, path, *, trace: Trace | None = None,
                               budget: float | None = None, staple: bytes | None = None) -> ChainRevocation:
        """Each certificate but the anchor, in Windows' order of revocation sources.

        Windows (CertGetCertificateChain, "Certificate revocation list semantics"): a
        stapled OCSP response, a time-valid OCSP response or CRL in the CryptNet URL cache,
        a CRL in a system store, OCSP from the certificate's AIA, then its CRL distribution
        points. We model a fresh endpoint (empty cache: see docs/maps-validation.md), so:
        for the leaf the OCSP response the server stapled (`staple`, the bytes from the
        handshake; None when none was asked for), then for every certificate each OCSP
        responder, then each distribution point, until one decides (good or revoked). The
        root is not checked (CERT_CHAIN_REVOCATION_CHECK_CHAIN_EXCLUDE_ROOT). The certificates are checked
        concurrently; one whose check has not finished within `budget` seconds is
        "unreachable" (timed out). The cache model (cached_until) is computed alongside."""
        budget = job.budget.revocation(0.0) if budget is None else budget
        system = self.system_route
        certs = [self._certificate(f.der) for f in path]
        deadline = time.monotonic() + budget
        plans: dict[str, tuple[Hop, ...] | RouteFailure] = {}
        used: dict[str, Hop] = {}  # the hop that carried each URL's check
        stapled_until: list[float] = []  # nextUpdate of a good staple: the leaf's data comes with each handshake

        async def routes_for(url: str) -> tuple[Route, ...] | RouteFailure:
            """The system route as WinHTTP would use it for this URL, in failover order."""
            if system.static:
                return (system,)
            if url not in plans:
                try:
                    plans[url] = await asyncio.wait_for(self.routes.hops_for(system, url), _left(deadline))
                except RouteFailure as failure:
                    plans[url] = failure
                except TimeoutError:
                    plans[url] = RouteFailure(Reason.PAC_UNREACHABLE, "the PAC file did not arrive in time")
                if trace:
                    plan = plans[url]
                    trace(f"route {system.name} for {url}: " + (
                        "; ".join(h.label for h in plan) if isinstance(plan, tuple) else f"{plan.reason}: {plan.detail}"))
            plan = plans[url]
            return plan if isinstance(plan, RouteFailure) else tuple(h.route for h in plan)

        async def check_crl(url: str, routes: tuple[Route, ...], timeout: float):
            """The CRL check over the first route that reaches a proxy: WinHTTP tries the next
            entry of a PAC answer when a proxy cannot be reached."""
            for k, route in enumerate(routes):
                # The fetch's own deadline comes first, so that a stall is named by
                # the step it happened in (timeout vs connect_timeout), not cut off here.
                left = max(0.05, _left(deadline) - FETCH_MARGIN)
                check = await self.crl_cache.check(url, route, min(timeout, left))
                plan = plans.get(url)
                if isinstance(plan, tuple):
                    # A check shared from the cache was made over the hop that made it.
                    known = self._crl_carriers.get(url)
                    if known is None or known[0] is not check:
                        known = self._crl_carriers[url] = (check, plan[k])
                    used[url] = known[1]
                if check.reachable or check.reason != Reason.PROXY_UNREACHABLE or k + 1 == len(routes):
                    return check
                if trace:
                    trace(f"CRL {url}: {check.error}; trying the next entry")
                self.crl_cache.forget(url, route.name)
            raise AssertionError("no route to try")  # routes is never empty

        async def one(i: int, facts: CertFacts) -> RevocationStatus:
            cert, issuer = certs[i], certs[i + 1]
            failures: list[RevocationStatus] = []
            if i == 0 and staple:
                status = staple_status(staple, cert, issuer, time.time())
                if trace:
                    trace(f"OCSP staple ({len(staple)} bytes) -> {status.status}"
                          + (f" ({status.detail})" if status.detail else ""))
                if status.status is Status.GOOD and status.valid_until is not None:
                    stapled_until.append(status.valid_until)
                if status.status.decides:
                    return status
                failures.append(status)  # unusable: Windows asks the certificate's own sources next
            elif i == 0 and trace and staple is not None:
                trace("OCSP staple: asked for, none sent")
            if not facts.crl_urls and not facts.ocsp_urls:
                if failures:
                    return failures[0]
                if trace:
                    trace(f"revocation: {facts.subject} names no OCSP responder and no CRL distribution point")
                return RevocationStatus(Status.NO_INFO, "", "the certificate names no OCSP responder and no CRL "
                                        "distribution point (CRYPT_E_NO_REVOCATION_CHECK)", source=Source.NONE)
            sources = len(failures) + len(facts.ocsp_urls) + len(facts.crl_urls)

            def share() -> float:
                # Each URL but the last gets half of what is left (Windows' accumulative timeout);
                # the fetch's own deadline comes first, so that a stall is named by the step it
                # happened in (timeout vs connect_timeout), not cut off here.
                left = max(0.05, _left(deadline) - FETCH_MARGIN)
                return left / (2 if len(failures) < sources - 1 else 1)

            def nowhere(url: str, source: Source) -> RevocationStatus:
                failure = plans[url]
                assert isinstance(failure, RouteFailure)
                return RevocationStatus(Status.UNREACHABLE, url, f"{failure.reason}: {failure.detail}", source=source)

            for url in facts.ocsp_urls:
                routes = await routes_for(url)
                if isinstance(routes, RouteFailure):
                    failures.append(nowhere(url, Source.OCSP))
                    continue
                plan = plans.get(url)
                for k, route in enumerate(routes):  # WinHTTP's failover, as for the CRLs below
                    check = await self.ocsp_cache.check(url, cert, issuer, route, share())
                    if isinstance(plan, tuple):
                        # A check shared from the cache was made over the hop that made it.
                        known = self._ocsp_carriers.get((url, facts.der))
                        if known is None or known[0] is not check:
                            known = self._ocsp_carriers[(url, facts.der)] = (check, plan[k])
                            if len(self._ocsp_carriers) > _JUDGEMENTS_KEPT:
                                self._ocsp_carriers.popitem(last=False)
                        used[url] = known[1]
                    if check.reachable or check.reason != Reason.PROXY_UNREACHABLE or k + 1 == len(routes):
                        break
                    self.ocsp_cache.forget(url, route.name, cert)
                status = self.ocsp_cache.judge(check)
                if trace:
                    how = f"HTTP {check.http_status} ({check.method})" if check.reachable else check.error
                    trace(f"OCSP {url} via route {route.name}: {how} -> {status.status}"
                          + (f" ({status.detail})" if status.detail else ""))
                if status.status.decides:
                    return status
                failures.append(status)
            for url in facts.crl_urls:
                routes = await routes_for(url)
                if isinstance(routes, RouteFailure):
                    failures.append(nowhere(url, Source.CRL))
                    continue
                try:
                    check = await check_crl(url, routes, share())
                except Exception as exc:  # noqa: BLE001 - a bug here must not lose the job
                    failures.append(RevocationStatus(Status.UNREACHABLE, url, f"CRL check failed: {exc}"))
                    continue
                status = self._judge(cert, facts.der, issuer, path[i + 1].der, check)
                if trace:
                    how = "304 not modified" if check.not_modified else (
                        f"HTTP {check.http_status}" if check.reachable else check.error)
                    trace(f"CRL {url} via route {system.name}: {how} -> {status.status}"
                          + (f" ({status.detail})" if status.detail else ""))
                if status.status.decides:
                    return status
                failures.append(status)
            return _no_decision(failures)

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
                url = facts.crl_urls[0] if facts.crl_urls else (facts.ocsp_urls[0] if facts.ocsp_urls else "")
                statuses.append((facts.subject, RevocationStatus(
                    Status.UNREACHABLE, url, f"{Reason.TIMEOUT}: revocation check not finished within {budget:.1f} s",
                    reason=Reason.TIMEOUT)))
        described = tuple(
            (url, f"{used[url].label} ({used[url].how or 'route ' + used[url].via})" if url in used
             else f"nowhere ({plan.reason})" if isinstance(plan, RouteFailure) else "")
            for url, plan in plans.items())
        now = time.time()
        cached = tuple(self._cached_until(certs[i], certs[i + 1], facts, now, stapled_until if i == 0 else [])
                       for i, facts in enumerate(path[:-1]))
        return ChainRevocation(tuple(statuses), described, cached)

    def _cached_until(self, cert: x509.Certificate, issuer: x509.Certificate, facts: CertFacts,
                      now: float, stapled: list[float]) -> float | None:
        """The endpoint's cache: the latest expiry among the good answers it could fetch (the last good
        OCSP answer per responder, the last good CRL per distribution point), or None. It stays put while
        fetches fail, and it is in memory only: a restarted exporter models a fresh endpoint. A good
        staple counts too (`stapled`): it comes with every handshake, whatever the system route does."""
        untils = list(stapled) + [self.ocsp_cache.cached_good_until(url, cert, now) for url in facts.ocsp_urls]
        untils += [self.crl_cache.cached_good_until(cert, issuer, url, now) for url in facts.crl_urls]
        known = [u for u in untils if u is not None]
        if not known:
            return None
        return min(max(known), facts.not_after)  # an endpoint's cache cannot outlive the certificate

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

    def _certificate(self, der: bytes) -> x509.Certificate:
        """Parse a DER certificate once: the same chain comes back on every probe."""
        cert = self._parsed.get(der)
        if cert is None:
            cert = self._parsed[der] = x509.load_der_x509_certificate(der)
            if len(self._parsed) > _PARSED_KEPT:
                self._parsed.popitem(last=False)
        return cert

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
        if not probe.success and probe.tls is not None and probe.tls.aia_error \
                and probe.reason == Reason.TLS_UNTRUSTED:
            # The server left out an issuer and Windows could not fetch it either.
            row = VERDICT_TABLE[Finding.AIA_UNREACHABLE]
            return MapsVerdict(False, reason=str(Finding.AIA_UNREACHABLE), hresult=row.hresult,
                               cause=str(self._unreachable_cause(None, proxy)),
                               detail=f"a missing issuer could not be fetched: {probe.tls.aia_error}")
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
                finding = (_STATUS_FINDING if worst.source in (Source.CRL, Source.NONE) else _OCSP_FINDING)[worst.status]
                row = VERDICT_TABLE[finding]
                cause = row.cause
                detail = f"{worst.url}: {worst.detail}" if worst.url else worst.detail
                if finding in (Finding.CRL_UNREACHABLE, Finding.OCSP_UNREACHABLE):
                    cause = self._unreachable_cause(worst, proxy)
                    how = dict(revocation.hops).get(worst.url)
                    if how is not None:
                        detail += f"; the {self.system_route.name} route ({self.system_route.kind}) sends it {how}"
                return MapsVerdict(False, reason=str(finding), hresult=row.hresult, cause=str(cause), detail=detail,
                                   revocation=revocation.decided_by())
        return MapsVerdict(True, revocation=revocation.decided_by() if revocation is not None else "")

    def _unreachable_cause(self, status: RevocationStatus | None, proxy: str) -> Cause:
        """The article's trap: MAPS reached through a proxy (Defender's static one
        or its PAC's choice) while the system route has no proxy configuration at
        all (no static proxy, PAC or WPAD) -> the system-wide WinHTTP proxy is
        missing. A system route that asks for proxy credentials -> proxy_auth.
        Any other case (same path, a WinHTTP proxy that cannot fetch the CRLs, or
        a PAC or bypass entry that sends them DIRECT into a firewall) -> the CRLs
        themselves are blocked. A server that accepted and then stalled past the
        budget -> timeout."""
        configured = self.routes.configured(self.system_route)
        if configured and status is not None and (status.reason == Reason.PROXY_AUTH_REQUIRED
                                                  or status.http_status == 407):
            return Cause.PROXY_AUTH
        if status is not None and status.reason == Reason.TIMEOUT:
            # The server (or the proxy) took the connection and then stalled past the
            # budget: nothing blocks the URLs, the path is too slow.
            return Cause.TIMEOUT
        if not configured and proxy not in ("DIRECT", ""):
            return Cause.WINHTTP_PROXY_MISSING
        return Cause.CRL_BLOCKED


def _no_decision(failures: list[RevocationStatus]) -> RevocationStatus:
    """No source decided: Windows reports CRYPT_E_REVOCATION_OFFLINE. The status named is the
    CRL's when the certificate has a distribution point (the article's case), else the OCSP
    responder's; the detail lists every source tried."""
    # An OCSP "unknown" (the responder does not know the certificate) decides nothing either.
    failures = [dataclasses.replace(f, status=Status.INVALID) if f.status is Status.UNKNOWN else f for f in failures]
    crl = [f for f in failures if f.source is Source.CRL]
    main = (crl or failures)[-1]
    if len(failures) > 1:
        detail = "; ".join(f"{f.source} {f.url}: {f.status} ({f.detail})" for f in failures)
        return dataclasses.replace(main, url="", detail=detail)
    return main


_JUDGEMENTS_KEPT = 4096
_PARSED_KEPT = 4096


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


_CHAIN_REASONS = (Reason.TLS_UNTRUSTED, Reason.TLS_HOSTNAME_MISMATCH)
