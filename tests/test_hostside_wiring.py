"""Host mode through the real exporter: `host:` config -> stand-in tools -> /metrics.

MpCmdRun.exe, netsh, reg and powershell cannot exist on Linux; the stand-ins in
tests/standins print the article's documented outputs and exit as the tools do.
"""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families
from support import ExporterThread, host_config, lab_config, scrape_until


def test_host_mode_reports_the_articles_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO", "winhttp_missing")
    monkeypatch.setenv("STANDIN_HRESULT", "0x80070006")
    with ExporterThread(host_config(tmp_path)) as exporter:
        samples = scrape_until(exporter, "defender_host_winhttp_proxy_configured")
    by_name = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    valid = [s for s in by_name["defender_maps_connection_valid"] if s.labels["source"] == "mpcmdrun"]
    assert [s.value for s in valid] == [0.0]
    info = [s for s in by_name["defender_maps_validation_info"] if s.labels["source"] == "mpcmdrun"]
    assert info[0].labels["hresult"] == "0x80070006" and info[0].labels["cause"] == "winhttp_proxy_missing"
    assert by_name["defender_host_winhttp_proxy_configured"][0].value == 0
    assert by_name["defender_host_ssl_options"][0].value == 3
    assert by_name["defender_host_signature_age_days"][0].value == 2


def test_host_mode_healthy_and_a_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_SCENARIO", "healthy")
    path = host_config(tmp_path, powershell=str(tmp_path / "no-such-powershell"))
    with ExporterThread(path) as exporter:
        samples = scrape_until(exporter, "defender_host_winhttp_proxy_configured")
        _, body = exporter.get("/metrics")
    assert body.count("# TYPE defender_maps_connection_valid ") == 1
    valid = [s for s in samples if s.name == "defender_maps_connection_valid" and s.labels["source"] == "mpcmdrun"]
    assert [s.value for s in valid] == [1.0]
    assert not [s for s in samples if s.name == "defender_maps_validation_info"]
    assert [s.value for s in samples if s.name == "defender_host_winhttp_proxy_configured"] == [1.0]
    # the missing tool's gauge is absent, not zero, and nothing crashed
    assert not [s for s in samples if s.name == "defender_host_signature_age_days"]


def test_host_mode_off_by_default(tmp_path):
    with ExporterThread(lab_config(tmp_path, {})) as exporter:
        time.sleep(0.5)
        _, body = exporter.get("/metrics")
    samples = [s for f in text_string_to_metric_families(body) for s in f.samples]
    assert not [s for s in samples if s.name.startswith("defender_host_")]
    assert not [s for s in samples if s.name == "defender_maps_connection_valid"]
