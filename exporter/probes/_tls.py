"""TLS helpers shared by the probers: trust store, chain capture, verification.

The handshake itself is made without verification, so that the presented
chain can be reported even when it is bad; the chain is then verified here
with cryptography's X.509 verifier, which returns the path it built. Failures
are told apart (expired, not yet valid, wrong name, untrusted) by re-trying the
verification with one condition relaxed at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import _ssl
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    DNSName,
    ExtensionPolicy,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..cabundle import SYSTEM as SYSTEM_BUNDLE
from ..cabundle import parse_bundle, read_bundle
from ..config import bundled_root_pems
from ..reasons import Reason
from ..utc import iso
from .result import CertFacts, TLSFacts

_FACTS_CACHE_SIZE = 8192
# One entry per (chain, host name): room for tens of thousands of targets.
_VERDICT_CACHE_SIZE = 32768
# Longest life of a cached successful verdict, and of a failed one.
VERDICT_TTL = 3600.0
_SEEN_CAS_KEPT = 1024
FAILED_VERDICT_TTL = 60.0


def client_context() -> ssl.SSLContext:
    """A context that completes the handshake whatever the chain, so we can inspect it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def presented_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The peer's chain as sent, leaf first, in DER.

    Python 3.13 made this public; 3.11 and 3.12 have it on the private
    `_sslobj`. This is the one place that knows.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        sslobj = getattr(ssl_object, "_sslobj", None)
        getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:  # pragma: no cover - only on an unknown Python
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    chain = getter() or []
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain]


# --------------------------------------------------------------------- certificate facts


class CertFactsCache:
    """Facts of DER certificates by their bytes, most recently used kept.

    The same chain comes back on every probe of a target, so its certificates
    are parsed once; the cached facts' `der` is also the one copy of those bytes
    that the verdict cache's keys hold. Owned by its TrustStore (one per
    configuration of one exporter), never shared between exporters."""

    def __init__(self, size: int = _FACTS_CACHE_SIZE):
        self._size = size
        self._facts: OrderedDict[bytes, CertFacts | None] = OrderedDict()

    def get(self, der: bytes) -> CertFacts | None:
        """Facts of one DER certificate (None if it does not parse)."""
        cached = self._facts.get(der, False)
        if cached is not False:
            self._facts.move_to_end(der)
            return cached
        facts = _parse_facts(der)
        self._facts[der] = facts
        if len(self._facts) > self._size:
            self._facts.popitem(last=False)
        return facts

    def canonical(self, der: bytes) -> bytes:
        """The cache's own copy of these bytes (hash computed once), else der."""
        facts = self.get(der)
        return facts.der if facts is not None else der


def _parse_facts(der: bytes) -> CertFacts | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string()
        issuer = cert.issuer.rfc4514_string()
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
        serial = format(cert.serial_number, "X")
    except Exception:  # noqa: BLE001 - any malformed field means "unparseable"
        return None
    return CertFacts(
        der=der,
        subject=subject,
        issuer=issuer,
        serial=serial,
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        not_before=not_before,
        not_after=not_after,
        crl_urls=_crl_urls(cert),
        ca_issuers_urls=ca_issuers_urls(cert),
        ocsp_urls=ocsp_urls(cert),
        is_ca=_is_ca(cert),
        self_signed=cert.subject == cert.issuer,
    )


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier):
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except Exception:  # noqa: BLE001 - absent or malformed: treat as absent
        return None


def _crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    points = _extension(cert, ExtensionOID.CRL_DISTRIBUTION_POINTS) or []
    urls = []
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier):
                urls.append(name.value)
    return tuple(urls)


def ca_issuers_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The caIssuers URLs of a certificate's AIA extension (where its issuer can be fetched)."""
    return _access_urls(cert, x509.oid.AuthorityInformationAccessOID.CA_ISSUERS)


def ocsp_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The OCSP responder URLs of a certificate's AIA extension."""
    return _access_urls(cert, x509.oid.AuthorityInformationAccessOID.OCSP)


def _access_urls(cert: x509.Certificate, method: x509.ObjectIdentifier) -> tuple[str, ...]:
    access = _extension(cert, ExtensionOID.AUTHORITY_INFORMATION_ACCESS) or []
    return tuple(
        d.access_location.value
        for d in access
        if d.access_method == method and isinstance(d.access_location, x509.UniformResourceIdentifier)
    )


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    return bool(constraints and constraints.ca)


# --------------------------------------------------------------------- trust and verification


@dataclass(frozen=True)
class ChainVerdict:
    verified_path: tuple[CertFacts, ...]
    reason: Reason | None
    error: str


class TrustStore:
    """Bundled Microsoft/DigiCert roots + the system store + the user's ca_file."""

    def __init__(self, *, ca_file: str | None = None, system: bool = True):
        bundles = [parse_bundle(pem, "bundled roots") for pem in bundled_root_pems()]
        if system:
            cafile = ssl.get_default_verify_paths().cafile
            if cafile and Path(cafile).is_file():
                bundles.append(read_bundle(cafile, what=SYSTEM_BUNDLE))
        if ca_file:
            bundles.append(read_bundle(ca_file, what="tls.ca_file"))
        certs: dict[bytes, x509.Certificate] = {}
        for bundle in bundles:
            for cert in bundle.certificates:
                certs[cert.fingerprint(hashes.SHA256())] = cert
        self.anchors = tuple(certs.values())
        self._store = Store(list(self.anchors))
        # CA certificates of chains that verified, by subject: the issuers a CRL
        # probe may find its CRL signed by (content.py), besides the anchors.
        self._seen_cas: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        # Windows' chain engine, which the endpoints are built for, is less
        # strict than cryptography's web-PKI policy in three places, relaxed
        # here (everything else is kept; see README "Probe reasons"):
        # - no authorityKeyIdentifier is needed (inspection proxies such as
        #   mitmproxy omit it);
        # - a CA certificate without a keyUsage extension is a CA (CryptoAPI
        #   checks key usage only where the extension is present; the MUST in
        #   RFC 5280 4.2.1.3 binds issuing CAs, not relying parties); one that
        #   has the extension must allow keyCertSign;
        # - a leaf without subjectAltName is matched by its subject common
        #   name (CERT_CHAIN_POLICY_SSL compares the server name with "the DNS
        #   name or common name" of the certificate: SSL_EXTRA_CERT_CHAIN_POLICY_PARA).
        self._ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None
        )
        self._ca_policy = (
            ExtensionPolicy.webpki_defaults_ca()
            .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
            .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _may_sign_certificates)
        )
        # For leaves without subjectAltName: no SAN required, serverAuth checked by hand.
        self._cn_only_ee_policy = self._ee_policy.may_be_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
        ).may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _for_server_authentication)
        self._verdicts: OrderedDict[tuple, tuple[float, ChainVerdict]] = OrderedDict()
        # Parsed certificates by DER, for this store's verdicts and the probes' TLS facts.
        self.facts = CertFactsCache()

    def verify(self, presented: list[bytes], hostname: str, *, now: float | None = None) -> ChainVerdict:
        """Verify a presented chain for a host name.

        The verdict is cached per (chain, name): the same DER bytes verified
        for the same name against this (immutable) store give the same answer
        until a validity date of one of the certificates passes, so a verified
        chain is kept until the next notBefore/notAfter of the presented
        certificates and the path (at most VERDICT_TTL), a failed one a minute.
        Keys hold the facts cache's copy of each certificate, so 10,000 names
        served with one chain share its bytes.
        """
        now = time.time() if now is None else now
        canonical = tuple(self.facts.canonical(der) for der in presented)
        key = (canonical, hostname.lower())
        hit = self._verdicts.get(key)
        if hit is not None and hit[0] > now:
            self._verdicts.move_to_end(key)
            return hit[1]
        verdict = self._verify(presented, hostname, now)
        self._verdicts[key] = (self._verdict_expiry(canonical, verdict, now), verdict)
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > _VERDICT_CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return verdict

    def _verdict_expiry(self, chain: tuple[bytes, ...], verdict: ChainVerdict, now: float) -> float:
        if verdict.reason is not None:
            return now + FAILED_VERDICT_TTL
        expiry = now + VERDICT_TTL
        facts = [f for f in map(self.facts.get, chain) if f is not None] + list(verdict.verified_path)
        for f in facts:
            for boundary in (f.not_before, f.not_after):
                if now < boundary < expiry:
                    expiry = boundary
        return expiry

    def _verify(self, presented: list[bytes], hostname: str, now: float) -> ChainVerdict:
        facts = [self.facts.get(der) for der in presented]
        if not presented:
            return ChainVerdict((), Reason.TLS_UNTRUSTED, "the server presented no certificate")
        bad = [i for i, f in enumerate(facts) if f is None]
        if bad:
            return ChainVerdict((), Reason.TLS_UNTRUSTED, f"the certificate at depth {bad[0]} does not parse")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in presented]
        except ValueError as exc:
            return ChainVerdict((), Reason.TLS_UNTRUSTED, f"certificate does not parse: {exc}")
        leaf, intermediates = certs[0], certs[1:]
        at_now = _utc(now)
        path, error = self._try_name(leaf, intermediates, hostname, at_now)
        if path is not None:
            self._remember_cas(path[1:])
            return ChainVerdict(tuple(self.facts.get(c.public_bytes(Encoding.DER)) for c in path), None, "")
        # Which single relaxation makes it verify tells us what was wrong: the
        # certificate's own name (None: whatever name it carries) or another time.
        if self._try_name(leaf, intermediates, None, at_now)[0] is not None:
            return ChainVerdict((), Reason.TLS_HOSTNAME_MISMATCH, f"certificate not valid for {hostname}: {error}")
        valid_at = _time_when_all_valid(facts)
        if valid_at is not None and valid_at != now:
            for name in (hostname, None):
                if self._try_name(leaf, intermediates, name, _utc(valid_at))[0] is not None:
                    expired = any(f.not_after < now for f in facts)
                    reason = Reason.TLS_EXPIRED if expired else Reason.TLS_NOT_YET_VALID
                    return ChainVerdict((), reason, _dates_problem(facts, now) or error)
        if any(f.not_after < now for f in facts):
            # Fails even inside the validity window, but something is expired too;
            # an expired certificate is the more actionable fact.
            if valid_at is None:
                return ChainVerdict((), Reason.TLS_EXPIRED, _dates_problem(facts, now) or error)
        return ChainVerdict((), Reason.TLS_UNTRUSTED, error)

    def certificates_named(self, name: x509.Name) -> list[x509.Certificate]:
        """Trust anchors and CAs of verified chains whose subject is `name`."""
        return [c for c in (*self.anchors, *self._seen_cas.values()) if c.subject == name]

    def _remember_cas(self, certs) -> None:
        for cert in certs:
            key = cert.fingerprint(hashes.SHA256())
            self._seen_cas[key] = cert
            self._seen_cas.move_to_end(key)
        while len(self._seen_cas) > _SEEN_CAS_KEPT:
            self._seen_cas.popitem(last=False)

    def _try_name(self, leaf, intermediates, hostname: str | None, when: dt.datetime):
        """Verify for `hostname`, or (None) for the name the leaf itself carries."""
        if _extension(leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME) is None:
            return self._try_cn_only(leaf, intermediates, hostname, when)
        subject = _subject(hostname) if hostname is not None else _own_name(leaf)
        if subject is None:
            return None, "the certificate's subjectAltName holds no DNS name or IP address"
        return self._try(leaf, intermediates, subject, when)

    def _builder(self, when: dt.datetime, ee_policy: ExtensionPolicy) -> PolicyBuilder:
        """A verifier's policy: this store's anchors, at `when`, with our relaxed CA policy."""
        return PolicyBuilder().store(self._store).time(when).extension_policies(
            ca_policy=self._ca_policy, ee_policy=ee_policy)

    def _try_cn_only(self, leaf, intermediates, hostname: str | None, when: dt.datetime):
        """A leaf without subjectAltName: the chain as for a server, the name by the subject's CN."""
        try:
            # The client verifier builds and checks the path without matching a SAN;
            # the EKU (serverAuth, if the leaf restricts its use) is the policy's check.
            verifier = self._builder(when, self._cn_only_ee_policy).build_client_verifier()
            chain = verifier.verify(leaf, intermediates).chain
        except (VerificationError, ValueError) as exc:
            return None, str(exc)
        names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if hostname is not None and not any(_cn_matches(str(n), hostname) for n in names):
            return None, f"the certificate has no subjectAltName and its common name {names} is not {hostname}"
        return chain, ""

    def _try(self, leaf, intermediates, subject, when: dt.datetime):
        try:
            verifier = self._builder(when, self._ee_policy).build_server_verifier(subject)
            return verifier.verify(leaf, intermediates), ""
        except (VerificationError, ValueError) as exc:  # ValueError: e.g. a name the verifier cannot take
            return None, str(exc)


def tls_facts(ssl_object: ssl.SSLObject, presented: list[bytes], verdict: ChainVerdict, facts: CertFactsCache,
              completion=None) -> TLSFacts:
    """`facts`: the trust store's (TrustStore.facts); `completion`: what AIA chasing added
    (exporter.aia.ChainCompletion), if it ran."""
    cipher = ssl_object.cipher()
    return TLSFacts(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        presented=tuple(f for f in map(facts.get, presented) if f is not None),
        verified_path=verdict.verified_path,
        verify_error=verdict.error,
        aia_fetched=completion.fetched_from if completion is not None else (),
        aia_error=completion.error if completion is not None else "",
        # Only a StaplingTLS (_staple.py) asks for a staple; the standard library's objects have none.
        ocsp_staple=getattr(ssl_object, "ocsp_staple", None),
    )


def _subject(hostname: str):
    try:
        return IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return DNSName(hostname)


def _own_name(leaf: x509.Certificate):
    """A name the leaf is valid for (a DNS name, else an IP address of its SAN)."""
    san = _extension(leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is None:
        return None
    for name in san.get_values_for_type(x509.DNSName):
        try:
            return DNSName(name.replace("*.", "wildcard-probe.", 1))
        except ValueError:
            continue
    for address in san.get_values_for_type(x509.IPAddress):
        # A leaf for an address only, probed by name: the name is what is wrong.
        return IPAddress(address)
    return None


def _cn_matches(common_name: str, hostname: str) -> bool:
    """RFC 6125 6.4 matching of a common name: case-insensitive, `*` only as the whole left-most label."""
    cn, host = common_name.lower().rstrip("."), hostname.lower().rstrip(".")
    if cn.startswith("*."):
        return host.count(".") >= 2 and host.split(".", 1)[1] == cn[2:]
    return cn == host


def _may_sign_certificates(policy, cert: x509.Certificate, extension: x509.KeyUsage | None) -> None:
    if extension is not None and not extension.key_cert_sign:
        raise ValueError("the CA certificate's keyUsage does not allow keyCertSign")


def _for_server_authentication(policy, cert: x509.Certificate, extension: x509.ExtendedKeyUsage | None) -> None:
    if extension is not None and not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(extension):
        raise ValueError("the certificate's extendedKeyUsage does not allow serverAuth")


def _dates_problem(facts: list[CertFacts], now: float) -> str:
    """The first certificate outside its validity, in words a NOC can act on."""
    for depth, f in enumerate(facts):
        if f.not_after < now:
            return f"certificate at depth {depth} ({f.subject}) expired at {iso(f.not_after)}"
        if f.not_before > now:
            return f"certificate at depth {depth} ({f.subject}) is not valid before {iso(f.not_before)}"
    return ""



def _time_when_all_valid(facts: list[CertFacts]) -> float | None:
    start = max(f.not_before for f in facts) + 1
    end = min(f.not_after for f in facts) - 1
    return start if start <= end else None


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
