"""The status page at /: what a person on the NOC sees, in a real headless Chromium."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from lab.servers import Ok, refused_address
from support import ExporterThread, lab_config, root_fingerprint

from conftest import free_port
from exporter.config import load_config
from exporter.probes import ProbeResult
from exporter.state import MapsVerdict, Outcome, ResultStore
from exporter.statuspage import render_status

ARTIFACTS = Path(__file__).parent / "artifacts"
MAPS_OK = "https://wdcp.microsoft.com/"
MAPS_EXPIRED = "https://unitedstates.cp.wd.microsoft.com/"
UPDATE_OK = "https://go.microsoft.com/"
UPDATE_REFUSED = "https://definitionupdates.microsoft.com/"
HOSTILE_DESCRIPTION = "<script>alert('x')</script> & <b>bold</b>"


def chromium():
    pytest.importorskip("selenium")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1920,1080", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}")
    options.binary_location = shutil.which("chromium")
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


@pytest.fixture
def noc_lab(tmp_path, lab_pki, lab_servers, squid_factory):
    """The article's trap: MAPS reachable through Defender's proxy, CRLs not on the system path;
    plus an expired certificate, a refused connection and a healthy update endpoint."""
    maps = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    expired = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_expired("unitedstates.cp.wd.microsoft.com"))
    update = lab_servers.serve(Ok(status=404), port=443, tls=lab_pki.issue_leaf("go.microsoft.com"))
    squid = squid_factory({"wdcp.microsoft.com": maps.ip, "unitedstates.cp.wd.microsoft.com": expired.ip})
    ip, port = refused_address()
    connect_to = [
        update.connect_to("go.microsoft.com", 443),
        f"definitionupdates.microsoft.com:443:{ip}:{port}",
        f"crl.microsoft.com:80:{ip}:{port}",
        f"www.microsoft.com:80:{ip}:{port}",
    ]
    path = lab_config(
        tmp_path,
        {
            "maps": {"targets": [MAPS_OK, MAPS_EXPIRED], "expected_roots": [root_fingerprint(lab_pki)]},
            "update": {"targets": [UPDATE_OK, UPDATE_REFUSED], "description": HOSTILE_DESCRIPTION,
                       "route": "system"},
        },
        routes={"defender": squid.url},
        connect_to=connect_to,
        ca_file=lab_pki.ca_bundle_path,
    )
    return path


def test_status_page_in_a_browser(noc_lab):
    with ExporterThread(noc_lab, port=free_port()) as exp:
        exp.wait_ready()
        driver = chromium()
        try:
            driver.get(f"http://127.0.0.1:{exp.port}/")
            text = driver.find_element("tag name", "body").text
            summary = driver.find_element("id", "summary").text
            maps_box = driver.find_element("id", "maps").text
            rows = driver.find_elements("css selector", "tbody tr")
            row_text = {r.find_element("css selector", ".target").text: r.text for r in rows}
            debug_links = [a.get_attribute("href") for a in driver.find_elements("link text", "debug probe")]
            metrics_link = driver.find_element("link text", "/metrics").get_attribute("href")
            scripts = driver.find_elements("tag name", "script")
            status_font = driver.find_element("css selector", "tbody .status").value_of_css_property("font-size")
            # A wall screen: the whole page in one image, for review.
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1920, max(1080, height + 200))
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "status.png"))
            # The debug link works from the browser too.
            driver.get(debug_links[0])
            debug_text = driver.find_element("tag name", "body").text
        finally:
            driver.quit()

    assert summary == "FAILING: 2 of 4 probes failing, MAPS validation fails on 2"
    # Each row says its status in words, not colour alone.
    assert row_text[UPDATE_OK].startswith("✔ OK")
    for url in (MAPS_EXPIRED, UPDATE_REFUSED):
        assert row_text[url].startswith("✘ FAILING"), row_text[url]
    assert "tls_expired" in row_text[MAPS_EXPIRED] and "has expired" in row_text[MAPS_EXPIRED]
    assert "connect_refused" in row_text[UPDATE_REFUSED]
    # The MAPS probe itself succeeds, but the verdict fails on the CRLs: the article's trap.
    assert row_text[MAPS_OK].startswith("✔ OK") and "INVALID" in row_text[MAPS_OK]
    assert "MAPS connection: ✘ INVALID on 2 of 2 probes" in maps_box
    assert "Cause: winhttp_proxy_missing" in maps_box and "0x80072F8F" in maps_box
    assert "netsh winhttp set proxy" in maps_box
    assert "Cause: certificate_invalid" in maps_box
    # Escaped, shown as text, never run.
    assert HOSTILE_DESCRIPTION in text
    assert scripts == []
    # Ages and latencies are there.
    assert " s ago" in row_text[UPDATE_OK] and " ms" in row_text[UPDATE_OK]
    assert metrics_link.endswith("/metrics")
    assert len(debug_links) == 4
    query = parse_qs(urlsplit(debug_links[0]).query)
    assert query["debug"] == ["true"] and query["target"][0] in (MAPS_OK, MAPS_EXPIRED, UPDATE_OK, UPDATE_REFUSED)
    assert "On-demand probe of" in debug_text
    assert float(status_font.removesuffix("px")) >= 18


def test_page_escapes_everything_and_redacts_proxy_passwords(tmp_path):
    password = "pa<ss>&word"
    path = lab_config(tmp_path, {"maps": [MAPS_OK], "update": {"targets": [UPDATE_OK], "description": "<i>x</i>"}},
                      routes={"defender": "http://noc:pa%3Css%3E%26word@proxy.example:3128"})
    config = load_config(path)
    store = ResultStore()
    store.set_jobs(config.jobs())
    now = time.time()
    hostile = "<img src=x onerror=alert(1)> \" ' & " + password
    for job in config.jobs():
        probe = ProbeResult(False, "proxy_error", now - 5, 0.25, (), detail=hostile)
        verdict = MapsVerdict(False, reason="proxy_error", hresult="0x80072F78", cause="http_error", detail=hostile)
        store.record(job, Outcome(probe, maps=verdict if job.group.validate_maps else None))
    page = render_status(config, store, now=now)
    assert "<img" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert password not in page and "pa&lt;ss&gt;&amp;word" not in page and "pa%3Css%3E%26word" not in page
    assert "&lt;redacted&gt;" in page
    assert "5 s ago" in page and "250 ms" in page


def test_page_before_any_result_says_pending(tmp_path):
    config = load_config(lab_config(tmp_path, {"maps": [MAPS_OK]}))
    store = ResultStore()
    store.set_jobs(config.jobs())
    page = render_status(config, store)
    assert "PENDING: 1 of 1 probes have no result yet" in page
    assert "MAPS connection: PENDING" in page
