"""The CRL cache against lab Files servers: revalidation, changes, formats, judging, AIA."""

from __future__ import annotations

import asyncio
import datetime as dt
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from lab.pki import LeafBundle, _aia, _aki
from lab.servers import Files, Ok, refused_address
from support import lab_config, outcome_for, root_fingerprint

import exporter.crl
import exporter.probes.fetch
from exporter.config import ConnectTo, Limits, Route
from exporter.crl import CRLCache

SYSTEM = Route("system")


def _path(url: str) -> str:
    return urlsplit(url).path


def _cache_for(server, host: str, *, limits: Limits | None = None) -> CRLCache:
    return CRLCache(limits or Limits(), (ConnectTo(host, 80, server.ip, server.port),))


@pytest.fixture
def issuing_crl(lab_pki, lab_servers):
    """crl.microsoft.com serving the issuing CA's CRL; returns (server, url)."""
    url = lab_pki.issuing.crl_url
    server = lab_servers.serve(Files({_path(url): lab_pki.make_crl("issuing")}), port=80)
    return server, url


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------ fetching and revalidation


def test_second_check_within_recheck_window_costs_nothing(issuing_crl):
    server, url = issuing_crl
    cache = _cache_for(server, "crl.microsoft.com")

    async def twice():
        return await cache.check(url, SYSTEM, 3), await cache.check(url, SYSTEM, 3)

    first, second = run(twice())
    assert first.reachable and first.http_status == 200 and first.document is not None
    assert second is first
    assert server.file_requests(_path(url)) == 1


def test_conditional_revalidation_gets_304(issuing_crl, monkeypatch):
    monkeypatch.setattr(exporter.crl, "RECHECK_SECONDS", 0)
    server, url = issuing_crl
    cache = _cache_for(server, "crl.microsoft.com")

    async def twice():
        return await cache.check(url, SYSTEM, 3), await cache.check(url, SYSTEM, 3)

    first, second = run(twice())
    assert second.not_modified and second.http_status == 304 and second.reachable
    assert second.document is first.document  # the parsed CRL is reused, not re-downloaded
    assert server.file_requests(_path(url)) == 2
    assert server.not_modified(_path(url)) == 1
    sent = server.requests[-1]
    assert sent.header("If-None-Match") == first.document.validators.etag
    assert sent.header("If-Modified-Since") == first.document.validators.last_modified


def test_changed_crl_is_downloaded_again(lab_pki, issuing_crl, monkeypatch):
    monkeypatch.setattr(exporter.crl, "RECHECK_SECONDS", 0)
    server, url = issuing_crl
    cache = _cache_for(server, "crl.microsoft.com")
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    issuer = lab_pki.issuing.cert

    async def scenario():
        before = await cache.check(url, SYSTEM, 3)
        server.set_file(_path(url), lab_pki.make_crl("issuing", revoked_serials=[leaf.serial], crl_number=2))
        after = await cache.check(url, SYSTEM, 3)
        return before, after

    before, after = run(scenario())
    assert not after.not_modified and after.http_status == 200
    assert after.document.digest != before.document.digest
    assert cache.judge(leaf.cert, issuer, before).status == "good"
    assert cache.judge(leaf.cert, issuer, after).status == "revoked"
    assert server.not_modified(_path(url)) == 0


def test_the_cached_copys_verdict_follows_a_new_crl_and_its_next_update(lab_pki, issuing_crl, monkeypatch):
    """cached_good_until (the endpoint cache model) remembers its verdict per certificate and CRL
    body: a new body that revokes the certificate, or the body's nextUpdate passing, ends it."""
    monkeypatch.setattr(exporter.crl, "RECHECK_SECONDS", 0)
    server, url = issuing_crl
    cache = _cache_for(server, "crl.microsoft.com")
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    issuer = lab_pki.issuing.cert
    first = run(cache.check(url, SYSTEM, 3))
    now = first.checked_at
    until = cache.cached_good_until(leaf.cert, issuer, url, now)
    assert until == first.document.next_update > now
    assert cache.cached_good_until(leaf.cert, issuer, url, now + 1) == until  # remembered
    assert cache.cached_good_until(leaf.cert, issuer, url, until + 1) is None  # stale by then
    server.set_file(_path(url), lab_pki.make_crl("issuing", revoked_serials=[leaf.serial], crl_number=2))
    run(cache.check(url, SYSTEM, 3))
    assert cache.cached_good_until(leaf.cert, issuer, url, now) is None


def test_concurrent_checks_share_one_request(issuing_crl):
    server, url = issuing_crl
    cache = _cache_for(server, "crl.microsoft.com")

    async def many():
        return await asyncio.gather(*(cache.check(url, SYSTEM, 3) for _ in range(7)))

    results = run(many())
    assert all(r is results[0] for r in results)
    assert server.file_requests(_path(url)) == 1


def test_unreachable_point(lab_pki):
    ip, port = refused_address()
    cache = CRLCache(Limits(), (ConnectTo("crl.microsoft.com", 80, ip, port),))
    check = run(cache.check(lab_pki.issuing.crl_url, SYSTEM, 3))
    assert not check.reachable and "connect_refused" in check.error
    status = cache.judge(lab_pki.issue_leaf("wdcp.microsoft.com").cert, lab_pki.issuing.cert, check)
    assert status.status == "unreachable"


def test_http_error_status_is_unreachable(lab_pki, lab_servers):
    server = lab_servers.serve(Files({}), port=80)  # 404 for everything
    cache = _cache_for(server, "crl.microsoft.com")
    check = run(cache.check(lab_pki.issuing.crl_url, SYSTEM, 3))
    assert not check.reachable and check.http_status == 404


def test_crl_behind_a_redirect_is_followed(lab_pki, lab_servers):
    """A distribution point that redirects to a mirror (CDNs do): the CRL there counts."""
    from lab.servers import Redirect

    url = lab_pki.issuing.crl_url
    mirror = lab_servers.serve(Files({"/mirror/issuing.crl": lab_pki.make_crl("issuing")}), port=80)
    point = lab_servers.serve(Redirect("http://cdn.example.net/mirror/issuing.crl", status=301), port=80)
    cache = CRLCache(Limits(), (ConnectTo("crl.microsoft.com", 80, point.ip, point.port),
                                ConnectTo("cdn.example.net", 80, mirror.ip, mirror.port)))
    check = run(cache.check(url, SYSTEM, 3))
    assert check.reachable and check.http_status == 200, check.error
    assert check.document is not None
    assert mirror.file_requests("/mirror/issuing.crl") == 1 and point.connections == 1
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    assert cache.judge(leaf.cert, lab_pki.issuing.cert, check).status == "good"


def test_redirects_are_bounded(lab_pki, lab_servers):
    from lab.servers import Redirect

    url = lab_pki.issuing.crl_url
    loop = lab_servers.serve(Redirect(url), port=80)  # redirects to itself, forever
    cache = _cache_for(loop, "crl.microsoft.com")
    check = run(cache.check(url, SYSTEM, 3))
    assert not check.reachable and check.http_status == 302
    assert loop.connections == exporter.probes.fetch.CRYPTNET_REDIRECTS + 1


# ------------------------------------------------------------------ formats and judging


@pytest.mark.parametrize("fmt", ["der", "pem"])
def test_der_and_pem_both_parse(lab_pki, lab_servers, fmt):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    url = lab_pki.issuing.crl_url
    server = lab_servers.serve(Files({_path(url): lab_pki.make_crl("issuing", revoked_serials=[leaf.serial],
                                                                   fmt=fmt)}), port=80)
    cache = _cache_for(server, "crl.microsoft.com")
    check = run(cache.check(url, SYSTEM, 3))
    assert check.document is not None, check.error
    assert cache.judge(leaf.cert, lab_pki.issuing.cert, check).status == "revoked"
    assert cache.document_valid(url, check.checked_at)


def test_issuer_mismatch_is_invalid(lab_pki, lab_servers):
    url = lab_pki.issuing.crl_url
    server = lab_servers.serve(Files({_path(url): lab_pki.make_crl("root")}), port=80)
    cache = _cache_for(server, "crl.microsoft.com")
    check = run(cache.check(url, SYSTEM, 3))
    status = cache.judge(lab_pki.issue_leaf("wdcp.microsoft.com").cert, lab_pki.issuing.cert, check)
    assert status.status == "invalid" and "not the certificate's issuer" in status.detail


def test_signature_is_checked_against_the_issuer(lab_pki, unknown_pki, lab_servers):
    url = lab_pki.issuing.crl_url
    server = lab_servers.serve(Files({_path(url): lab_pki.make_crl("issuing")}), port=80)
    cache = _cache_for(server, "crl.microsoft.com")
    check = run(cache.check(url, SYSTEM, 3))
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    assert cache.judge(leaf.cert, lab_pki.issuing.cert, check).status == "good"
    # Same CRL, judged with a certificate that carries a different key: the signature fails.
    impostor = _reissue_with_key(lab_pki.issuing.cert, unknown_pki.issuing.key)
    status = cache.judge(leaf.cert, impostor, check)
    assert status.status == "invalid" and "signature" in status.detail
    # Unknown issuer: cannot check, so cannot vouch.
    assert cache.judge(leaf.cert, None, check).status == "invalid"


def test_bad_signature_makes_the_document_invalid(lab_pki, lab_servers):
    url = lab_pki.issuing.crl_url
    server = lab_servers.serve(Files({_path(url): lab_pki.make_crl("issuing", sign_with_wrong_key=True)}), port=80)
    cache = _cache_for(server, "crl.microsoft.com")
    check = run(cache.check(url, SYSTEM, 3))
    status = cache.judge(lab_pki.issue_leaf("wdcp.microsoft.com").cert, lab_pki.issuing.cert, check)
    assert status.status == "invalid"
    assert not cache.document_valid(url, check.checked_at)


def test_stale_crl(lab_pki, lab_servers):
    url = lab_pki.issuing.crl_url
    stale = lab_pki.make_crl("issuing", next_update=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    server = lab_servers.serve(Files({_path(url): stale}), port=80)
    cache = _cache_for(server, "crl.microsoft.com")
    check = run(cache.check(url, SYSTEM, 3))
    assert cache.judge(lab_pki.issue_leaf("wdcp.microsoft.com").cert, lab_pki.issuing.cert, check).status == "stale"
    assert not cache.document_valid(url, check.checked_at)


def test_garbage_after_a_good_crl_is_invalid(lab_pki, issuing_crl, monkeypatch):
    monkeypatch.setattr(exporter.crl, "RECHECK_SECONDS", 0)
    server, url = issuing_crl
    cache = _cache_for(server, "crl.microsoft.com")

    async def scenario():
        await cache.check(url, SYSTEM, 3)
        server.set_file(_path(url), b"<html>captive portal</html>")
        return await cache.check(url, SYSTEM, 3)

    check = run(scenario())
    assert check.invalid_body and "not a CRL" in check.error
    assert cache.judge(lab_pki.issue_leaf("wdcp.microsoft.com").cert, lab_pki.issuing.cert, check).status == "invalid"
    assert not cache.document_valid(url, check.checked_at)


# ------------------------------------------------------------------ framing and the cap


async def _raw_server(payload: bytes):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(payload)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _chunked(body: bytes, size: int = 300) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("cap, expect", [(64 * 1024, "document"), (1024, "too_large")])
def test_chunked_crl_is_dechunked_and_capped(lab_pki, cap, expect):
    body = lab_pki.make_crl("issuing", revoked_serials=range(5000, 5060))
    assert len(body) > 1024

    async def scenario():
        server = await _raw_server(_chunked(body))
        port = server.sockets[0].getsockname()[1]
        cache = CRLCache(Limits(crl_bytes=cap), (ConnectTo("crl.microsoft.com", 80, "127.0.0.1", port),))
        async with server:
            return await cache.check(lab_pki.issuing.crl_url, SYSTEM, 3)

    check = run(scenario())
    if expect == "document":
        assert check.document is not None and check.document.size == len(body), check.error
    else:
        assert check.too_large and check.invalid_body and "limits.crl_bytes" in check.error


def test_body_to_the_close_over_the_cap(lab_pki):
    payload = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"\x30" * 5000

    async def scenario():
        server = await _raw_server(payload)
        port = server.sockets[0].getsockname()[1]
        cache = CRLCache(Limits(crl_bytes=1024), (ConnectTo("crl.microsoft.com", 80, "127.0.0.1", port),))
        async with server:
            return await cache.check(lab_pki.issuing.crl_url, SYSTEM, 3)

    assert run(scenario()).too_large


# ------------------------------------------------------------------ through the assessor


def _leaf_with_cdps(lab_pki, hostname: str, cdps: list[str]) -> LeafBundle:
    """A leaf of the issuing CA with several CRL distribution points (lab_pki issues one)."""
    issuing = lab_pki.issuing
    key = issuing.key  # any key will do for a lab leaf
    now = dt.datetime.now(dt.UTC)
    serial = lab_pki.next_serial()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, hostname)]))
        .issuer_name(issuing.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_aki(issuing.cert), critical=False)
        .add_extension(x509.CRLDistributionPoints([
            x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None) for u in cdps
        ]), critical=False)
        .add_extension(_aia(issuing.cert_url), critical=False)
        .sign(issuing.key, hashes.SHA256())
    )
    directory = lab_pki.directory
    stem = f"multi-cdp-{serial}"
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / f"{stem}.pem").write_bytes(pem)
    (directory / f"{stem}.chain.pem").write_bytes(pem + issuing.pem)
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return LeafBundle(cert, key, directory / f"{stem}.pem", directory / f"{stem}.key",
                      directory / f"{stem}.chain.pem", serial, (hostname,), issuing)


def _maps_config(tmp_path, lab_pki, connect_to):
    group = {"targets": ["https://wdcp.microsoft.com/"], "expected_roots": [root_fingerprint(lab_pki)]}
    return lab_config(tmp_path, {"maps": group}, connect_to=connect_to, ca_file=lab_pki.ca_bundle_path)


def _crl_servers(lab_pki, lab_servers):
    files = lab_pki.published_files()
    www = lab_servers.serve(Files({_path(u): d for u, d in files.items() if "www.microsoft.com" in u}), port=80)
    crl = lab_servers.serve(Files({_path(lab_pki.issuing.crl_url): files[lab_pki.issuing.crl_url]}), port=80)
    return [www.connect_to("www.microsoft.com", 80), crl.connect_to("crl.microsoft.com", 80)]


def test_second_distribution_point_saves_the_day(tmp_path, lab_pki, lab_servers):
    dead = "http://crl1.microsoft.com/pki/crl/products/Dead.crl"
    leaf = _leaf_with_cdps(lab_pki, "wdcp.microsoft.com", [dead, lab_pki.issuing.crl_url])
    maps = lab_servers.serve(Ok(), port=443, tls=leaf)
    ip, port = refused_address()
    connect_to = [maps.connect_to("wdcp.microsoft.com", 443), f"crl1.microsoft.com:80:{ip}:{port}"]
    outcome = outcome_for(_maps_config(tmp_path, lab_pki, connect_to + _crl_servers(lab_pki, lab_servers)),
                          "https://wdcp.microsoft.com/")
    assert outcome.probe.success, outcome.probe.detail
    assert outcome.maps.valid, outcome.maps
    assert dead in outcome.crl_urls


def test_all_distribution_points_dead_is_unreachable(tmp_path, lab_pki, lab_servers):
    leaf = _leaf_with_cdps(lab_pki, "wdcp.microsoft.com", ["http://crl1.microsoft.com/a.crl",
                                                           "http://crl2.microsoft.com/b.crl"])
    maps = lab_servers.serve(Ok(), port=443, tls=leaf)
    rules = [maps.connect_to("wdcp.microsoft.com", 443)]
    for host in ("crl1.microsoft.com", "crl2.microsoft.com"):
        ip, port = refused_address()
        rules.append(f"{host}:80:{ip}:{port}")
    outcome = outcome_for(_maps_config(tmp_path, lab_pki, rules + _crl_servers(lab_pki, lab_servers)),
                          "https://wdcp.microsoft.com/")
    assert not outcome.maps.valid and outcome.maps.reason == "crl_unreachable"


def test_certificate_without_cdp_or_ocsp_fails_as_windows_does(tmp_path, lab_pki, lab_servers):
    """No revocation source at all: Windows' chain engine reports the revocation status unknown
    (CRYPT_E_NO_REVOCATION_CHECK) and WinHTTP, asked to check revocation, fails the request
    (ERROR_WINHTTP_SECURE_FAILURE with CERT_REV_FAILED). See docs/maps-validation.md."""
    from exporter.assess import Assessor
    from exporter.config import load_config
    from exporter.probes import ProbeEnv, run_probe

    leaf = lab_pki.issue_leaf("wdcp.microsoft.com", cdp_url=None)
    maps = lab_servers.serve(Ok(), port=443, tls=leaf)
    config = load_config(_maps_config(tmp_path, lab_pki, [maps.connect_to("wdcp.microsoft.com", 443)]
                                      + _crl_servers(lab_pki, lab_servers)))
    job = config.jobs()[0]

    async def scenario():
        assessor = Assessor(config)
        probe = await run_probe(job, ProbeEnv.from_config(config))
        revocation = await assessor.check_revocation(job, probe.tls.verified_path)
        return revocation, await assessor.assess(job, probe)

    revocation, outcome = run(scenario())
    statuses = [s.status for _, s in revocation.statuses]
    assert statuses == ["no_info", "good"]  # leaf: nothing; issuing CA: the root's CRL
    assert outcome.probe.success and outcome.revoked is False
    assert not outcome.maps.valid
    assert (outcome.maps.reason, outcome.maps.hresult, outcome.maps.cause) == (
        "revocation_info_missing", "0x80072F8F", "certificate_invalid")
    assert outcome.revocation_valid_until is None  # no cache can help such an endpoint


def _reissue_with_key(cert: x509.Certificate, key) -> x509.Certificate:
    """The same subject as `cert`, but another public key (self-signed; only the key matters)."""
    return (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
