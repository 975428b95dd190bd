"""Hostile and broken input never crashes the exporter.

Property-based fuzzing (hypothesis) of the parsers that see peer bytes (certificates, chains,
CRLs) and of the config loader, and adversarial peers and clients through real sockets: every
case ends in a documented reason or a clear ConfigError, while healthy targets keep being probed
and /metrics keeps answering.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lab.pki import LeafBundle
from lab.servers import (
    EndlessBody,
    EndlessHeaders,
    Garbage,
    NeverAnswer,
    Ok,
    ResetMidHandshake,
    ResetOnAccept,
    Slowloris,
    Truncated,
    refused_address,
)
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, lab_config, outcome_for

from exporter import config as config_module
from exporter.config import ConfigError, load_config, parse_config
from exporter.crl import _parse as parse_crl
from exporter.probes._http import Validators
from exporter.probes._tls import TrustStore
from exporter.reasons import Reason
from exporter.runtime import Exporter

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
REASONS = {str(r) for r in Reason}

# ------------------------------------------------------------------ certificates and chains

_TRUST: TrustStore | None = None
_SAMPLES: dict[str, bytes] = {}


def trust() -> TrustStore:
    global _TRUST
    if _TRUST is None:
        _TRUST = TrustStore()
    return _TRUST


@pytest.fixture(scope="module", autouse=True)
def real_samples(lab_pki):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    _SAMPLES["leaf"] = leaf.cert.public_bytes(serialization.Encoding.DER)
    _SAMPLES["issuing"] = lab_pki.issuing.der
    _SAMPLES["crl"] = lab_pki.make_crl("issuing", revoked_serials=range(1, 50))
    _SAMPLES["crl_pem"] = lab_pki.make_crl("issuing", fmt="pem")


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, byte in edits:
        buf[pos % len(buf)] = byte
    return bytes(buf[:cut] if cut is not None else buf)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
cuts = st.one_of(st.none(), st.integers(0, 2000))


def check_verdict(chain: list[bytes], hostname: str = "wdcp.microsoft.com") -> None:
    verdict = trust().verify(chain, hostname)
    assert verdict.reason is None or str(verdict.reason) in REASONS
    assert isinstance(verdict.error, str)


@FUZZ
@given(st.lists(st.binary(max_size=600), max_size=4), st.text(max_size=80))
@example([b""], "wdcp.microsoft.com")
@example([b"\x30\x82\xff\xff"], "")
@example([], "wdcp.microsoft.com")
def test_verify_survives_random_bytes(chain, hostname):
    check_verdict(chain, hostname or "x")
    for der in chain:
        assert trust().facts.get(der) is None or trust().facts.get(der).der == der


@FUZZ
@given(edits, cuts, edits, cuts, st.sampled_from(["wdcp.microsoft.com", "1.2.3.4", "::1", "-bad-.", "*.x"]))
def test_verify_survives_mutated_real_chains(e1, c1, e2, c2, hostname):
    leaf, issuing = mutate(_SAMPLES["leaf"], e1, c1), mutate(_SAMPLES["issuing"], e2, c2)
    check_verdict([leaf, issuing], hostname)
    check_verdict([issuing, leaf], hostname)
    facts = trust().facts.get(leaf)
    assert facts is None or facts.fingerprint_sha256


@FUZZ
@given(st.binary(max_size=3000))
def test_crl_parser_survives_random_bytes(body):
    document, error = parse_crl("http://crl.example/x.crl", body, Validators())
    assert (document is None) == bool(error)


@FUZZ
@given(edits, cuts, st.booleans(), st.one_of(st.none(), st.text(max_size=40)))
def test_crl_parser_survives_mutated_real_crls(e, c, pem, last_modified):
    body = mutate(_SAMPLES["crl_pem" if pem else "crl"], e, c)
    document, error = parse_crl("http://crl.example/x.crl", body, Validators.of('"etag"', last_modified))
    assert (document is None) == bool(error)
    if document is not None:
        assert document.size == len(body)


def absurd_leaf(pki, directory) -> LeafBundle:
    """Valid, but with a 10 KB subject and 1500 SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wdcp.microsoft.com")]
                        + [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{i:03d}" + "u" * 60)
                           for i in range(160)])
    names = [x509.DNSName("wdcp.microsoft.com")] + [x509.DNSName(f"h{i}.absurd.example") for i in range(1500)]
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(pki.issuing.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.issuing.cert.public_key()),
                           critical=False)
            .sign(pki.issuing.key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    paths = {name: directory / f"absurd.{name}" for name in ("pem", "key", "chain")}
    paths["pem"].write_bytes(pem)
    paths["chain"].write_bytes(pem + pki.issuing.pem)
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return LeafBundle(cert, key, paths["pem"], paths["key"], paths["chain"], cert.serial_number,
                      ("wdcp.microsoft.com",), pki.issuing)


def test_absurd_certificate_fields_are_reported_not_fatal(tmp_path, lab_pki, lab_servers):
    leaf = absurd_leaf(lab_pki, tmp_path)
    server = lab_servers.serve(Ok(), port=443, tls=leaf)
    url = "https://wdcp.microsoft.com/"
    path = lab_config(tmp_path, {"maps": [url]}, connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path, ssl_options=0)
    outcome = outcome_for(path, url)
    assert outcome.probe.success, outcome.probe.detail
    assert len(outcome.probe.tls.presented[0].subject) > 10_000
    # ...and it renders as a metric label
    exporter = Exporter(load_config(path))
    exporter.store.record(exporter.config.jobs()[0], outcome)
    text = generate_latest(exporter.collector).decode()
    assert "OU=159uuuu" in text or "159" + "u" * 60 in text


def test_endless_crl_is_capped(tmp_path, lab_pki, lab_servers):
    """A CRL distribution point that never stops sending is cut at limits.crl_bytes."""
    url = "https://wdcp.microsoft.com/"
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    endless = lab_servers.serve(EndlessBody(chunked=False), port=80)
    connect_to = [server.connect_to("wdcp.microsoft.com", 443), endless.connect_to("crl.microsoft.com", 80),
                  endless.connect_to("www.microsoft.com", 80)]
    path = lab_config(tmp_path, {"maps": {"targets": [url], "timeout": "10s", "interval": "60s"}},
                      connect_to=connect_to, ca_file=lab_pki.ca_bundle_path, ssl_options=1,
                      extra={"limits": {"crl_bytes": 1 << 20}})
    started = time.monotonic()
    outcome = outcome_for(path, url)
    assert time.monotonic() - started < 8
    assert outcome.probe.success
    assert outcome.maps is not None and not outcome.maps.valid
    assert outcome.maps.reason == "crl_invalid"
    assert f"larger than the cap of {1 << 20} bytes" in outcome.maps.detail


# ------------------------------------------------------------------ config files

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from(["30s", "0s", "1ms", "5m", "http://u:p@h:1", "http://[::1", "https://x/", "::1:2:", "defender",
                     "system", "", "\x00", "-1", "1e999", "~", "a" * 300]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4)),
    max_leaves=12,
)
group_names = st.one_of(st.text(max_size=12), st.sampled_from(["maps", "update", "crl", "new_group"]))
documents = st.one_of(
    values,
    st.dictionaries(st.sampled_from(sorted(config_module._TOP_KEYS)), values, max_size=3),
    st.builds(lambda k, v: {"groups": {"maps": {k: v}}}, st.sampled_from(sorted(config_module._GROUP_KEYS)), values),
    st.builds(lambda n, k, v: {"groups": {n: {"targets": ["https://x.example/"], k: v}}}, group_names,
              st.sampled_from(sorted(config_module._GROUP_KEYS)), values),
    st.builds(lambda n, v: {"groups": {n: v}}, group_names, values),
    st.builds(lambda n, v: {"routes": {n: v}}, st.one_of(st.text(max_size=10), st.integers()), values),
    st.builds(lambda v: {"routes": {"defender": {"proxy": v}}}, values),
    st.builds(lambda k, v: {"limits": {k: v}}, st.sampled_from(["header_bytes", "body_bytes", "crl_bytes"]), values),
    st.builds(lambda k, v: {"tls": {k: v}}, st.sampled_from(["ca_file", "ssl_options"]), values),
    st.builds(lambda v: {"connect_to": [v]}, values),
    st.builds(lambda v: {"groups": {"maps": {"targets": [v]}}}, values),
    st.builds(lambda v: {"groups": {"maps": {"targets": [{"url": v, "pattern": v}]}}}, values),
    st.builds(lambda v: {"groups": {"maps": {"expected_roots": [v]}}}, values),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(documents)
@example({"tls": {"ca_file": "/"}})
@example({"tls": {"ca_file": "a\x00b"}})
@example({"limits": {"crl_bytes": 1e999}})
@example({"interval": "99999999999999999999y"})
def test_every_wrong_value_is_a_config_error(document):
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError:
        return
    try:
        parse_config(text, "fuzz.yml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yml: ")


def test_non_string_group_name_is_a_config_error():
    with pytest.raises(ConfigError):
        parse_config("groups: {5: {targets: ['https://x.example/']}}", "fuzz.yml")


@FUZZ
@given(st.binary(max_size=400))
def test_config_file_of_random_bytes_is_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "random-config.yml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError:
        pass


# ------------------------------------------------------------------ hostile peers, live


HEALTHY = "https://healthy.wdcp.microsoft.com/"
HOSTILE = {
    # behaviour, TLS?, the reasons it may end in
    "never": (NeverAnswer(), False, {"timeout"}),
    "slowloris": (Slowloris(interval=0.3), True, {"timeout"}),
    "garbage": (Garbage(), True, {"http_error"}),
    "plaintext": (Garbage(before_tls=True), False, {"tls_handshake_error"}),
    "headers": (EndlessHeaders(), True, {"http_error"}),
    "body": (EndlessBody(), True, None),  # reached: the body is cut at the cap
    "reset": (ResetMidHandshake(), False, {"connection_reset"}),
    "rst": (ResetOnAccept(), False, {"connection_reset"}),
    "truncated": (Truncated(), True, {"http_error"}),
}
PROXIES = {
    "garbageproxy": (Garbage(), {"proxy_error"}),
    "endlessproxy": (EndlessHeaders(), {"proxy_error"}),
    "silentproxy": (NeverAnswer(), {"proxy_error", "timeout"}),
    "resetproxy": (ResetOnAccept(), {"proxy_error", "connection_reset"}),
}


def timed_scrape(port: int) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    elapsed = time.perf_counter() - started
    return elapsed, {(s.name, tuple(sorted(s.labels.items()))): s.value
                     for f in text_string_to_metric_families(text) for s in f.samples}


def reasons_by_target(samples: dict) -> dict[str, str]:
    out = {}
    for (name, labels), v in samples.items():
        if name == "defender_probe_failure_reason" and v == 1:
            d = dict(labels)
            out[(d["target"], d["route"])] = d["reason"]
    return out


def hostile_config(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("*.wdcp.microsoft.com")
    connect_to = []
    ok = lab_servers.serve(Ok(), port=443, tls=leaf)
    connect_to.append(ok.connect_to("healthy.wdcp.microsoft.com", 443))
    for name, (behaviour, tls, _) in HOSTILE.items():
        srv = lab_servers.serve(behaviour, port=443, tls=leaf if tls else None)
        connect_to.append(srv.connect_to(f"{name}.wdcp.microsoft.com", 443))
    ip, port = refused_address()
    connect_to += [f"crl.microsoft.com:80:{ip}:{port}", f"www.microsoft.com:80:{ip}:{port}"]
    routes = {}
    for name, (behaviour, _) in PROXIES.items():
        srv = lab_servers.serve(behaviour, port=0)
        routes[name] = f"http://{srv.ip}:{srv.port}"
    groups = {
        "hostile": {"targets": [HEALTHY] + [f"https://{n}.wdcp.microsoft.com/" for n in HOSTILE]},
        "proxied": {"targets": ["https://viaproxy.wdcp.microsoft.com/"], "route": list(PROXIES)},
    }
    return lab_config(tmp_path, groups, routes=routes, connect_to=connect_to, ca_file=lab_pki.ca_bundle_path,
                      ssl_options=0, interval="2s", timeout="1s")


def test_hostile_peers_end_in_documented_reasons_while_metrics_keep_answering(tmp_path, lab_pki, lab_servers):
    path = hostile_config(tmp_path, lab_pki, lab_servers)
    with ExporterThread(path) as exp:
        exp.wait_ready(timeout=15)
        slowest = 0.0
        healthy_runs = []
        deadline = time.time() + 5
        while time.time() < deadline:
            elapsed, samples = timed_scrape(exp.port)
            slowest = max(slowest, elapsed)
            healthy_runs.append(samples[("defender_probes_total", (("group", "hostile"), ("result", "success"),
                                                                    ("route", "defender"), ("target", HEALTHY)))])
            time.sleep(0.2)
        _, samples = timed_scrape(exp.port)
    assert slowest < 1.0, f"a scrape took {slowest:.2f} s"
    assert healthy_runs[-1] >= healthy_runs[0] + 2, "the healthy target stopped being probed"
    reasons = reasons_by_target(samples)
    assert (HEALTHY, "defender") not in reasons
    for name, (_, _, expected) in HOSTILE.items():
        got = reasons.get((f"https://{name}.wdcp.microsoft.com/", "defender"))
        if expected is None:
            assert got is None, name
        else:
            assert got in expected, (name, got)
    for route, (_, expected) in PROXIES.items():
        got = reasons.get(("https://viaproxy.wdcp.microsoft.com/", route))
        assert got in expected, (route, got)
    assert set(reasons.values()) <= REASONS


def test_hostile_clients_do_not_stop_the_web_server(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("healthy.wdcp.microsoft.com")
    ok = lab_servers.serve(Ok(), port=443, tls=leaf)
    path = lab_config(tmp_path, {"maps": [HEALTHY]}, connect_to=[ok.connect_to("healthy.wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path, ssl_options=0)
    with ExporterThread(path) as exp:
        exp.wait_ready()
        payloads = [
            b"\x00\xff garbage \r\n\r\n",
            b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + b"\r\n",
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nxx",
            b"GET /probe?target=%ff%fe%00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello to an HTTP port
        ]
        for payload in payloads:
            with socket.create_connection(("127.0.0.1", exp.port), timeout=5) as s:
                try:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    s.recv(4096)
                except OSError:
                    pass
        # fifty slow clients trickling a request one byte at a time
        stop = threading.Event()
        slow = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", exp.port), timeout=5)
            slow.append(s)

        def trickle():
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            i = 0
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(request[i % len(request):i % len(request) + 1])
                    except OSError:
                        pass
                i += 1
                time.sleep(0.1)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            for _ in range(10):
                elapsed, samples = timed_scrape(exp.port)
                assert elapsed < 1.0
                time.sleep(0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/?q=" + urllib.parse.quote("<x>"),
                                        timeout=5) as r:
                assert r.status == 200
        finally:
            stop.set()
            thread.join(2)
            for s in slow:
                s.close()
        assert exp.call(lambda: exp.exporter.ready)
