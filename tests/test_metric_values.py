"""The values behind the metrics contract, read from a real exporter's /metrics:
TLS facts, CRL gauges, exporter self-metrics and the latency histogram."""

from __future__ import annotations

import hashlib
import time

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lab.servers import Ok
from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, lab_config, root_fingerprint
from support import MAPS, serve_published

from exporter import __version__

EXPIRED = "https://europe.cp.wd.microsoft.com/"


def _samples(body: str) -> list:
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def _one(samples, name, **labels):
    found = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metric_values_from_a_lab_exporter(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    maps = lab_servers.serve(Ok(), port=443, tls=leaf)
    expired = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_expired("europe.cp.wd.microsoft.com"))
    files = lab_pki.published_files()
    crl_servers = serve_published(lab_servers, files)
    connect_to = [maps.connect_to("wdcp.microsoft.com", 443), expired.connect_to("europe.cp.wd.microsoft.com", 443)]
    connect_to += [server.connect_to(host, 80) for host, server in crl_servers.items()]
    path = lab_config(tmp_path, {"maps": {"targets": [MAPS, EXPIRED], "expected_roots": [root_fingerprint(lab_pki)],
                                          "interval": "1s", "timeout": "1s"}},
                      connect_to=connect_to, ca_file=lab_pki.ca_bundle_path, interval="1s", timeout="1s")
    with ExporterThread(path) as exporter:
        exporter.wait_ready()
        time.sleep(2.5)  # later rounds: counters move and the scheduler's lag is observed
        _, body = exporter.get("/metrics")
    samples = _samples(body)
    ok = {"group": "maps", "target": MAPS, "route": "defender"}
    bad = {"group": "maps", "target": EXPIRED, "route": "defender"}

    # TLS facts, for a valid chain and an expired one
    assert _one(samples, "defender_tls_chain_verified", **ok).value == 1
    assert _one(samples, "defender_tls_chain_verified", **bad).value == 0
    version = _one(samples, "defender_tls_version_info", **ok)
    assert version.labels["version"] in ("TLSv1.2", "TLSv1.3") and version.value == 1
    assert _one(samples, "defender_tls_cipher_info", **ok).labels["cipher"]
    leaf_after = _one(samples, "defender_tls_cert_not_after_timestamp_seconds", **ok, depth="0")
    assert leaf_after.value == leaf.cert.not_valid_after_utc.timestamp()
    assert leaf_after.labels["serial"] == format(leaf.serial, "X")
    assert leaf_after.labels["fingerprint_sha256"] == hashlib.sha256(
        leaf.cert.public_bytes(Encoding.DER)).hexdigest()
    assert leaf_after.labels["issuer"] == lab_pki.issuing.cert.subject.rfc4514_string()
    assert _one(samples, "defender_tls_cert_not_after_timestamp_seconds", **bad, depth="0").value < time.time()
    assert _one(samples, "defender_tls_cert_revoked", **ok).value == 0
    assert _one(samples, "defender_tls_intercepted", **ok).value == 0

    # CRL gauges for the leaf's distribution point, fetched on the system route
    url = lab_pki.issuing.crl_url
    crl = x509.load_der_x509_crl(files[url])
    assert _one(samples, "defender_crl_reachable", url=url, route="system").value == 1
    assert 0 < _one(samples, "defender_crl_fetch_duration_seconds", url=url, route="system").value < 1
    issuer = crl.issuer.rfc4514_string()
    assert _one(samples, "defender_crl_this_update_timestamp_seconds", url=url, issuer=issuer).value == \
        crl.last_update_utc.timestamp()
    assert _one(samples, "defender_crl_next_update_timestamp_seconds", url=url, issuer=issuer).value == \
        crl.next_update_utc.timestamp()
    assert _one(samples, "defender_crl_valid", url=url).value == 1
    assert _one(samples, "defender_crl_size_bytes", url=url).value == len(files[url])

    # the exporter about itself
    assert _one(samples, "defender_exporter_targets", group="maps").value == 2
    assert _one(samples, "defender_exporter_build_info").labels["version"] == __version__
    assert _one(samples, "defender_exporter_scheduler_lag_seconds_count").value >= 2
    assert _one(samples, "defender_exporter_config_last_reload_successful").value == 1

    # per target: the counters; per group and route: the latency histogram counts
    # every probe of the group's targets on that route; the last run is recent
    runs = sum(_one(samples, "defender_probes_total", **ok, result=r).value for r in ("success", "failure"))
    assert runs >= 3
    group_runs = sum(s.value for s in samples if s.name == "defender_probes_total"
                     and s.labels["group"] == ok["group"] and s.labels["route"] == ok["route"])
    assert group_runs > runs  # the group has more than this one target
    per_route = {"group": ok["group"], "route": ok["route"]}
    assert _one(samples, "defender_probe_latency_seconds_count", **per_route).value == group_runs
    assert _one(samples, "defender_probe_latency_seconds_bucket", **per_route, le="+Inf").value == group_runs
    assert _one(samples, "defender_probe_latency_seconds_bucket", **per_route, le="0.005").value <= group_runs
    assert not [s for s in samples if s.name.startswith("defender_probe_latency_seconds") and "target" in s.labels]
    assert time.time() - _one(samples, "defender_probe_last_run_timestamp_seconds", **ok).value < 5
    assert _one(samples, "defender_probe_failure_reason", **bad).labels["reason"] == "tls_expired"
