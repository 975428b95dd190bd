"""What a probe returns: immutable facts, never metrics.

The scheduler keeps the latest ProbeResult per job; the collector turns them
into metric families at scrape time without any I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..reasons import Reason


@dataclass(frozen=True)
class CertFacts:
    """What a NOC wants to see of one presented certificate."""

    der: bytes = field(repr=False)
    subject: str
    issuer: str
    serial: str  # hex, upper case
    fingerprint_sha256: str  # hex, lower case
    not_before: float  # unix seconds
    not_after: float
    crl_urls: tuple[str, ...] = ()
    ca_issuers_urls: tuple[str, ...] = ()
    ocsp_urls: tuple[str, ...] = ()  # AIA id-ad-ocsp responders
    is_ca: bool = False
    self_signed: bool = False


@dataclass(frozen=True)
class TLSFacts:
    version: str
    cipher: str
    # As presented by the server, leaf first (depth 0), verified or not.
    presented: tuple[CertFacts, ...]
    # The path the verifier built, leaf to trust anchor; empty when it failed.
    verified_path: tuple[CertFacts, ...]
    verify_error: str = ""
    # AIA chain building (on the system route) when the presented chain lacked an issuer:
    aia_fetched: tuple[str, ...] = ()  # caIssuers URLs that supplied one
    aia_error: str = ""  # why an issuer is still missing
    # The OCSP response the server stapled to the handshake (DER, unverified: assess.py judges it);
    # b"" when it was asked for and none came, None when none was asked for (see _staple.py).
    ocsp_staple: bytes | None = None

    @property
    def verified(self) -> bool:
        return bool(self.verified_path)

    @property
    def root(self) -> CertFacts | None:
        """The chain's end: the anchor when verified, else the last presented certificate."""
        if self.verified_path:
            return self.verified_path[-1]
        return self.presented[-1] if self.presented else None


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    reason: Reason | None
    started_at: float  # unix seconds
    duration: float  # wall seconds
    phases: tuple[tuple[str, float], ...]  # every phase of metrics.PHASES, 0 where it did not run
    detail: str = ""  # human words: the error, the proxy's own error header, ...
    http_status: int = 0
    peer: str = ""  # address connected to (the proxy's when there is one)
    proxy_status: int = 0  # CONNECT answer; 0 when no proxy or plain HTTP
    tls: TLSFacts | None = None
    # For targets whose content is checked (expect: content): the checked body's size
    # and its Last-Modified (unix seconds; None when the server sent none or it does
    # not parse). None when nothing was checked.
    content_bytes: int | None = None
    content_last_modified: float | None = None

    @property
    def finished_at(self) -> float:
        return self.started_at + self.duration

    def phase(self, name: str) -> float:
        return dict(self.phases).get(name, 0.0)
