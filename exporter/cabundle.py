"""CA bundles (PEM files of trust anchors), read one certificate at a time.

The system bundle of Debian and Ubuntu holds roots that `cryptography`
already frowns upon (serial number 0: Go Daddy, Starfield, SECOM, HARICA...)
with a CryptographyDeprecationWarning saying a future release will refuse to
load them. Reading a bundle whole would then fail whole, so each certificate is
read on its own: one that does not load costs only itself. In a file the
user names (`tls.ca_file`), a certificate cryptography says it will refuse is
skipped now, with a warning naming the file and the certificate, so that an
upgrade of cryptography changes nothing. The system's bundle keeps such roots
as anchors while they still load (Windows trusts them, and leaving them out
would turn targets under them red for nothing); they are named at debug level.
Warnings go through our logging (logfmt or JSON), once per file content, never
as Python's raw warning line.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

log = logging.getLogger("exporter")

SYSTEM = "system CA bundle"
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class CABundle:
    path: str
    certificates: tuple[x509.Certificate, ...]
    skipped: tuple[str, ...]  # one line per certificate left out: which one and why


def parse_bundle(data: bytes, source: str, *, keep_deprecated: bool = False) -> CABundle:
    """Every certificate of a PEM bundle that loads (and, unless keep_deprecated, that
    cryptography does not announce it will refuse); the others are listed in `skipped`."""
    blocks = list(_PEM_BLOCK.finditer(data))
    certificates, skipped = [], []
    for number, block in enumerate(blocks, 1):
        line = data.count(b"\n", 0, block.start()) + 1
        where = f"certificate {number} of {len(blocks)} (line {line}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cert = x509.load_pem_x509_certificate(block.group())
            except ValueError as exc:
                skipped.append(f"{where}) does not load ({exc}); skipped")
                continue
        # A deprecation warning from cryptography announces a future refusal: refuse it now.
        refusals = [str(w.message) for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]
        if refusals and not keep_deprecated:
            skipped.append(f"{where}, {_name(cert)}) skipped: {refusals[0]}")
            continue
        if refusals:
            log.debug("%s: %s, %s): kept while it loads: %s", source, where, _name(cert), refusals[0])
        certificates.append(cert)
    return CABundle(source, tuple(certificates), tuple(skipped))


def read_bundle(path: str, *, what: str) -> CABundle:
    """The bundle at `path` (OSError if unreadable). Parsed once per file content, and
    what was skipped is logged then: as warnings for a file the user named (`what`, e.g.
    "tls.ca_file"), at debug level for the system's bundle (what=SYSTEM)."""
    status = os.stat(path)
    return _read(path, what, (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size))


@functools.lru_cache(maxsize=16)
def _read(path: str, what: str, identity: tuple) -> CABundle:
    with open(path, "rb") as handle:
        bundle = parse_bundle(handle.read(), path, keep_deprecated=what == SYSTEM)
    for line in bundle.skipped:
        (log.debug if what == SYSTEM else log.warning)("%s: %s: %s", what, path, line)
    return bundle


def _name(cert: x509.Certificate) -> str:
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        subject = "an unreadable subject"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f"{subject}, serial {cert.serial_number}"
