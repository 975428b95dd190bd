"""A generated PKI shaped like Microsoft's, for tests.

Layout (names follow the real hierarchy so failures read naturally in test output):

    "<name> Root Certificate Authority 2011"   self-signed root (trust anchor)
      +- "<name> Secure Server CA 2024"         issuing CA; CDP/AIA point at the root's CRL/cert
           +- leaves                             SAN, EKU serverAuth, CDP/AIA point at this CA

plus, on demand, an "inspection" root (what a company's TLS-inspection box re-signs with) that
issues leaves for any name directly.

Everything is written as PEM (and CA certificates also as DER, which is what AIA URLs serve) into
the directory given to `LabPKI.create`, and the objects are kept in memory for assertions.

Speed: an RSA-2048 key costs ~60 ms here, so RSA keys are cached per process by
(PKI name, role). Distinct PKIs never share a key (that would make an "unknown" root verify lab
certificates); all RSA leaves of one PKI share one key, which is harmless for tests.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KeyType: TypeAlias = Literal["rsa", "ec"]


class _Default(enum.Enum):
    """Sentinel type: "use the PKI's default URL" (None means "leave the extension out")."""

    DEFAULT = "DEFAULT"


DEFAULT = _Default.DEFAULT


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@functools.cache
def _cached_rsa_key(pki_name: str, role: str) -> rsa.RSAPrivateKey:
    # Cached per process: many tests create PKIs, and RSA generation dominates the cost.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _new_key(key_type: KeyType, pki_name: str, role: str) -> PrivateKey:
    if key_type == "rsa":
        return _cached_rsa_key(pki_name, role)
    # EC keys cost microseconds, so they are always fresh.
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _compact(name: str) -> str:
    # "Lab" -> "Lab", "Unknown Lab" -> "UnknownLab": used in URL file names.
    return "".join(part for part in name.split())


@dataclass(frozen=True)
class CA:
    """A certificate authority: certificate, key, and where its files are."""

    label: str  # "root", "issuing", "inspection"
    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path  # PEM
    der_path: Path  # DER (what an AIA caIssuers URL serves)
    key_path: Path
    # The issuer's certificate (None for a self-signed root); used to build chain files.
    parent: CA | None = None
    # Where this CA's own CRL and certificate are published (what its children's CDP/AIA say).
    crl_url: str = ""
    cert_url: str = ""

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)


@dataclass(frozen=True)
class LeafBundle:
    """A server certificate and everything a TLS server needs to present it."""

    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path  # leaf only, PEM
    key_path: Path  # PKCS#8 PEM, unencrypted
    chain_path: Path  # leaf then its issuer (PEM): what a server presents
    serial: int
    hostnames: tuple[str, ...]
    issuer: CA


@dataclass
class LabPKI:
    """One independent hierarchy (root + issuing CA) written into `directory`.

    Create with `LabPKI.create(tmpdir)`; a second `LabPKI.create(other_dir, name="Unknown")`
    is an unrelated hierarchy whose leaves must not verify against this root.
    """

    name: str
    directory: Path
    key_type: KeyType
    root: CA
    issuing: CA
    ocsp_url: str | None = None  # the responder named in AIA (issuing CA and leaves), if any
    _serial: int = 1000
    _inspection: CA | None = field(default=None, repr=False)
    _leaf_count: int = field(default=0, repr=False)

    # ---------------------------------------------------------------- construction

    @classmethod
    def create(cls, directory: str | Path, *, name: str = "Lab", key_type: KeyType = "rsa",
               ocsp_url: str | None = None) -> LabPKI:
        """`ocsp_url`: an OCSP responder in the issuing CA's AIA (and, by default, in its leaves')."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tag = _compact(name)
        now = utcnow()
        # Real Microsoft URLs, lab file names: tests map the hosts to lab servers, so a
        # mistaken real fetch would be visible (and would fail: there is no internet).
        root_crl_url = f"http://www.microsoft.com/pkiops/crl/{tag}Root2011.crl"
        root_cert_url = f"http://www.microsoft.com/pkiops/certs/{tag}Root2011.crt"
        issuing_crl_url = f"http://crl.microsoft.com/pki/crl/products/{tag}SecureServerCA2024.crl"
        issuing_cert_url = f"http://www.microsoft.com/pki/certs/{tag}SecureServerCA2024.crt"

        root_key = _new_key(key_type, name, "root")
        root_subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} Corporation"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root Certificate Authority 2011"),
            ]
        )
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_subject)
            .issuer_name(root_subject)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=365))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        root = _write_ca(directory, f"{tag}-root", "root", root_cert, root_key, None, root_crl_url, root_cert_url)

        issuing_key = _new_key(key_type, name, "issuing")
        issuing_subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} Corporation"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Secure Server CA 2024"),
            ]
        )
        issuing_cert = (
            x509.CertificateBuilder()
            .subject_name(issuing_subject)
            .issuer_name(root_subject)
            .public_key(issuing_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=300))
            .not_valid_after(now + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()), critical=False)
            .add_extension(_aki(root_cert), critical=False)
            .add_extension(_cdp(root_crl_url), critical=False)
            .add_extension(_aia(root_cert_url, ocsp_url), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        issuing = _write_ca(
            directory, f"{tag}-issuing", "issuing", issuing_cert, issuing_key, root, issuing_crl_url, issuing_cert_url
        )
        return cls(name=name, directory=directory, key_type=key_type, root=root, issuing=issuing, ocsp_url=ocsp_url)

    # ---------------------------------------------------------------- paths and URLs

    @property
    def ca_bundle_path(self) -> Path:
        """The root alone (PEM): what a client trusts."""
        return self.root.cert_path

    @property
    def root_der_path(self) -> Path:
        return self.root.der_path

    @property
    def issuing_der_path(self) -> Path:
        return self.issuing.der_path

    def published_files(self, *, revoked_serials: Iterable[int] = ()) -> dict[str, bytes]:
        """URL -> content for every CRL/certificate the hierarchy's CDP/AIA point at.

        Handy to load a `files` lab server per host: split by `urllib.parse.urlsplit(url)`.
        The issuing CA's CRL lists `revoked_serials`; the root's CRL is empty.
        """
        return {
            self.root.crl_url: self.make_crl("root"),
            self.root.cert_url: self.root.der,
            self.issuing.crl_url: self.make_crl("issuing", revoked_serials=revoked_serials),
            self.issuing.cert_url: self.issuing.der,
        }

    # ---------------------------------------------------------------- leaves

    @property
    def inspection(self) -> CA:
        """A separate self-signed root like a TLS-inspection box's; created on first use.

        Its leaves (issue_leaf(..., issuer=pki.inspection, with_aki=False)) chain only to it,
        never to `root`.
        """
        if self._inspection is None:
            self._inspection = _make_inspection_ca(self.directory, self.name, self.key_type)
        return self._inspection

    def _ca(self, which: CA | Literal["issuing", "root", "inspection"]) -> CA:
        if isinstance(which, CA):
            return which
        if which == "issuing":
            return self.issuing
        if which == "root":
            return self.root
        if which == "inspection":
            return self.inspection
        raise ValueError(f"unknown issuer {which!r}: use 'issuing', 'root', 'inspection' or a CA")

    def issue_ca(self, name: str, *, key_usage: bool = True) -> CA:
        """An intermediate CA under the root; `key_usage=False` leaves out the keyUsage extension
        (RFC 5280 asks CAs to include it; Windows' chain engine does not insist)."""
        key = _new_key(self.key_type, self.name, _safe(name))
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{self.name} Corporation"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = utcnow()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(_aki(self.root.cert), critical=False)
        )
        if key_usage:
            builder = builder.add_extension(_ca_key_usage(), critical=True)
        cert = builder.sign(self.root.key, hashes.SHA256())
        return _write_ca(self.directory, f"{self.name.lower()}-{_safe(name)}", "intermediate", cert, key, self.root,
                         "", "")

    def next_serial(self) -> int:
        # Small, predictable serials make revocation tests easy to read.
        self._serial += 1
        return self._serial

    def issue_leaf(
        self,
        hostnames: str | Sequence[str],
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        with_aki: bool = True,
        cdp_url: str | None | _Default = DEFAULT,
        aia_url: str | None | _Default = DEFAULT,
        ocsp_url: str | None | _Default = DEFAULT,
        issuer: CA | Literal["issuing", "root", "inspection"] | None = None,
        key_type: KeyType | None = None,
        serial: int | None = None,
        server_auth: bool = True,
        san: Sequence[x509.GeneralName] | None | _Default = DEFAULT,
    ) -> LeafBundle:
        """Issue a server certificate for `hostnames` (first one is also the CN).

        Defaults: valid from a day ago for 90 days, issued by the issuing CA, CDP/AIA pointing at
        the issuer's published CRL/certificate. `None` for cdp_url/aia_url omits the extension.
        """
        names = (hostnames,) if isinstance(hostnames, str) else tuple(hostnames)
        if not names:
            raise ValueError("issue_leaf needs at least one host name")
        ca = self._ca(issuer or "issuing")
        now = utcnow()
        not_before = not_before or now - dt.timedelta(days=1)
        not_after = not_after or now + dt.timedelta(days=90)
        serial = serial if serial is not None else self.next_serial()
        key = _new_key(key_type or self.key_type, self.name, "leaf")
        # A CA that publishes nothing (the inspection root) gives leaves no CDP/AIA by default.
        cdp = (ca.crl_url or None) if cdp_url is DEFAULT else cdp_url
        aia = (ca.cert_url or None) if aia_url is DEFAULT else aia_url
        responder = (self.ocsp_url if ca.cert_url else None) if ocsp_url is DEFAULT else ocsp_url

        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    # keyEncipherment only makes sense for RSA keys (RSA key exchange).
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        # `san`: the names of the subjectAltName (default: DNS names of `hostnames`); None: no SAN
        # at all, the name is only the subject CN (what old internal CAs issue).
        general_names = [x509.DNSName(n) for n in names] if san is DEFAULT else san
        if general_names is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(general_names)), critical=False)
        if server_auth:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        if with_aki:
            builder = builder.add_extension(_aki(ca.cert), critical=False)
        if cdp is not None:
            builder = builder.add_extension(_cdp(cdp), critical=False)
        if aia is not None or responder is not None:
            builder = builder.add_extension(_aia(aia, responder), critical=False)
        cert = builder.sign(ca.key, hashes.SHA256())

        self._leaf_count += 1
        stem = f"leaf-{self._leaf_count:03d}-{_safe(names[0])}"
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}.key"
        chain_path = self.directory / f"{stem}.chain.pem"
        cert_path.write_bytes(_pem(cert))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        # Leaf then issuer, never the root: that is what real servers send.
        chain_path.write_bytes(_pem(cert) + ca.pem)
        return LeafBundle(
            cert=cert,
            key=key,
            cert_path=cert_path,
            key_path=key_path,
            chain_path=chain_path,
            serial=serial,
            hostnames=names,
            issuer=ca,
        )

    # Named variants, so tests say what they mean.

    def issue_expired(self, hostnames: str | Sequence[str], **kwargs: object) -> LeafBundle:
        now = utcnow()
        return self.issue_leaf(
            hostnames, not_before=now - dt.timedelta(days=60), not_after=now - dt.timedelta(days=1), **kwargs  # type: ignore[arg-type]
        )

    def issue_not_yet_valid(self, hostnames: str | Sequence[str], **kwargs: object) -> LeafBundle:
        now = utcnow()
        return self.issue_leaf(
            hostnames, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=60), **kwargs  # type: ignore[arg-type]
        )

    def issue_inspection_leaf(self, hostnames: str | Sequence[str], **kwargs: object) -> LeafBundle:
        """A leaf like mitmproxy's: signed by the inspection root, no AKI, no CDP/AIA."""
        kwargs.setdefault("with_aki", False)
        kwargs.setdefault("cdp_url", None)
        kwargs.setdefault("aia_url", None)
        return self.issue_leaf(hostnames, issuer=self.inspection, **kwargs)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- CRLs

    def make_crl(
        self,
        issuer: Literal["issuing", "root", "inspection"] | CA = "issuing",
        *,
        revoked_serials: Iterable[int] = (),
        this_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        sign_with_wrong_key: bool = False,
        fmt: Literal["der", "pem"] = "der",
        crl_number: int = 1,
    ) -> bytes:
        """A CRL from `issuer`, listing `revoked_serials`.

        Defaults: thisUpdate an hour ago (a week before nextUpdate when that is already past),
        nextUpdate in 7 days. `sign_with_wrong_key` signs with
        an unrelated key of the same type, so the CRL parses but its signature is invalid.
        """
        ca = self._ca(issuer)
        now = utcnow()
        next_update = next_update or now + dt.timedelta(days=7)
        if this_update is None:
            this_update = now - dt.timedelta(hours=1)
            if next_update <= this_update:
                # An already-stale CRL was asked for: issue it a week before it went stale.
                this_update = next_update - dt.timedelta(days=7)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(_aki(ca.cert), critical=False)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(this_update)
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                .build()
            )
        key = ca.key
        if sign_with_wrong_key:
            key_type: KeyType = "rsa" if isinstance(ca.key, rsa.RSAPrivateKey) else "ec"
            key = _new_key(key_type, self.name, "wrong-crl-signer")
        crl = builder.sign(key, hashes.SHA256())
        encoding = serialization.Encoding.DER if fmt == "der" else serialization.Encoding.PEM
        return crl.public_bytes(encoding)

    def write_crl(
        self, path: str | Path, issuer: Literal["issuing", "root", "inspection"] | CA = "issuing", **kwargs: object
    ) -> Path:
        """make_crl(...) written to `path` (relative paths land in the PKI directory)."""
        target = Path(path)
        if not target.is_absolute():
            target = self.directory / target
        target.write_bytes(self.make_crl(issuer, **kwargs))  # type: ignore[arg-type]
        return target


# -------------------------------------------------------------------- helpers


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _cdp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None, crl_issuer=None
            )
        ]
    )


def _aia(url: str | None, ocsp_url: str | None = None) -> x509.AuthorityInformationAccess:
    access = []
    if ocsp_url is not None:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)))
    if url is not None:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url)))
    return x509.AuthorityInformationAccess(access)


def _write_ca(
    directory: Path,
    stem: str,
    label: str,
    cert: x509.Certificate,
    key: PrivateKey,
    parent: CA | None,
    crl_url: str,
    cert_url: str,
) -> CA:
    cert_path = directory / f"{stem}.pem"
    der_path = directory / f"{stem}.der"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(_pem(cert))
    der_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return CA(
        label=label,
        cert=cert,
        key=key,
        cert_path=cert_path,
        der_path=der_path,
        key_path=key_path,
        parent=parent,
        crl_url=crl_url,
        cert_url=cert_url,
    )


def _make_inspection_ca(directory: Path, pki_name: str, key_type: KeyType) -> CA:
    key = _new_key(key_type, pki_name, "inspection")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso Network Security"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{pki_name} TLS Inspection Root"),
        ]
    )
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Inspection boxes publish no CRL/AIA: empty URLs make its leaves omit CDP/AIA by default.
    return _write_ca(directory, f"{_compact(pki_name)}-inspection", "inspection", cert, key, None, "", "")
