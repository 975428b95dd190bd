"""Self-tests for the test lab: each proves one lab part works through real sockets."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from lab.pki import LabPKI
from lab.servers import (
    Delay,
    EndlessBody,
    EndlessHeaders,
    Files,
    Garbage,
    LabServers,
    NeverAnswer,
    Ok,
    ResetMidHandshake,
    ResetOnAccept,
    Slowloris,
    Truncated,
    refused_address,
)
from lab.squid import SquidFactory
from support import recv_head

# Each test runs over both probe transports (conftest.probe_transport).
pytestmark = pytest.mark.usefixtures("probe_transport")

HOST = "wdcp.microsoft.com"


def _client_context(pki: LabPKI) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_bundle_path))


def _https_get(address: tuple[str, int], ctx: ssl.SSLContext, host: str = HOST) -> bytes:
    with socket.create_connection(address, timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /probe HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return _read_all(tls)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- PKI


def test_pki_shape(lab_pki: LabPKI) -> None:
    leaf = lab_pki.issue_leaf([HOST, "unitedstates.cp.wd.microsoft.com"])
    issuing = lab_pki.issuing.cert
    assert "CN=Lab Secure Server CA 2024" in issuing.subject.rfc4514_string()
    assert "CN=Lab Root Certificate Authority 2011" in lab_pki.root.cert.subject.rfc4514_string()
    cdp = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://www.microsoft.com/pkiops/crl/LabRoot2011.crl"
    aia = leaf.cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location.value == "http://www.microsoft.com/pki/certs/LabSecureServerCA2024.crt"
    assert leaf.chain_path.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert x509.load_der_x509_certificate(lab_pki.issuing_der_path.read_bytes()) == issuing

    # The chain builds to the lab root with cryptography's own verifier.
    verifier = PolicyBuilder().store(Store([lab_pki.root.cert])).build_server_verifier(x509.DNSName(HOST))
    path = verifier.verify(leaf.cert, [issuing])
    assert [c.subject for c in path] == [leaf.cert.subject, issuing.subject, lab_pki.root.cert.subject]

    inspected = lab_pki.issue_inspection_leaf(HOST)
    with pytest.raises(x509.ExtensionNotFound):
        inspected.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert inspected.cert.issuer == lab_pki.inspection.cert.subject


def test_crl_lists_revoked_serial_and_bad_signature_fails(lab_pki: LabPKI) -> None:
    leaf = lab_pki.issue_leaf(HOST)
    issuer_key = lab_pki.issuing.cert.public_key()
    crl = x509.load_der_x509_crl(lab_pki.make_crl("issuing", revoked_serials=[leaf.serial]))
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial) is not None
    assert crl.is_signature_valid(issuer_key)  # type: ignore[arg-type]

    bad = x509.load_der_x509_crl(lab_pki.make_crl("issuing", sign_with_wrong_key=True))
    assert not bad.is_signature_valid(issuer_key)  # type: ignore[arg-type]

    stale = x509.load_pem_x509_crl(
        lab_pki.make_crl("root", next_update=dt.datetime.now(dt.UTC) - dt.timedelta(days=1), fmt="pem")
    )
    assert stale.next_update_utc is not None and stale.next_update_utc < dt.datetime.now(dt.UTC)
    assert stale.is_signature_valid(lab_pki.root.cert.public_key())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- servers


def test_tls_server_verified_handshake_with_sni(lab_pki: LabPKI, lab_servers: LabServers) -> None:
    leaf = lab_pki.issue_leaf(HOST)
    srv = lab_servers.serve(Ok(), port=443, tls=leaf)  # a real port 443 on its own loopback address
    assert srv.port == 443 and srv.ip.startswith("127.")
    ctx = _client_context(lab_pki)
    answer = _https_get(srv.address, ctx)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert srv.sni_names == [HOST]
    assert srv.request_lines == ["GET /probe HTTP/1.1"] and srv.hosts == [HOST]
    assert srv.connect_to(HOST) == f"{HOST}:443:{srv.ip}:443"

    # No resumption even when the client offers its previous TLS 1.2 session.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    session = None
    for _ in range(2):
        with socket.create_connection(srv.address, timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=HOST, session=session) as tls:
                assert not tls.session_reused
                session = tls.session


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda pki, other: other.issue_leaf(HOST), "unable to get local issuer certificate"),
        (lambda pki, other: pki.issue_expired(HOST), "certificate has expired"),
        (lambda pki, other: pki.issue_leaf("other.microsoft.com"), "Hostname mismatch"),
        (lambda pki, other: pki.issue_inspection_leaf(HOST), "self-signed certificate in certificate chain"),
    ],
    ids=["unknown-root", "expired", "wrong-name", "inspection"],
)
def test_tls_server_bad_leaves_fail_verification(
    lab_pki: LabPKI, unknown_pki: LabPKI, lab_servers: LabServers, make: object, message: str
) -> None:
    srv = lab_servers.serve(Ok(), tls=make(lab_pki, unknown_pki))  # type: ignore[operator]
    with pytest.raises(ssl.SSLCertVerificationError, match=message):
        _https_get(srv.address, _client_context(lab_pki))


def test_files_server_conditional_requests(lab_pki: LabPKI, lab_servers: LabServers) -> None:
    path = "/pki/crl/products/LabSecureServerCA2024.crl"
    srv = lab_servers.serve(Files({path: lab_pki.make_crl()}))
    first = urllib.request.urlopen(srv.url + path, timeout=5)
    assert first.status == 200 and first.headers["Content-Type"] == "application/pkix-crl"
    x509.load_der_x509_crl(first.read())
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]

    for header in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(srv.url + path, headers=header), timeout=5)
        assert caught.value.code == 304
    assert srv.file_requests(path) == 3 and srv.not_modified(path) == 2

    # A new CRL gets a new ETag: the old validator no longer matches.
    srv.set_file(path, lab_pki.make_crl(crl_number=2))
    again = urllib.request.urlopen(urllib.request.Request(srv.url + path, headers={"If-None-Match": etag}), timeout=5)
    assert again.status == 200 and again.headers["ETag"] != etag


def test_misbehaving_servers(lab_pki: LabPKI, lab_servers: LabServers) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(refused_address(), timeout=2)

    srv = lab_servers.serve(ResetOnAccept())
    with pytest.raises(ConnectionResetError):
        with socket.create_connection(srv.address, timeout=2) as s:
            s.sendall(request)
            s.recv(10)

    srv = lab_servers.serve(ResetMidHandshake(), tls=lab_pki.issue_leaf(HOST))
    with pytest.raises(ConnectionResetError):
        with socket.create_connection(srv.address, timeout=2) as s:
            _client_context(lab_pki).wrap_socket(s, server_hostname=HOST)

    srv = lab_servers.serve(Truncated())
    with socket.create_connection(srv.address, timeout=2) as s:
        s.sendall(request)
        assert _read_all(s) == b"HTTP/1.1 20"

    srv = lab_servers.serve(Garbage(size=64))
    with socket.create_connection(srv.address, timeout=2) as s:
        s.sendall(request)
        data = _read_all(s)
        assert len(data) == 64 and not data.startswith(b"HTTP")

    srv = lab_servers.serve(NeverAnswer(), tls=lab_pki.issue_leaf(HOST))
    with socket.create_connection(srv.address, timeout=0.3) as s:
        with pytest.raises(TimeoutError):
            _client_context(lab_pki).wrap_socket(s, server_hostname=HOST)
    assert srv.connections == 1

    srv = lab_servers.serve(Delay(0.3))
    started = time.monotonic()
    with socket.create_connection(srv.address, timeout=2) as s:
        s.sendall(request)
        assert _read_all(s).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started >= 0.3


def test_slow_and_endless_servers(lab_servers: LabServers) -> None:
    request = b"GET /big.crl HTTP/1.1\r\nHost: x\r\n\r\n"

    srv = lab_servers.serve(Slowloris(interval=0.1))
    with socket.create_connection(srv.address, timeout=2) as s:
        s.sendall(request)
        started = time.monotonic()
        got = b"".join(s.recv(10) for _ in range(3))
        assert got == b"HTT" and time.monotonic() - started >= 0.15  # one byte per interval

    for behaviour, marker in ((EndlessHeaders(), b"X-Lab-Filler-"), (EndlessBody(), b"Transfer-Encoding: chunked")):
        srv = lab_servers.serve(behaviour)
        with socket.create_connection(srv.address, timeout=2) as s:
            s.sendall(request)
            received = b""
            while len(received) < 20_000:  # past common header limits (8 KiB), and still going
                received += s.recv(65536)
            assert marker in received

    srv = lab_servers.serve(Files({"/big.crl": b"c" * 3000}, throttle={"/big.crl": 10_000}))
    started = time.monotonic()
    with socket.create_connection(srv.address, timeout=2) as s:
        s.sendall(request)
        assert _read_all(s).endswith(b"c" * 3000)
    assert time.monotonic() - started >= 0.25  # 3000 bytes at 10 kB/s, in 0.1 s slices


# ----------------------------------------------------------------------------- squid


def _proxy_exchange(proxy: tuple[str, int], head: str) -> tuple[int, dict[str, str], socket.socket]:
    """Send one request head to the proxy; return status, headers and the still-open socket."""
    sock = socket.create_connection(proxy, timeout=5)
    sock.sendall(head.encode())
    lines = recv_head(sock).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, sock


@pytest.mark.squid
def test_squid_connect_deny_and_plain_forwarding(lab_pki: LabPKI, lab_servers: LabServers, squid_factory: SquidFactory) -> None:
    ip = lab_servers.alloc_ip()
    https = lab_servers.serve(Ok(), ip=ip, port=443, tls=lab_pki.issue_leaf(HOST))
    crl_path = "/pki/crl/products/LabSecureServerCA2024.crl"
    http = lab_servers.serve(Files({crl_path: lab_pki.make_crl()}), ip=ip, port=80)
    proxy = squid_factory({HOST: ip, "crl.microsoft.com": ip}, deny_domains=["blocked.microsoft.com"])

    # CONNECT to a hosts_file name, then a verified TLS handshake through the tunnel.
    status, _, sock = _proxy_exchange(proxy.address, f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n")
    assert status == 200
    with _client_context(lab_pki).wrap_socket(sock, server_hostname=HOST) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert _read_all(tls).startswith(b"HTTP/1.1 200")
    assert https.sni_names == [HOST]

    # Denied domain: 403 to CONNECT, and X-Squid-Error on a plain request.
    blocked = "blocked.microsoft.com"
    status, _, sock = _proxy_exchange(proxy.address, f"CONNECT {blocked}:443 HTTP/1.1\r\nHost: {blocked}:443\r\n\r\n")
    sock.close()
    assert status == 403
    status, headers, sock = _proxy_exchange(proxy.address, f"GET http://{blocked}/ HTTP/1.1\r\nHost: {blocked}\r\n\r\n")
    sock.close()
    assert status == 403 and headers["x-squid-error"].startswith("ERR_ACCESS_DENIED")

    # CONNECT to anything but 443 is refused by policy.
    status, _, sock = _proxy_exchange(proxy.address, f"CONNECT {HOST}:80 HTTP/1.1\r\nHost: {HOST}:80\r\n\r\n")
    sock.close()
    assert status == 403

    # Absolute-URI GET (a CRL fetch through the proxy) reaches the port-80 lab server.
    status, headers, sock = _proxy_exchange(
        proxy.address, f"GET http://crl.microsoft.com{crl_path} HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n"
    )
    sock.close()
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    assert http.hosts == ["crl.microsoft.com"] and http.file_requests(crl_path) == 1

    log = "\n".join(proxy.access_log_lines())
    assert "TCP_TUNNEL/200" in log and f"CONNECT {HOST}:443" in log and "TCP_DENIED/403" in log


@pytest.mark.squid
def test_squid_basic_auth(lab_pki: LabPKI, lab_servers: LabServers, squid_factory: SquidFactory) -> None:
    srv = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf(HOST))
    proxy = squid_factory({HOST: srv.ip}, auth=("alice", "s3cret"))
    connect = f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n"

    status, headers, sock = _proxy_exchange(proxy.address, connect + "\r\n")
    sock.close()
    assert status == 407 and headers["proxy-authenticate"].startswith("Basic")

    wrong = base64.b64encode(b"alice:nope").decode()
    status, _, sock = _proxy_exchange(proxy.address, connect + f"Proxy-Authorization: Basic {wrong}\r\n\r\n")
    sock.close()
    assert status == 407

    good = base64.b64encode(b"alice:s3cret").decode()
    status, _, sock = _proxy_exchange(proxy.address, connect + f"Proxy-Authorization: Basic {good}\r\n\r\n")
    sock.close()
    assert status == 200
