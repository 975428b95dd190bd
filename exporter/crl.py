"""Certificate revocation the way Windows does it: CRLs over plain HTTP on the
system route, cached until nextUpdate, revalidated with conditional requests.

- Reachability of each distribution point is measured on every check (a
  conditional GET answered 304 costs a few hundred bytes), but a CRL body is
  downloaded only when it changed: a 20 MB CRL is not fetched every interval.
- Checks of the same (URL, route) within RECHECK_SECONDS share one request,
  so seven MAPS targets with one chain cost one request per CRL.
- Downloads are capped in bytes (limits.crl_bytes) and time; a CRL over the
  cap is `crl_invalid` (too large) and is never held in memory whole.
- A CRL is valid when it parses (DER or PEM), names the certificate's issuer,
  is signed by the issuer's key and its nextUpdate has not passed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .config import ConnectTo, Limits, Route
from .probes._http import Validators
from .probes.content import load_crl
from .probes.fetch import CRYPTNET_REDIRECTS, UnexpectedErrors, fetch
from .reasons import Reason
from .utc import iso

log = logging.getLogger("exporter.crl")

RECHECK_SECONDS = 15.0

MAX_CACHED_CRLS = 64
# cached_good_until's remembered verdicts: two or three per target's chain.
MAX_GOOD_UNTIL_KEPT = 8192


@dataclass(frozen=True)
class CRLDocument:
    """A parsed CRL as cached (the DER itself is not kept)."""

    url: str
    crl: x509.CertificateRevocationList
    size: int
    issuer: str
    this_update: float
    next_update: float | None
    validators: Validators  # to ask for it again, conditionally
    digest: bytes = b""  # SHA-256 of the CRL: identifies this body for the signature cache


@dataclass(frozen=True)
class CRLCheck:
    """One check of one distribution point on one route."""

    url: str
    route: str
    reachable: bool
    duration: float
    checked_at: float
    http_status: int = 0
    error: str = ""  # why unreachable, or why the document is invalid
    too_large: bool = False
    not_modified: bool = False
    document: CRLDocument | None = None
    # Set when the body arrived but is no CRL; the document then stays the last good one.
    invalid_body: bool = False
    reason: Reason | None = None  # the fetch's failure reason, when unreachable because of one


class Status(StrEnum):
    """What one revocation source says of one certificate."""

    GOOD = "good"
    REVOKED = "revoked"
    UNREACHABLE = "unreachable"
    INVALID = "invalid"  # an answer that cannot be used (garbage, wrong issuer, bad signature)
    STALE = "stale"  # past its nextUpdate
    UNKNOWN = "unknown"  # the source does not know the certificate (OCSP)
    NO_INFO = "no_info"  # the certificate names no revocation source at all

    @property
    def decides(self) -> bool:
        """Whether Windows stops here: a time-valid answer, good or revoked."""
        return self in (Status.GOOD, Status.REVOKED)


class Source(StrEnum):
    """Which kind of revocation source an answer came from."""

    STAPLE = "staple"  # the OCSP response the server stapled to its handshake
    OCSP = "ocsp"
    CRL = "crl"
    NONE = "none"  # no source at all (Status.NO_INFO)


@dataclass(frozen=True)
class RevocationStatus:
    """Verdict for one certificate by one revocation source (a stapled or fetched OCSP response, a CRL)."""

    status: Status
    url: str = ""
    detail: str = ""
    http_status: int = 0  # for unreachable: the status that made it so (e.g. 407 from the proxy), else 0
    reason: Reason | None = None  # for unreachable: the fetch's reason (timeout, connect_refused, ...)
    source: Source = Source.CRL
    # good (or revoked): until when this answer may be used (nextUpdate; inf for a final CRL)
    valid_until: float | None = None

    def __post_init__(self) -> None:
        # Given as their values ("good", "ocsp"): the enums, so `is` comparisons hold; an unknown
        # value fails here, where it is made.
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "source", Source(self.source))


class CRLCache:
    def __init__(self, limits: Limits, connect_to: tuple[ConnectTo, ...]):
        self.limits = limits
        self.connect_to = connect_to
        self.documents: OrderedDict[str, CRLDocument] = OrderedDict()
        self.checks: dict[tuple[str, str], CRLCheck] = {}
        self.signature_ok: dict[tuple[bytes, bytes], bool] = {}
        # cached_good_until's verdicts: (url, id(cert)) -> (cert, issuer, CRL digest, until). The same
        # parsed certificates come back on every probe (Assessor._certificate), and a verdict on one
        # CRL body changes only when its nextUpdate passes; holding cert and issuer keeps their ids.
        self._good_until: OrderedDict[tuple[str, int], tuple[x509.Certificate, x509.Certificate | None,
                                                            bytes, float | None]] = OrderedDict()
        self._in_flight: dict[tuple[str, str], asyncio.Task] = {}
        self.errors = UnexpectedErrors()  # the fetches' unexpected errors, logged once

    def reconfigure(self, limits: Limits, connect_to: tuple[ConnectTo, ...]) -> None:
        self.limits, self.connect_to = limits, connect_to

    # ------------------------------------------------------------------ fetching

    async def check(self, url: str, route: Route, timeout: float) -> CRLCheck:
        key = (url, route.name)
        recent = self.checks.get(key)
        if recent is not None and time.time() - recent.checked_at < RECHECK_SECONDS:
            return recent
        task = self._in_flight.get(key)
        if task is None:
            # The fetch is a task of its own: a caller that is cancelled (its job
            # overran) does not cancel the fetch the other callers are waiting on.
            task = asyncio.get_running_loop().create_task(self._fetch_and_store(key, url, route, timeout))
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(task)

    def forget(self, url: str, route: str) -> None:
        """Drop the last check of (url, route) so the next one fetches again (e.g. over the next
        entry of a PAC answer after its first proxy could not be reached)."""
        self.checks.pop((url, route), None)

    def _forget(self, key: tuple[str, str], task: asyncio.Task) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure reaches the waiters, not the loop's log

    async def _fetch_and_store(self, key: tuple[str, str], url: str, route: Route, timeout: float) -> CRLCheck:
        result = await self._fetch(url, route, timeout)
        self.checks[key] = result
        return result

    async def _fetch(self, url: str, route: Route, timeout: float) -> CRLCheck:
        started = time.time()
        cached = self.documents.get(url)
        conditional = cached.validators.conditional() if cached is not None else []
        fetched = await fetch(url, route, self.connect_to, self.limits, timeout=timeout, headers=conditional,
                              body_cap=self.limits.crl_bytes, redirects=CRYPTNET_REDIRECTS, errors=self.errors)
        duration = time.time() - started
        failure, answer = fetched.failure, fetched.answer
        if failure is not None:
            return CRLCheck(url, route.name, False, duration, started, failure.http_status,
                            f"{failure.reason}: {failure.detail}", reason=failure.reason)
        assert answer is not None
        if answer.status == 304 and cached is not None:
            self.documents.move_to_end(url)
            return CRLCheck(url, route.name, True, duration, started, 304, not_modified=True, document=cached)
        if answer.status != 200:
            return CRLCheck(url, route.name, False, duration, started, answer.status,
                            f"HTTP {answer.status} {answer.reason_phrase}")
        if answer.truncated:
            return CRLCheck(url, route.name, True, duration, started, 200, too_large=True, invalid_body=True,
                            error=f"CRL larger than the cap of {self.limits.crl_bytes} bytes (limits.crl_bytes)")
        document, error = _parse(url, answer.body, answer.validators)
        if document is None:
            return CRLCheck(url, route.name, True, duration, started, 200, error=f"{error} ({answer.describe()})",
                            invalid_body=True)
        self.documents[url] = document
        self.documents.move_to_end(url)
        while len(self.documents) > MAX_CACHED_CRLS:
            self.documents.popitem(last=False)
        return CRLCheck(url, route.name, True, duration, started, 200, document=document)

    # ------------------------------------------------------------------ judging

    def judge(self, cert: x509.Certificate, issuer: x509.Certificate | None, check: CRLCheck,
              *, now: float | None = None) -> RevocationStatus:
        """The status of `cert` according to one check of one of its distribution points."""
        now = time.time() if now is None else now
        if not check.reachable:
            return RevocationStatus(Status.UNREACHABLE, check.url, check.error, check.http_status, check.reason)
        if check.invalid_body or check.document is None:
            return RevocationStatus(Status.INVALID, check.url, check.error or "no CRL in the answer")
        doc = check.document
        if doc.crl.issuer != cert.issuer:
            return RevocationStatus(Status.INVALID, check.url,
                                    f"CRL issuer {doc.issuer} is not the certificate's issuer {cert.issuer.rfc4514_string()}")
        if issuer is None:
            return RevocationStatus(Status.INVALID, check.url, "the issuing CA certificate is unknown; signature not checked")
        if not self._signature_ok(doc, issuer):
            return RevocationStatus(Status.INVALID, check.url, "CRL signature does not verify against the issuer's key")
        if doc.next_update is not None and doc.next_update < now:
            return RevocationStatus(Status.STALE, check.url, f"nextUpdate {iso(doc.next_update)} has passed")
        until = doc.next_update if doc.next_update is not None else math.inf  # no nextUpdate: the last CRL
        if doc.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return RevocationStatus(Status.REVOKED, check.url, f"serial {cert.serial_number:X} is on the CRL",
                                    valid_until=until)
        return RevocationStatus(Status.GOOD, check.url, valid_until=until)

    def cached_good_until(self, cert: x509.Certificate, issuer: x509.Certificate | None, url: str,
                          now: float) -> float | None:
        """Until when the last good CRL from `url` (the endpoint's cached copy) says `cert` is good,
        whether or not the URL answers now; None if there is no such copy."""
        doc = self.documents.get(url)
        if doc is None:
            return None
        key = (url, id(cert))
        known = self._good_until.get(key)
        if known is not None and known[0] is cert and known[1] is issuer and known[2] == doc.digest:
            until = known[3]
        else:
            status = self.judge(cert, issuer, CRLCheck(url, "", True, 0.0, now, 200, document=doc), now=now)
            until = status.valid_until if status.status is Status.GOOD else None
            self._good_until[key] = (cert, issuer, doc.digest, until)
            if len(self._good_until) > MAX_GOOD_UNTIL_KEPT:
                self._good_until.popitem(last=False)
        # A good verdict lasts until the CRL's nextUpdate (until), after which it is stale.
        return until if until is not None and now <= until else None

    def _signature_ok(self, doc: CRLDocument, issuer: x509.Certificate) -> bool:
        # Keyed by the CRL's digest, so a signature is checked once per CRL body and issuer.
        key = (doc.digest, issuer.fingerprint(hashes.SHA256()))
        known = self.signature_ok.get(key)
        if known is None:
            try:
                known = doc.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - unsupported key type and the like
                known = False
            if len(self.signature_ok) > 4 * MAX_CACHED_CRLS:
                self.signature_ok.clear()
            self.signature_ok[key] = known
        return known

    def document_valid(self, url: str, now: float) -> bool:
        """For CRL_VALID (metrics.py): the last answer was a CRL, within the cap, signed
        by its issuer (as far as a chain has shown us the issuer) and not stale."""
        latest = [c for (u, _), c in self.checks.items() if u == url and c.reachable]
        if any(c.invalid_body for c in latest):
            return False
        doc = self.documents.get(url)
        if doc is None:
            return False
        if doc.next_update is not None and doc.next_update < now:
            return False
        signatures = [ok for (digest, _), ok in self.signature_ok.items() if digest == doc.digest]
        return all(signatures)


def _parse(url: str, body: bytes, validators: Validators) -> tuple[CRLDocument | None, str]:
    try:
        crl = load_crl(body)
        this_update = crl.last_update_utc.timestamp()
        next_update = crl.next_update_utc.timestamp() if crl.next_update_utc else None
        issuer = crl.issuer.rfc4514_string()
    except Exception as exc:  # noqa: BLE001 - garbage in, crl_invalid out
        return None, str(exc) if isinstance(exc, ValueError) else f"not a CRL (DER or PEM): {str(exc)[:120]}"
    return CRLDocument(url, crl, len(body), issuer, this_update, next_update, validators,
                       crl.fingerprint(hashes.SHA256())), ""
