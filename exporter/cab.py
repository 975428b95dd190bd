"""Certificate trust list downloads: is this body the cabinet file CryptoAPI expects?

Windows' certificate engine downloads its trust lists (`authrootstl.cab`,
`disallowedcertstl.cab`, `pinrulesstl.cab`) as Microsoft cabinet files holding one
signed CTL (`*.stl`, PKCS#7 SignedData). A proxy's error page, a captive portal
or a truncated transfer must not count as a reachable CTL, so a CTL probe checks:

1. the body is a cabinet ([MS-CAB] CFHEADER: "MSCF", version 1.3, its own size
   field equal to what arrived, at least one folder and one file);
2. where the cabinet's first file can be unpacked (stored or MSZIP; LZX and
   Quantum are left unchecked and said so), it is PKCS#7 data whose certificates
   chain to one of the expected roots (the bundled Microsoft roots by default).
   Microsoft signs its trust lists under Microsoft Root Certificate Authority 2010
   (through Microsoft Windows Production PCA 2011), which is not among the bundled
   roots: a path that ends at an issuer we do not hold, named O=Microsoft
   Corporation, is accepted with `signer_chain_verified` None (not verified), so a
   genuine list never pages; a list under any other issuer fails.

What it does not check: the PKCS#7 signature over the CTL's content (the standard
library and `cryptography` have no SignedData verifier); a substituted file signed
by anyone else is still caught by step 2, a corrupted one by MSZIP's checks.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

_HEADER = struct.Struct("<4sIIIIIBBHHHHH")  # CFHEADER up to iCabinet: 36 bytes
_FOLDER = struct.Struct("<IHH")  # CFFOLDER: coffCabStart, cCFData, typeCompress
_DATA = struct.Struct("<IHH")  # CFDATA: csum, cbData, cbUncomp
_FILE = struct.Struct("<IIHHHH")  # CFFILE: cbFile, uoffFolderStart, iFolder, date, time, attribs
_RESERVE_PRESENT = 0x0004
_COMPRESS_NONE, _COMPRESS_MSZIP = 0, 1
_MAX_UNPACKED = 8 << 20  # a CTL is a few hundred KiB; more is not a CTL


@dataclass(frozen=True)
class CabinetCheck:
    """What a CTL download turned out to be. `problem` is None when it is a good one."""

    problem: str | None
    files: tuple[str, ...] = ()
    signer_chain_verified: bool | None = None  # None: not checked (compression we do not unpack)


def check_ctl_cabinet(body: bytes, expected_roots: frozenset[bytes], anchors: list[x509.Certificate]) -> CabinetCheck:
    """Judge `body` as a CTL cabinet. `expected_roots` are SHA-256 fingerprints of the
    roots its signer may chain to; `anchors` are candidate root certificates."""
    try:
        names, first = _read_cabinet(body)
    except _NotCabinet as exc:
        return CabinetCheck(f"not a cabinet file: {exc}")
    if first is None:
        return CabinetCheck(None, names, None)
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(first)
    except ValueError:
        return CabinetCheck(f"{names[0]} is not PKCS#7 signed data", names)
    verdict = _signer_verdict(certificates, expected_roots, anchors)
    if verdict is False:
        return CabinetCheck(f"{names[0]} is not signed by a certificate of the expected roots", names, False)
    return CabinetCheck(None, names, verdict)


class _NotCabinet(Exception):
    pass


def _read_cabinet(body: bytes) -> tuple[tuple[str, ...], bytes | None]:
    """The file names and, where we can unpack it, the first file's bytes."""
    if len(body) < _HEADER.size:
        raise _NotCabinet(f"{len(body)} bytes, shorter than a cabinet header")
    (magic, _, cb_cabinet, _, coff_files, _, minor, major, c_folders, c_files, flags, _, _) = _HEADER.unpack_from(body)
    if magic != b"MSCF":
        raise _NotCabinet("no MSCF signature")
    if (major, minor) != (1, 3):
        raise _NotCabinet(f"version {major}.{minor}, expected 1.3")
    # A signed cabinet's Authenticode blob follows cbCabinet; anything shorter is truncated.
    if cb_cabinet > len(body):
        raise _NotCabinet(f"truncated: header says {cb_cabinet} bytes, {len(body)} arrived")
    if c_folders == 0 or c_files == 0:
        raise _NotCabinet("no folder or no file")
    offset = _HEADER.size
    folder_reserve = data_reserve = 0
    if flags & _RESERVE_PRESENT:
        cb_header, folder_reserve, data_reserve = struct.unpack_from("<HBB", body, offset)
        offset += 4 + cb_header
    folders = []
    for _ in range(c_folders):
        folders.append(_unpack(_FOLDER, body, offset))
        offset += _FOLDER.size + folder_reserve
    names, offset, first_folder = [], coff_files, None
    for index in range(c_files):
        cb_file, _, i_folder, _, _, _ = _unpack(_FILE, body, offset)
        end = body.find(b"\0", offset + _FILE.size, offset + _FILE.size + 256)
        if end < 0:
            raise _NotCabinet("a file name is not terminated")
        names.append(body[offset + _FILE.size:end].decode("latin-1"))
        if index == 0:
            first_folder, first_size = i_folder, cb_file
        offset = end + 1
    if first_folder is None or first_folder >= c_folders:
        raise _NotCabinet("the first file names no folder")
    start, blocks, compression = folders[first_folder]
    unpacked = _unpack_folder(body, start, blocks, compression & 0x000F, data_reserve)
    if unpacked is None:
        return tuple(names), None
    if len(unpacked) < first_size:
        raise _NotCabinet(f"{names[0]}: {len(unpacked)} of {first_size} bytes unpacked")
    return tuple(names), unpacked[:first_size]


def _unpack_folder(body: bytes, offset: int, blocks: int, compression: int, reserve: int) -> bytes | None:
    if compression not in (_COMPRESS_NONE, _COMPRESS_MSZIP):
        return None
    out = bytearray()
    for _ in range(blocks):
        _, cb_data, cb_uncomp = _unpack(_DATA, body, offset)
        offset += _DATA.size + reserve
        chunk = body[offset:offset + cb_data]
        if len(chunk) != cb_data:
            raise _NotCabinet("a data block runs past the end")
        offset += cb_data
        if compression == _COMPRESS_NONE:
            out += chunk
        else:
            out += _inflate_mszip(chunk, bytes(out[-32768:]), cb_uncomp)
        if len(out) > _MAX_UNPACKED:
            raise _NotCabinet(f"unpacks to more than {_MAX_UNPACKED} bytes")
    return bytes(out)


def _inflate_mszip(chunk: bytes, history: bytes, expected: int) -> bytes:
    # MSZIP: each block is "CK" + a raw deflate stream whose window continues from
    # the previous block's output ([MS-MCI] 2.2), hence the dictionary.
    if not chunk.startswith(b"CK"):
        raise _NotCabinet("an MSZIP block lacks its CK signature")
    inflater = zlib.decompressobj(-15, zdict=history) if history else zlib.decompressobj(-15)
    try:
        data = inflater.decompress(chunk[2:], expected + 1)
    except zlib.error as exc:
        raise _NotCabinet(f"MSZIP data is corrupt ({exc})") from None
    if len(data) != expected:
        raise _NotCabinet(f"an MSZIP block unpacked to {len(data)} bytes, not {expected}")
    return data


def _unpack(layout: struct.Struct, body: bytes, offset: int) -> tuple:
    if offset < 0 or offset + layout.size > len(body):
        raise _NotCabinet("a structure runs past the end")
    return layout.unpack_from(body, offset)


def _signer_verdict(certificates: list[x509.Certificate], expected: frozenset[bytes],
                    anchors: list[x509.Certificate]) -> bool | None:
    """True: a certificate of the file leads, issuer by issuer, to an expected root.
    None: the path ends at an issuer we do not hold whose name is Microsoft's (the CTL
    signers chain to Microsoft Root Certificate Authority 2010, which is not bundled).
    False: anything else (another root, a foreign issuer)."""
    pool = list(certificates) + list(anchors)
    verdict: bool | None = False

    def fingerprint(cert: x509.Certificate) -> bytes:
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()

    def walk(cert: x509.Certificate, depth: int) -> bool:
        nonlocal verdict
        if fingerprint(cert) in expected:
            return True
        if depth == 0 or cert.issuer == cert.subject:
            return False
        issuers = [c for c in pool if c.subject == cert.issuer and c is not cert]
        if not issuers and _is_microsoft(cert.issuer):
            verdict = None
        for issuer in issuers:
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):  # another key, an unsupported algorithm
                continue
            if walk(issuer, depth - 1):
                return True
        return False

    if any(walk(cert, 6) for cert in certificates):
        return True
    return verdict


def _is_microsoft(name: x509.Name) -> bool:
    organisations = [a.value for a in name.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    return organisations == ["Microsoft Corporation"]
