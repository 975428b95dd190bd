"""CTL cabinets: what counts as the file CryptoAPI downloads, and what does not.

The cabinets are packed by Debian's gcab (and Authenticode-signed by osslsigncode), and
cabextract, an independent reader, confirms each one is a valid cabinet, so the parser is
judged against real files rather than its own idea of the format.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from exporter.cab import check_ctl_cabinet
from lab.ctl import make_ctl_cabinet, tools_available
from lab.pki import LabPKI

pytestmark = pytest.mark.skipif(not tools_available(), reason="gcab is not installed (tests/run.sh installs it)")


def _fp(cert) -> bytes:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return LabPKI.create(tmp_path_factory.mktemp("ctl-pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return LabPKI.create(tmp_path_factory.mktemp("ctl-other"), name="Unknown")


@pytest.mark.parametrize("compress", [True, False], ids=["mszip", "stored"])
@pytest.mark.parametrize("authenticode", [False, True], ids=["plain", "authenticode"])
def test_a_ctl_cabinet_signed_under_the_expected_root_passes(tmp_path, pki, compress, authenticode):
    body = make_ctl_cabinet(tmp_path, "authrootstl", pki.issuing, compress=compress, authenticode=authenticode)
    if shutil.which("cabextract"):  # an independent reader agrees it is a valid cabinet
        (tmp_path / "check.cab").write_bytes(body)
        tested = subprocess.run(["cabextract", "-t", str(tmp_path / "check.cab")], capture_output=True, text=True)
        assert tested.returncode == 0 and "All done, no errors" in tested.stdout, tested.stdout + tested.stderr
    result = check_ctl_cabinet(body, frozenset({_fp(pki.root.cert)}), [pki.root.cert])
    assert result.problem is None, result.problem
    assert result.files == ("authrootstl.stl",)
    assert result.signer_chain_verified is True


def test_a_ctl_signed_under_another_root_fails(tmp_path, pki, other):
    body = make_ctl_cabinet(tmp_path, "disallowedcertstl", other.issuing)
    result = check_ctl_cabinet(body, frozenset({_fp(pki.root.cert)}), [pki.root.cert, other.root.cert])
    assert result.problem == "disallowedcertstl.stl is not signed by a certificate of the expected roots"
    assert result.signer_chain_verified is False


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"<html><body>Access denied by policy</body></html>", "no MSCF signature"),
        (b"", "0 bytes, shorter than a cabinet header"),
        (b"MSCF" + b"\0" * 20, "24 bytes, shorter than a cabinet header"),
    ],
    ids=["proxy-error-page", "empty", "header-only"],
)
def test_what_is_not_a_cabinet_says_what_it_is(pki, body, problem):
    result = check_ctl_cabinet(body, frozenset({_fp(pki.root.cert)}), [pki.root.cert])
    assert result.problem == f"not a cabinet file: {problem}"


def test_a_truncated_cabinet_fails(tmp_path, pki):
    body = make_ctl_cabinet(tmp_path, "pinrulesstl", pki.issuing)
    result = check_ctl_cabinet(body[: len(body) // 2], frozenset({_fp(pki.root.cert)}), [pki.root.cert])
    assert result.problem.startswith("not a cabinet file: truncated: header says")


def test_corrupt_compressed_data_fails(tmp_path, pki):
    body = bytearray(make_ctl_cabinet(tmp_path, "authrootstl", pki.issuing))
    middle = len(body) - 40
    body[middle:middle + 8] = b"\xff" * 8
    result = check_ctl_cabinet(bytes(body), frozenset({_fp(pki.root.cert)}), [pki.root.cert])
    # Deflate may notice (corrupt data, wrong length) or decode garbage of the right length,
    # which is then no PKCS#7: either way the file is refused, never passed.
    assert result.problem is not None
    assert result.problem.startswith("not a cabinet file:") or result.problem.endswith("is not PKCS#7 signed data")


def test_a_cabinet_whose_file_is_not_pkcs7_fails(tmp_path, pki):
    work = tmp_path / "plain"
    work.mkdir()
    (work / "authroot.stl").write_bytes(b"not a signed list at all")
    subprocess.run(["gcab", "-c", "-z", "x.cab", "authroot.stl"], cwd=work, check=True)
    result = check_ctl_cabinet((work / "x.cab").read_bytes(), frozenset({_fp(pki.root.cert)}), [pki.root.cert])
    assert result.problem == "authroot.stl is not PKCS#7 signed data"


def test_a_list_under_a_microsoft_issuer_we_do_not_hold_passes_unverified(tmp_path):
    """Microsoft's CTL signers chain to Microsoft Root Certificate Authority 2010, which is not
    bundled: such a list must not fail (no page for a genuine file), but is not called verified."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from lab.pki import CA

    def name(cn: str, org: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def signer(org: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_key = ec.generate_private_key(ec.SECP256R1())  # the root we do not have
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name("Trust List Signer", org))
                .issuer_name(name("Root Certificate Authority 2010", org)).public_key(key.public_key())
                .serial_number(7).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .sign(issuer_key, hashes.SHA256()))
        path = tmp_path / f"{org[:4]}.pem"
        path.write_bytes(cert.public_bytes(Encoding.PEM))
        return CA("issuing", cert, key, path, path, path)

    expected = frozenset({b"\0" * 32})
    genuine = check_ctl_cabinet(make_ctl_cabinet(tmp_path, "authrootstl", signer("Microsoft Corporation")), expected, [])
    assert genuine.problem is None and genuine.signer_chain_verified is None
    foreign = check_ctl_cabinet(make_ctl_cabinet(tmp_path, "foreign", signer("Captive Portal Inc")), expected, [])
    assert foreign.problem == "foreign.stl is not signed by a certificate of the expected roots"
