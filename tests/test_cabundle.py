"""CA bundles with certificates cryptography warns about, or cannot load.

Debian's and Ubuntu's system bundle holds roots with serial number 0 (Go Daddy, Starfield, ...):
cryptography loads them with a CryptographyDeprecationWarning saying a future release will refuse
them. Given as `tls.ca_file`, such a certificate is skipped now with one warning through our
logging (JSON too), naming the file and the certificate; a certificate that does not load costs only
itself, not the bundle. The serial-0 root here is made by rewriting a lab root's serial in DER,
as no certificate builder will write serial 0.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lab.servers import free_port
from support import lab_config

from exporter.config import ConfigError, load_config
from exporter.probes._tls import TrustStore

REPO = Path(__file__).parent.parent
GARBAGE = b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def serial_zero_root(common_name: str) -> tuple[bytes, bytes]:
    """A self-signed CA certificate with serial number 0 (PEM) and its SHA-256 over DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    version_and_serial = b"\xa0\x03\x02\x01\x02\x02\x01\x01"  # [0] v3, INTEGER 1
    assert der.count(version_and_serial) == 1
    der = der.replace(version_and_serial, b"\xa0\x03\x02\x01\x02\x02\x01\x00")
    body = __import__("base64").encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n", hashlib.sha256(der).digest()


@pytest.fixture
def bundle(tmp_path, lab_pki):
    def write(*, garbage: bool) -> tuple[Path, bytes]:
        zero, fingerprint = serial_zero_root("Zero Serial Test Root")
        path = tmp_path / ("with-garbage.pem" if garbage else "bundle.pem")
        path.write_bytes(lab_pki.root.pem + zero + (GARBAGE if garbage else b""))
        return path, fingerprint

    return write


def run_exporter_briefly(config: Path) -> str:
    """The real process with JSON logs: start, be reloaded once (same files), stop; its stderr."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "exporter", "--config.file", str(config), "--log.format",
                                "json", "--web.listen-address", f"127.0.0.1:{port}"],
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                __import__("time").sleep(0.1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
        assert urllib.request.urlopen(request, timeout=20).status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    return stderr


@pytest.mark.parametrize("garbage", [False, True], ids=["serial-0", "serial-0-and-garbage"])
def test_skipped_certificates_are_logged_once_as_json(tmp_path, bundle, garbage):
    path, _ = bundle(garbage=garbage)
    config = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]}, ca_file=path,
                        connect_to=["::127.0.0.1:9"])
    check = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check",
                            "--log.format", "json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert check.returncode == 0, check.stderr
    for stderr in (check.stderr, run_exporter_briefly(config)):
        records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
        about_zero = [r for r in records if "Zero Serial Test Root" in r["msg"]]
        assert len(about_zero) == 1, stderr
        assert about_zero[0]["level"] == "warn"
        assert about_zero[0]["msg"].startswith(f"tls.ca_file: {path}: certificate 2 of ")
        assert "serial 0) skipped" in about_zero[0]["msg"] and "future release of cryptography" in about_zero[0]["msg"]
        about_garbage = [r for r in records if "certificate 3 of 3" in r["msg"]]
        assert len(about_garbage) == (1 if garbage else 0), stderr
        if garbage:
            assert "does not load" in about_garbage[0]["msg"]


def test_trust_store_keeps_the_rest_of_the_bundle(tmp_path, bundle, lab_pki, caplog):
    path, zero = bundle(garbage=True)
    config = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]}, ca_file=path)
    with caplog.at_level(logging.WARNING, logger="exporter"):
        load_config(config)
        stores = [TrustStore(ca_file=str(path), system=False) for _ in range(2)]
    fingerprints = {cert.fingerprint(hashes.SHA256()) for cert in stores[0].anchors}
    assert lab_pki.root.cert.fingerprint(hashes.SHA256()) in fingerprints
    assert zero not in fingerprints
    assert len([r for r in caplog.records if "Zero Serial Test Root" in r.getMessage()]) == 1


def test_a_bundle_with_nothing_usable_is_a_config_error(tmp_path):
    path = tmp_path / "broken.pem"
    path.write_bytes(GARBAGE)
    config = tmp_path / "config.yml"
    config.write_text(f"tls:\n  ca_file: {path}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).startswith(f"{config}: tls.ca_file: {path} holds no usable PEM certificate: "
                                      "certificate 1 of 1 (line 1) does not load")
