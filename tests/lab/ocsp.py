"""A lab OCSP responder: real responses built with cryptography.x509.ocsp, served over GET and POST.

    responder = OCSPResponder(pki)                  # knows the PKI's root and issuing CA
    responder.revoke(leaf.serial)                   # "revoked" from now on
    server = lab_servers.serve(Handler(responder), port=80)
    ... aim oneocsp.microsoft.com at it with connect_to

GET requests carry the base64 request after the last "/" of the path (RFC 5019 5 / RFC 6960
A.1), POST requests carry it as the body. The responder finds the issuer by the CertID's issuer
key hash and signs with the issuer's key, or with a delegated responder certificate (id-kp-
OCSPSigning, issued by that CA) when `delegated=True`. `methods` counts GET and POST requests.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections import Counter
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .pki import CA, LabPKI, _new_key, utcnow


class OCSPResponder:
    """Answers for every certificate issued by the given CAs: good unless revoked."""

    def __init__(self, pki: LabPKI, *, delegated: bool = False, next_update: dt.timedelta | None = dt.timedelta(days=4),
                 this_update: dt.datetime | None = None):
        self.cas: list[CA] = [pki.root, pki.issuing]
        self.pki = pki
        self.delegated = delegated
        self.next_update = next_update
        self.this_update = this_update
        self.revoked: set[int] = set()
        self.garbage = False
        self.methods: Counter[str] = Counter()
        self.requests: list[ocsp.OCSPRequest] = []
        self._lock = threading.Lock()
        self._signers: dict[str, tuple[x509.Certificate, object]] = {}

    def revoke(self, serial: int) -> None:
        with self._lock:
            self.revoked.add(serial)

    # called by the lab server (its own thread): (status, body, content type)
    def __call__(self, method: str, target: str, body: bytes) -> tuple[int, bytes, str]:
        with self._lock:
            self.methods[method] += 1
            if self.garbage:
                return 200, b"<html>not OCSP</html>", "text/html"
        try:
            der = body if method == "POST" else base64.b64decode(unquote(target.rsplit("/", 1)[-1]))
            request = ocsp.load_der_ocsp_request(der)
        except Exception:  # noqa: BLE001 - a malformed request gets the protocol's own answer
            return 200, ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.MALFORMED_REQUEST).public_bytes(serialization.Encoding.DER), _TYPE
        with self._lock:
            self.requests.append(request)
        ca = next((c for c in self.cas if request.issuer_key_hash == _key_hash(c.cert, request.hash_algorithm)), None)
        if ca is None:
            return 200, ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(serialization.Encoding.DER), _TYPE
        return 200, self._response(ca, request).public_bytes(serialization.Encoding.DER), _TYPE

    def _response(self, ca: CA, request: ocsp.OCSPRequest) -> ocsp.OCSPResponse:
        now = utcnow()
        this_update = self.this_update or now - dt.timedelta(minutes=5)
        next_update = this_update + self.next_update if self.next_update is not None else None
        with self._lock:
            revoked = request.serial_number in self.revoked
        subject = _stub(request.serial_number, ca)
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=subject, issuer=ca.cert, algorithm=request.hash_algorithm,
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=this_update, next_update=next_update,
            revocation_time=this_update if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        if self.delegated:
            cert, key = self._delegated_signer(ca)
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, cert).certificates([cert])
        else:
            key = ca.key
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, ca.cert)
        return builder.sign(key, hashes.SHA256())

    def _delegated_signer(self, ca: CA):
        with self._lock:
            known = self._signers.get(ca.label)
            if known is None:
                key = _new_key("ec", self.pki.name, "ocsp-signer")
                now = utcnow()
                cert = (
                    x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{ca.label} OCSP Responder")]))
                    .issuer_name(ca.cert.subject)
                    .public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(days=1))
                    .not_valid_after(now + dt.timedelta(days=30))
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
                    .add_extension(x509.OCSPNoCheck(), critical=False)
                    .sign(ca.key, hashes.SHA256())
                )
                known = self._signers[ca.label] = (cert, key)
            return known


_TYPE = "application/ocsp-response"


def _stub(serial: int, ca: CA) -> x509.Certificate:
    """A certificate with `serial` issued by `ca`: OCSPResponseBuilder needs one to compute the CertID."""
    now = utcnow()
    key = _new_key("ec", "stub", "stub")
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """The CA's issuer key hash as cryptography computes it for a CertID (RFC 6960 4.1.1)."""
    stub = _stub(1, _CAView(cert))
    return ocsp.OCSPRequestBuilder().add_certificate(stub, cert, algorithm).build().issuer_key_hash


class _CAView:
    """Just enough of a CA for _stub: its certificate."""

    def __init__(self, cert: x509.Certificate):
        self.cert = cert


def staple_for(responder: OCSPResponder, cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER response `responder` gives for `cert`: what a server that staples sends in its handshake."""
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()  # noqa: S303 - as RFC 5019 clients ask
    status, body, _ = responder("POST", "/", request.public_bytes(serialization.Encoding.DER))
    assert status == 200
    return body
