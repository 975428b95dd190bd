"""Certificate trust list cabinets for the lab, packed by Debian's real `gcab`.

A CTL cabinet as Windows downloads it: one `*.stl` file (PKCS#7 SignedData, here
signed by a lab CA's key over some bytes) in an MSZIP-compressed cabinet. Optionally
Authenticode-signed as a whole with Debian's `osslsigncode`, which puts a reserve area
into the header, so the parser sees both shapes Microsoft's files come in.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from .pki import CA, _pem_key


def tools_available() -> bool:
    return bool(shutil.which("gcab"))


def make_ctl_cabinet(directory: Path, name: str, signer: CA, *, payload: bytes = b"lab ctl " * 4000,
                     compress: bool = True, authenticode: bool = False) -> bytes:
    """The bytes of `<name>.cab` holding `<name>.stl` signed by `signer` (its chain included)."""
    work = Path(directory) / f"ctl-{name}"
    work.mkdir(parents=True, exist_ok=True)
    certs = [signer.cert] + ([signer.parent.cert] if signer.parent else [])
    builder = pkcs7.PKCS7SignatureBuilder().set_data(payload).add_signer(signer.cert, signer.key, hashes.SHA256())
    for extra in certs[1:]:
        builder = builder.add_certificate(extra)
    stl = builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    (work / f"{name}.stl").write_bytes(stl)
    cab = work / f"{name}.cab"
    cab.unlink(missing_ok=True)
    subprocess.run(["gcab", "-c", *(["-z"] if compress else []), str(cab), f"{name}.stl"], cwd=work, check=True)
    if authenticode:
        signed = work / f"{name}-signed.cab"
        signed.unlink(missing_ok=True)
        key = work / "signer.key"
        key.write_bytes(_pem_key(signer.key))
        subprocess.run(["osslsigncode", "sign", "-certs", str(signer.cert_path), "-key", str(key),
                        "-in", str(cab), "-out", str(signed)], check=True, capture_output=True)
        cab = signed
    return cab.read_bytes()
