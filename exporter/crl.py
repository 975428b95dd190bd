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
import email.utils
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .config import ConnectTo, Limits, Route
from .probes._net import ProbeFailure, ProbeState, exchange, open_stream, proxy_generated, translate

log = logging.getLogger("exporter.crl")

RECHECK_SECONDS = 15.0
MAX_CACHED_CRLS = 64
MAX_CACHED_ISSUERS = 256


@dataclass(frozen=True)
class CRLDocument:
    """A parsed CRL as cached (the DER itself is not kept)."""

    url: str
    crl: x509.CertificateRevocationList
    size: int
    issuer: str
    this_update: float
    next_update: float | None
    etag: str | None
    last_modified: str | None


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


@dataclass(frozen=True)
class RevocationStatus:
    """Verdict for one certificate against its CRL distribution points."""

    status: str  # good | revoked | unreachable | invalid | stale | unknown (no distribution point)
    url: str = ""
    detail: str = ""


class CRLCache:
    def __init__(self, limits: Limits, connect_to: tuple[ConnectTo, ...]):
        self.limits = limits
        self.connect_to = connect_to
        self.documents: OrderedDict[str, CRLDocument] = OrderedDict()
        self.checks: dict[tuple[str, str], CRLCheck] = {}
        self.signature_ok: dict[tuple[int, bytes], bool] = {}
        self.issuers: OrderedDict[str, x509.Certificate | None] = OrderedDict()
        self._in_flight: dict[tuple[str, str], asyncio.Future] = {}

    def reconfigure(self, limits: Limits, connect_to: tuple[ConnectTo, ...]) -> None:
        self.limits, self.connect_to = limits, connect_to

    # ------------------------------------------------------------------ fetching

    async def check(self, url: str, route: Route, timeout: float) -> CRLCheck:
        key = (url, route.name)
        recent = self.checks.get(key)
        if recent is not None and time.time() - recent.checked_at < RECHECK_SECONDS:
            return recent
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await self._fetch(url, route, timeout)
            self.checks[key] = result
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._in_flight[key]

    async def _fetch(self, url: str, route: Route, timeout: float) -> CRLCheck:
        parts = urlsplit(url)
        started = time.time()
        state = ProbeState()
        if parts.scheme != "http" or not parts.hostname:
            return CRLCheck(url, route.name, False, 0.0, started, error="only http:// distribution points are fetched")
        port = parts.port or 80
        cached = self.documents.get(url)
        conditional = ""
        if cached is not None:
            if cached.etag:
                conditional += f"If-None-Match: {cached.etag}\r\n"
            if cached.last_modified:
                conditional += f"If-Modified-Since: {cached.last_modified}\r\n"
        stream = answer = None
        failure: ProbeFailure | None = None
        try:
            async with asyncio.timeout(timeout):
                stream = await open_stream(parts.hostname, port, route, self.connect_to, self.limits, state, tunnel=False)
                target = url if stream.proxy else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                authority = parts.netloc.rpartition("@")[2]
                answer = await exchange(stream, target, authority, self.limits, state, extra_headers=conditional,
                                        keep_body=True, body_cap=self.limits.crl_bytes)
        except Exception as exc:  # noqa: BLE001 - becomes "unreachable" with the reason's words
            failure = translate(exc, state)
        finally:
            if stream is not None:
                stream.abort()
        duration = time.time() - started
        if failure is not None:
            return CRLCheck(url, route.name, False, duration, started, failure.http_status,
                            f"{failure.reason}: {failure.detail}")
        assert answer is not None
        if stream is not None and stream.proxy is not None and proxy_generated(answer) is not None:
            return CRLCheck(url, route.name, False, duration, started, answer.status,
                            f"the proxy answered {answer.status} itself ({answer.header('X-Squid-Error') or ''})")
        if answer.status == 304 and cached is not None:
            self.documents.move_to_end(url)
            return CRLCheck(url, route.name, True, duration, started, 304, not_modified=True, document=cached)
        if answer.status != 200:
            return CRLCheck(url, route.name, False, duration, started, answer.status,
                            f"HTTP {answer.status} {answer.reason_phrase}")
        if answer.truncated:
            return CRLCheck(url, route.name, True, duration, started, 200, too_large=True, invalid_body=True,
                            error=f"CRL larger than the cap of {self.limits.crl_bytes} bytes (limits.crl_bytes)")
        document, error = _parse(url, answer.body, answer.header("ETag"), answer.header("Last-Modified"))
        if document is None:
            return CRLCheck(url, route.name, True, duration, started, 200, error=error, invalid_body=True)
        self.documents[url] = document
        self.documents.move_to_end(url)
        while len(self.documents) > MAX_CACHED_CRLS:
            self.documents.popitem(last=False)
        return CRLCheck(url, route.name, True, duration, started, 200, document=document)

    async def fetch_issuer(self, url: str, route: Route, timeout: float) -> x509.Certificate | None:
        """The issuing CA certificate from an AIA caIssuers URL (DER or PEM), cached."""
        if url in self.issuers:
            return self.issuers[url]
        parts = urlsplit(url)
        cert = None
        if parts.scheme == "http" and parts.hostname:
            state = ProbeState()
            stream = None
            try:
                async with asyncio.timeout(timeout):
                    stream = await open_stream(parts.hostname, parts.port or 80, route, self.connect_to,
                                               self.limits, state, tunnel=False)
                    target = url if stream.proxy else (parts.path or "/")
                    answer = await exchange(stream, target, parts.netloc, self.limits, state,
                                            keep_body=True, body_cap=64 * 1024)
                if answer.status == 200 and not answer.truncated:
                    cert = _load_cert(answer.body)
            except Exception as exc:  # noqa: BLE001 - an unreachable AIA URL just means "unknown issuer"
                log.debug("AIA fetch of %s failed: %s", url, exc)
            finally:
                if stream is not None:
                    stream.abort()
        self.issuers[url] = cert
        while len(self.issuers) > MAX_CACHED_ISSUERS:
            self.issuers.popitem(last=False)
        return cert

    # ------------------------------------------------------------------ judging

    def judge(self, cert: x509.Certificate, issuer: x509.Certificate | None, check: CRLCheck,
              *, now: float | None = None) -> RevocationStatus:
        """The status of `cert` according to one check of one of its distribution points."""
        now = time.time() if now is None else now
        if not check.reachable:
            return RevocationStatus("unreachable", check.url, check.error)
        if check.invalid_body or check.document is None:
            return RevocationStatus("invalid", check.url, check.error or "no CRL in the answer")
        doc = check.document
        if doc.crl.issuer != cert.issuer:
            return RevocationStatus("invalid", check.url,
                                    f"CRL issuer {doc.issuer} is not the certificate's issuer {cert.issuer.rfc4514_string()}")
        if issuer is None:
            return RevocationStatus("invalid", check.url, "the issuing CA certificate is unknown; signature not checked")
        if not self._signature_ok(doc, issuer):
            return RevocationStatus("invalid", check.url, "CRL signature does not verify against the issuer's key")
        if doc.next_update is not None and doc.next_update < now:
            return RevocationStatus("stale", check.url, f"nextUpdate {_iso(doc.next_update)} has passed")
        if doc.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return RevocationStatus("revoked", check.url, f"serial {cert.serial_number:X} is on the CRL")
        return RevocationStatus("good", check.url)

    def _signature_ok(self, doc: CRLDocument, issuer: x509.Certificate) -> bool:
        # Keyed by the document object itself (a new download is a new object),
        # so a signature is checked once per CRL body and issuer.
        key = (id(doc), issuer.fingerprint(hashes.SHA256()))
        known = self.signature_ok.get(key)
        if known is None:
            try:
                known = doc.crl.is_signature_valid(issuer.public_key())
            except Exception:  # noqa: BLE001 - unsupported key type and the like
                known = False
            if len(self.signature_ok) > 4 * MAX_CACHED_CRLS:
                self.signature_ok.clear()
            self.signature_ok[key] = known
        return known

    def document_valid(self, url: str, now: float) -> bool:
        """For defender_crl_valid: the last answer was a CRL, within the cap, signed
        by its issuer (as far as a chain has shown us the issuer) and not stale."""
        latest = [c for (u, _), c in self.checks.items() if u == url and c.reachable]
        if any(c.invalid_body for c in latest):
            return False
        doc = self.documents.get(url)
        if doc is None:
            return False
        if doc.next_update is not None and doc.next_update < now:
            return False
        signatures = [ok for (doc_id, _), ok in self.signature_ok.items() if doc_id == id(doc)]
        return all(signatures)


def _parse(url: str, body: bytes, etag: str | None, last_modified: str | None) -> tuple[CRLDocument | None, str]:
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(body)
        else:
            crl = x509.load_der_x509_crl(body)
        this_update = crl.last_update_utc.timestamp()
        next_update = crl.next_update_utc.timestamp() if crl.next_update_utc else None
        issuer = crl.issuer.rfc4514_string()
    except Exception as exc:  # noqa: BLE001 - garbage in, crl_invalid out
        return None, f"not a CRL (DER or PEM): {str(exc)[:120]}"
    return CRLDocument(url, crl, len(body), issuer, this_update, next_update, etag, _http_date(last_modified)), ""


def _http_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return value


def _load_cert(body: bytes) -> x509.Certificate | None:
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(body)
        return x509.load_der_x509_certificate(body)
    except Exception:  # noqa: BLE001
        return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

