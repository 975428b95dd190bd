"""AIA chain building: missing issuers fetched from caIssuers URLs on the system route.

Windows' chain engine downloads a certificate's missing issuer from the URL in
its Authority Information Access extension (caIssuers) when the server does
not send it (Microsoft, "How Certificate Revocation Works" / CertGetCertificateChain:
CERT_CHAIN_DISABLE_AIA "explicitly turns off AIA retrievals", so they are on
by default), over the same CryptNet path as CRLs: the system-wide WinHTTP proxy.
The probe does the same when a presented chain does not reach a trust anchor:

- the issuer of the last certificate that lacks one is fetched from its
  caIssuers URLs (http:// only), DER or PEM certificate or a PKCS#7
  "certs-only" bundle (.p7c), at most MAX_ISSUER_BYTES;
- at most MAX_FETCHES fetches per chain (a chain is a few levels deep);
- a certificate fetched is cached by URL for ISSUER_TTL, a failure for
  FAILURE_TTL, so every probe of a target does not refetch it.

The result says which URLs supplied issuers and, when the chain still lacks
one, why (the finding `aia_unreachable` of the MAPS verdict).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from .config import ConnectTo, Limits, Route
from .probes.fetch import CRYPTNET_REDIRECTS, Fetched, UnexpectedErrors, fetch
from .reasons import Reason
from .routes import RouteFailure
from .probes._tls import ca_issuers_urls as _ca_issuers

MAX_ISSUER_BYTES = 64 * 1024
MAX_FETCHES = 4
ISSUER_TTL = 3600.0
FAILURE_TTL = 15.0
MAX_CACHED = 256


@dataclass(frozen=True)
class IssuerFetch:
    url: str
    certificates: tuple[x509.Certificate, ...]  # empty: failed (see error)
    error: str = ""
    fetched_at: float = 0.0
    # The URL could not be reached on the route (network, or the proxy refused): the AIA finding.
    # An answer from the server that holds no certificate (404, garbage) is not that.
    unreachable: bool = False


@dataclass(frozen=True)
class ChainCompletion:
    """What AIA added to a presented chain."""

    added: tuple[bytes, ...] = ()  # DER of the issuers fetched, in the order found
    fetched_from: tuple[str, ...] = ()  # URLs that supplied them
    # Why a missing issuer could not be fetched: its caIssuers URLs were unreachable on the system
    # route. "" when nothing was missing, when it came, or when the server answered without it
    # (then the chain is simply untrusted, and `note` says why).
    error: str = ""
    note: str = ""


# The routes the system route gives one URL, in WinHTTP's failover order (Assessor.system_routes_for);
# raises routes.RouteFailure when it gives none (PAC unreachable or broken).
RoutesFor = Callable[[str], Awaitable[tuple[Route, ...]]]


def _issuer_fetch(url: str, got: Fetched | RouteFailure, started: float) -> IssuerFetch:
    if isinstance(got, RouteFailure):  # the system route gives this URL no way out (PAC failure)
        return IssuerFetch(url, (), f"{got.reason}: {got.detail}", started, unreachable=True)
    answer = got.answer
    if got.failure is not None:
        # Network failures and the proxy's own answers (proxy reasons): the URL is unreachable.
        return IssuerFetch(url, (), f"{got.failure.reason}: {got.failure.detail}", started, unreachable=True)
    if answer is None or answer.status != 200:
        return IssuerFetch(url, (), f"HTTP {answer.status if answer else 0}", started)
    if answer.truncated:
        return IssuerFetch(url, (), f"larger than {MAX_ISSUER_BYTES} bytes", started)
    certs = load_certificates(answer.body)
    return IssuerFetch(url, certs, "" if certs else "not a certificate (DER, PEM or PKCS#7)", started)


class IssuerCache:
    def __init__(self, limits: Limits, connect_to: tuple[ConnectTo, ...], route: Route, *,
                 errors: UnexpectedErrors | None = None, routes_for: RoutesFor | None = None):
        self.limits, self.connect_to, self.route = limits, connect_to, route
        self.errors = errors if errors is not None else UnexpectedErrors()  # the fetches' unexpected errors
        # A system route that is no single path (PAC, WPAD, fallback) is asked per URL, as the
        # certificate engine's WinHTTP does; without it, `route` carries every fetch.
        self.routes_for = routes_for
        self.fetches: OrderedDict[str, IssuerFetch] = OrderedDict()

    def with_routes(self, routes_for: RoutesFor) -> "IssuerCache":
        """A cache like this one (same settings, nothing fetched yet) that asks `routes_for` per URL."""
        return IssuerCache(self.limits, self.connect_to, self.route, errors=self.errors, routes_for=routes_for)

    async def issuers(self, url: str, timeout: float) -> IssuerFetch:
        known = self.fetches.get(url)
        ttl = ISSUER_TTL if known is not None and known.certificates else FAILURE_TTL
        if known is not None and time.time() - known.fetched_at < ttl:
            self.fetches.move_to_end(url)
            return known
        started = time.time()
        result = _issuer_fetch(url, await self._fetch(url, timeout), started)
        self.fetches[url] = result
        self.fetches.move_to_end(url)
        while len(self.fetches) > MAX_CACHED:
            self.fetches.popitem(last=False)
        return result

    async def _fetch(self, url: str, timeout: float) -> Fetched | RouteFailure:
        """The GET over the route's entries for `url`: the next one only when a proxy cannot be
        reached, as WinHTTP fails over (the same rule as the CRL checks, assess.py)."""
        deadline = time.monotonic() + timeout
        routes: tuple[Route, ...] = (self.route,)
        if self.routes_for is not None and not self.route.static:
            try:
                routes = await asyncio.wait_for(self.routes_for(url), timeout)
            except RouteFailure as failure:
                return failure
            except TimeoutError:
                return RouteFailure(Reason.PAC_UNREACHABLE, "the PAC file did not arrive in time")
        for k, route in enumerate(routes):
            got = await fetch(url, route, self.connect_to, self.limits, timeout=max(0.05, deadline - time.monotonic()),
                              body_cap=MAX_ISSUER_BYTES, redirects=CRYPTNET_REDIRECTS, errors=self.errors)
            if got.failure is None or got.failure.reason != Reason.PROXY_UNREACHABLE or k + 1 == len(routes):
                return got
        raise AssertionError("no route to try")  # routes is never empty

    async def complete(self, presented: list[bytes], verifies, timeout: float) -> ChainCompletion:
        """Fetch missing issuers until `verifies(chain)` says the chain is complete.

        `presented`: DER, leaf first. `verifies(list_of_der) -> bool`. Never raises."""
        chain = list(presented)
        added: list[bytes] = []
        used: list[str] = []
        deadline = time.monotonic() + timeout
        for _ in range(MAX_FETCHES):
            wanting = _wanting_issuer(chain)
            if wanting is None:
                break  # ends at a self-signed certificate: nothing to fetch
            urls = _ca_issuers(wanting)
            if not urls:
                return ChainCompletion(tuple(added), tuple(used),
                                       note=f"{wanting.subject.rfc4514_string()} names no caIssuers URL")
            errors, unreachable = [], []
            found = None
            for url in urls:
                left = deadline - time.monotonic()
                if left <= 0:
                    unreachable.append(f"{url}: timeout")
                    break
                got = await self.issuers(url, left)
                issuer = next((c for c in got.certificates if _issued(wanting, c)), None)
                if issuer is not None:
                    found = (url, issuer)
                    break
                why = f"{url}: {got.error or 'no certificate there issued ' + wanting.subject.rfc4514_string()}"
                (unreachable if got.unreachable else errors).append(why)
            if found is None:
                return ChainCompletion(tuple(added), tuple(used), "; ".join(unreachable), "; ".join(errors))
            der = found[1].public_bytes(Encoding.DER)
            chain.append(der)
            added.append(der)
            used.append(found[0])
            if verifies(chain):
                break
        return ChainCompletion(tuple(added), tuple(used))


def load_certificates(body: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates of an AIA answer: DER or PEM certificate, or a PKCS#7 bundle (DER or PEM)."""
    for load in (x509.load_der_x509_certificate, x509.load_pem_x509_certificate):
        try:
            return (load(body),)
        except Exception:  # noqa: BLE001, S112 - try the next format
            continue
    for load in (pkcs7.load_der_pkcs7_certificates, pkcs7.load_pem_pkcs7_certificates):
        try:
            return tuple(load(body))
        except Exception:  # noqa: BLE001, S112
            continue
    return ()


def _wanting_issuer(chain: list[bytes]) -> x509.Certificate | None:
    """The last certificate of the chain whose issuer is not in it (None: it ends self-signed)."""
    try:
        certs = [x509.load_der_x509_certificate(d) for d in chain]
    except ValueError:
        return None
    last = certs[-1]
    if last.issuer == last.subject:
        return None
    return last


def _issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - wrong key or unsupported algorithm
        return False
    return True
