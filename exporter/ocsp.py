"""OCSP the way Windows' CryptoAPI client does it, on the system route.

Windows' OCSP client is "based on RFC 5019, The Lightweight OCSP Profile"
(Microsoft, "What's New in Certificate Revocation in Windows Vista and Windows
Server 2008"). So, as that profile says:

- one certificate per request, its CertID hashed with SHA-1;
- no nonce and no other request extension (RFC 5019 2.1: clients SHOULD NOT
  send requestExtensions), so freshness is judged by time alone: a response is
  usable from thisUpdate until nextUpdate (a response without nextUpdate is
  treated as valid for FALLBACK_VALIDITY after thisUpdate; RFC 5019 requires
  nextUpdate, Microsoft does not say what it does without one); a nonce the
  responder adds anyway is ignored;
- HTTP GET when the whole URL (base URL, "/", URL-encoded base64 of the DER
  request) is at most 255 bytes, POST with `application/ocsp-request`
  otherwise (RFC 5019 5);
- the response must be "successful", of the basic type, for this CertID, and
  signed either by the issuer itself or by a delegated responder: a
  certificate carried in the response, issued by the same issuer, with the
  id-kp-OCSPSigning extended key usage (RFC 6960 4.2.2.2; Microsoft,
  CertGetCertificateChain: an independent OCSP signer gets a chain of its own,
  not revocation-checked when it has id-pkix-ocsp-nocheck, which we do not
  check further).

Checks of the same (URL, route, certificate) within RECHECK_SECONDS share one
request, and the last good response per (URL, certificate) is kept: that is the
endpoint's CryptNet URL cache in the model (see assess.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from .config import ConnectTo, Limits, Route
from .crl import RevocationStatus, Source, Status
from .probes.fetch import CRYPTNET_REDIRECTS, UnexpectedErrors, fetch
from .reasons import Reason
from .utc import iso

RECHECK_SECONDS = 15.0
MAX_RESPONSE_BYTES = 64 * 1024  # real responses are 1-4 KB; a delegated signer's certificate adds ~2 KB
MAX_GET_URL = 255  # RFC 5019 5: GET for requests of at most 255 bytes, URL included
FALLBACK_VALIDITY = 3600.0  # a response without nextUpdate
CLOCK_SKEW = 300.0  # thisUpdate may be this far in the future (clocks differ)
MAX_KEPT = 1024


@dataclass(frozen=True)
class OCSPAnswer:
    """A parsed, verified response for one certificate."""

    status: Status  # GOOD | REVOKED | UNKNOWN (the responder does not know the certificate)
    this_update: float
    next_update: float  # FALLBACK_VALIDITY after thisUpdate when the response has none
    produced_at: float
    signer: str  # "issuer" or "delegated responder <subject>"
    revoked_at: float | None = None


@dataclass(frozen=True)
class OCSPCheck:
    """One request to one responder for one certificate, on one route."""

    url: str
    route: str
    method: str  # GET | POST
    reachable: bool
    duration: float
    checked_at: float
    http_status: int = 0
    error: str = ""  # why unreachable, or why the response is unusable
    answer: OCSPAnswer | None = None  # None: unreachable or unusable (see error)
    reason: Reason | None = None  # the fetch's failure reason, when unreachable because of one


class OCSPCache:
    def __init__(self, limits: Limits, connect_to: tuple[ConnectTo, ...]):
        self.limits = limits
        self.connect_to = connect_to
        self.checks: OrderedDict[tuple[str, str, bytes], OCSPCheck] = OrderedDict()
        # The last usable answer per (url, certificate): what an endpoint's cache holds.
        self.last_good: OrderedDict[tuple[str, bytes], OCSPAnswer] = OrderedDict()
        self._in_flight: dict[tuple[str, str, bytes], asyncio.Task] = {}
        self.errors = UnexpectedErrors()  # the fetches' unexpected errors, logged once

    def reconfigure(self, limits: Limits, connect_to: tuple[ConnectTo, ...]) -> None:
        self.limits, self.connect_to = limits, connect_to

    async def check(self, url: str, cert: x509.Certificate, issuer: x509.Certificate, route: Route,
                    timeout: float) -> OCSPCheck:
        key = (url, route.name, cert.fingerprint(hashes.SHA256()))
        recent = self.checks.get(key)
        if recent is not None and time.time() - recent.checked_at < RECHECK_SECONDS:
            return recent
        task = self._in_flight.get(key)
        if task is None:
            # Its own task: a caller that is cancelled does not cancel the others' fetch.
            task = asyncio.get_running_loop().create_task(self._fetch_and_store(key, url, cert, issuer, route, timeout))
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(task)

    def forget(self, url: str, route: str, cert: x509.Certificate) -> None:
        """Drop the last check of (url, route, cert) so the next one asks again (over the next entry
        of a PAC answer after its first proxy could not be reached)."""
        self.checks.pop((url, route, cert.fingerprint(hashes.SHA256())), None)

    def _forget(self, key, task: asyncio.Task) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()

    async def _fetch_and_store(self, key, url, cert, issuer, route, timeout) -> OCSPCheck:
        result = await self._fetch(url, cert, issuer, route, timeout)
        self.checks[key] = result
        self.checks.move_to_end(key)
        while len(self.checks) > MAX_KEPT:
            self.checks.popitem(last=False)
        if result.answer is not None and result.answer.status is not Status.UNKNOWN:
            good_key = (url, key[2])
            self.last_good[good_key] = result.answer
            self.last_good.move_to_end(good_key)
            while len(self.last_good) > MAX_KEPT:
                self.last_good.popitem(last=False)
        return result

    async def _fetch(self, url: str, cert: x509.Certificate, issuer: x509.Certificate, route: Route,
                     timeout: float) -> OCSPCheck:
        try:
            request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()  # noqa: S303 - RFC 5019 mandates SHA-1 CertIDs
            der = request.public_bytes(serialization.Encoding.DER)
        except Exception as exc:  # noqa: BLE001 - an unusable certificate pair
            return OCSPCheck(url, route.name, "GET", False, 0.0, time.time(), error=f"no OCSP request: {exc}")
        method, target, body, headers = request_for(url, der)
        started = time.time()
        got = await fetch(target, route, self.connect_to, self.limits, timeout=timeout, method=method, body=body,
                          headers=headers, body_cap=MAX_RESPONSE_BYTES, redirects=CRYPTNET_REDIRECTS,
                          errors=self.errors)
        duration = time.time() - started
        if got.failure is not None:
            return OCSPCheck(url, route.name, method, False, duration, started, got.failure.http_status,
                             f"{got.failure.reason}: {got.failure.detail}", reason=got.failure.reason)
        answer = got.answer
        assert answer is not None
        if answer.status != 200:
            return OCSPCheck(url, route.name, method, False, duration, started, answer.status,
                             f"HTTP {answer.status} {answer.reason_phrase}")
        if answer.truncated:
            return OCSPCheck(url, route.name, method, True, duration, started, 200,
                             f"response larger than {MAX_RESPONSE_BYTES} bytes")
        parsed, error = parse_response(answer.body, cert, issuer, now=time.time())
        return OCSPCheck(url, route.name, method, True, duration, started, 200, error, parsed)

    def judge(self, check: OCSPCheck, *, now: float | None = None) -> RevocationStatus:
        """The status of the certificate by one check (unknown: the responder does not know it)."""
        now = time.time() if now is None else now
        if not check.reachable:
            return RevocationStatus(Status.UNREACHABLE, check.url, check.error, check.http_status, check.reason,
                                    source=Source.OCSP)
        if check.answer is None:
            return RevocationStatus(Status.INVALID, check.url, check.error, source=Source.OCSP)
        return status_of(check.answer, check.url, now)

    def cached_good_until(self, url: str, cert: x509.Certificate, now: float) -> float | None:
        """nextUpdate of the last good answer for `cert` from `url`, if it is still time valid."""
        answer = self.last_good.get((url, cert.fingerprint(hashes.SHA256())))
        if answer is None or answer.status is not Status.GOOD or answer.next_update < now:
            return None
        return answer.next_update


def status_of(answer: OCSPAnswer, url: str, now: float, *, source: Source = Source.OCSP) -> RevocationStatus:
    """What one verified answer (fetched from `url`, or stapled) says at `now`."""
    if answer.next_update < now:
        return RevocationStatus(Status.STALE, url, f"nextUpdate {iso(answer.next_update)} has passed", source=source)
    if answer.status is Status.REVOKED:
        when = f" since {iso(answer.revoked_at)}" if answer.revoked_at else ""
        return RevocationStatus(Status.REVOKED, url, f"the responder says revoked{when}", source=source,
                                valid_until=answer.next_update)
    if answer.status is Status.UNKNOWN:
        return RevocationStatus(Status.UNKNOWN, url, "the responder does not know the certificate", source=source)
    return RevocationStatus(Status.GOOD, url, source=source, valid_until=answer.next_update)


def staple_status(staple: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: float) -> RevocationStatus:
    """What the OCSP response a server stapled to its handshake says of its leaf `cert`: the same
    checks as for a fetched response (CertID, signer, signature, times, size)."""
    if len(staple) > MAX_RESPONSE_BYTES:
        return RevocationStatus(Status.INVALID, "", f"the stapled response is larger than {MAX_RESPONSE_BYTES} bytes",
                                source=Source.STAPLE)
    answer, error = parse_response(staple, cert, issuer, now=now)
    if answer is None:
        return RevocationStatus(Status.INVALID, "", f"the stapled response: {error}", source=Source.STAPLE)
    return status_of(answer, "", now, source=Source.STAPLE)


def request_for(url: str, der: bytes) -> tuple[str, str, bytes, tuple[tuple[str, str], ...]]:
    """(method, URL, body, headers) for an OCSP request to `url`, as RFC 5019 5 says."""
    encoded = quote(base64.b64encode(der).decode("ascii"), safe="")
    get_url = url.rstrip("/") + "/" + encoded
    if len(get_url) <= MAX_GET_URL:
        return "GET", get_url, b"", ()
    return "POST", url, der, (("Content-Type", "application/ocsp-request"),)


def parse_response(body: bytes, cert: x509.Certificate, issuer: x509.Certificate, *,
                   now: float) -> tuple[OCSPAnswer | None, str]:
    """A verified answer for `cert`, or None and why the response cannot be used."""
    try:
        response = ocsp.load_der_ocsp_response(body)
    except Exception as exc:  # noqa: BLE001 - garbage in, "invalid" out
        return None, f"not an OCSP response: {str(exc)[:120]}"
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None, f"the responder answered {response.response_status.name.lower()}"
    try:
        single = _single_for(response, cert, issuer)
        if single is None:
            return None, f"the response is not for serial {cert.serial_number:X} of this issuer"
        signer, error = _signer(response, issuer, now)
        if signer is None:
            return None, error
        if not _signature_ok(signer.public_key(), response):
            return None, "the response's signature does not verify"
        this_update = single.this_update_utc.timestamp()
        if this_update > now + CLOCK_SKEW:
            return None, f"thisUpdate {iso(this_update)} is in the future"
        next_update = (single.next_update_utc.timestamp() if single.next_update_utc is not None
                       else this_update + FALLBACK_VALIDITY)
        status = {ocsp.OCSPCertStatus.GOOD: Status.GOOD, ocsp.OCSPCertStatus.REVOKED: Status.REVOKED}.get(
            single.certificate_status, Status.UNKNOWN)
        revoked_at = single.revocation_time_utc.timestamp() if status is Status.REVOKED and single.revocation_time_utc else None
        who = "issuer" if signer is issuer else f"delegated responder {signer.subject.rfc4514_string()}"
        return OCSPAnswer(status, this_update, next_update, response.produced_at_utc.timestamp(), who,
                          revoked_at), ""
    except Exception as exc:  # noqa: BLE001 - a malformed field anywhere: unusable, not a crash
        return None, f"malformed OCSP response: {str(exc)[:120]}"


def _single_for(response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate):
    """The SingleResponse whose CertID names `cert` of `issuer` (by the hash algorithm it uses)."""
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        # Our own CertID with the responder's hash algorithm: cryptography hashes the name and key.
        mine = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, single.hash_algorithm).build()
        if (single.issuer_key_hash, single.issuer_name_hash) == (mine.issuer_key_hash, mine.issuer_name_hash):
            return single
    return None


def _key_hash(cert: x509.Certificate) -> bytes:
    """SHA-1 of the subjectPublicKey bits, as a ResponderID byKey holds it (RFC 6960 4.2.1)."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: float) -> tuple[x509.Certificate | None, str]:
    """The certificate that signed the response: the issuer, or a delegated responder it issued."""
    if _names_responder(response, issuer):
        return issuer, ""
    for candidate in response.certificates:
        if not _names_responder(response, candidate):
            continue
        if candidate.issuer != issuer.subject:
            return None, "the response's signer was not issued by the certificate's issuer"
        try:
            candidate.verify_directly_issued_by(issuer)
        except Exception:  # noqa: BLE001 - wrong signature or unsupported key
            return None, "the delegated responder's certificate is not signed by the issuer"
        try:
            usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
            return None, "the delegated responder's certificate lacks id-kp-OCSPSigning"
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        if not candidate.not_valid_before_utc <= when <= candidate.not_valid_after_utc:
            return None, "the delegated responder's certificate is not valid now"
        return candidate, ""
    return None, "the response is signed by neither the issuer nor a delegated responder it carries"


def _names_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        return response.responder_key_hash == _key_hash(cert)
    return response.responder_name == cert.subject


def _signature_ok(key, response: ocsp.OCSPResponse) -> bool:
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        else:
            key.verify(response.signature, response.tbs_response_bytes)  # Ed25519 / Ed448
    except Exception:  # noqa: BLE001 - InvalidSignature and unsupported keys alike
        return False
    return True

