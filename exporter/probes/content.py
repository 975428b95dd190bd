"""Is the answer what the endpoint serves? A target's `expect:` checked against it.

Where the catalogue (or the user) knows what a URL serves, the content is
verified instead of guessed at: an HTML page from a proxy, a captive portal or
a truncated transfer is not a CRL, whatever its status.

- `crl`: a CRL (DER or PEM) whose issuer is a certificate we know (a trust
  anchor, or a CA of a chain that verified) and whose signature verifies
  against that issuer's key; its nextUpdate must not have passed;
- `ctl`: a certificate trust list cabinet whose signer chains to an expected
  root (exporter/cab.py);
- `cert`: an X.509 certificate (DER or PEM), as AIA caIssuers URLs serve;
- `status`: the status must be one of these codes or classes;
- `body`: the regular expression must match the body (as far as it was kept).

A mismatch is the reason `unexpected_content`, whose detail says what arrived
(status, content type, size).
"""

from __future__ import annotations

import time

from cryptography import x509

from ..cab import check_ctl_cabinet
from ..config import Expect, bundled_root_fingerprints
from ._http import HTTPAnswer
from ._tls import TrustStore


def problem(answer: HTTPAnswer, expect: Expect, trust: TrustStore, *, roots: frozenset[bytes] = frozenset(),
            now: float | None = None) -> str | None:
    """What is wrong with `answer` for `expect`, in a NOC's words; None if nothing is.
    `roots`: SHA-256 fingerprints a trust list's signer must chain to (the group's
    expected_roots; empty: the bundled roots)."""
    if not expect.allows(answer.status):
        allowed = ", ".join(str(s) for s in expect.statuses)
        return f"status {answer.status} is not one of the expected ({allowed})"
    if expect.content is not None:
        if answer.status != 200:
            return f"expected a {expect.content.upper()} (status 200), got status {answer.status}"
        if answer.truncated:
            return f"expected a {expect.content.upper()}, but the body is larger than the cap"
        found = _KINDS[expect.content](answer.body, trust, time.time() if now is None else now,
                                       roots or bundled_root_fingerprints())
        if found is not None:
            return found
    if expect.body is not None and not expect.body.search(answer.body):
        return f"the body does not match {expect.body.pattern.decode(errors='replace')!r}"
    return None


def load_crl(body: bytes) -> x509.CertificateRevocationList:
    """A CRL in DER or PEM; ValueError (with words) if the body is none."""
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(body)
        else:
            crl = x509.load_der_x509_crl(body)
        crl.issuer.rfc4514_string()  # a name that does not decode is no usable CRL either
    except Exception as exc:  # noqa: BLE001 - any malformed CRL is "not a CRL"
        raise ValueError(f"not a CRL (DER or PEM): {str(exc)[:120]}") from None
    return crl


def load_certificate(body: bytes) -> x509.Certificate:
    """An X.509 certificate in DER or PEM; ValueError (with words) if the body is none."""
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(body)
        return x509.load_der_x509_certificate(body)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"not an X.509 certificate (DER or PEM): {str(exc)[:120]}") from None


def _crl(body: bytes, trust: TrustStore, now: float, roots: frozenset[bytes]) -> str | None:
    try:
        crl = load_crl(body)
    except ValueError as exc:
        return str(exc)
    issuer_name = crl.issuer.rfc4514_string()
    issuers = trust.certificates_named(crl.issuer)
    if not issuers:
        return f"a CRL of {issuer_name}, whose certificate is neither a trusted root nor a CA of a verified chain"
    if not any(_signed_by(crl, issuer) for issuer in issuers):
        return f"a CRL of {issuer_name} whose signature does not verify against that CA's key"
    next_update = crl.next_update_utc
    if next_update is not None and next_update.timestamp() < now:
        return f"a CRL of {issuer_name} whose nextUpdate ({next_update:%Y-%m-%dT%H:%M:%SZ}) has passed"
    return None


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - unsupported key type and the like: not verified
        return False


def _ctl(body: bytes, trust: TrustStore, now: float, roots: frozenset[bytes]) -> str | None:
    return check_ctl_cabinet(body, roots, list(trust.anchors)).problem


def _cert(body: bytes, trust: TrustStore, now: float, roots: frozenset[bytes]) -> str | None:
    try:
        load_certificate(body)
    except ValueError as exc:
        return str(exc)
    return None


_KINDS = {"crl": _crl, "ctl": _ctl, "cert": _cert}
