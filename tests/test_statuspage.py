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

from exporter.config import load_config
from exporter.probes import ProbeResult
from exporter.assess import MapsVerdict, Outcome
from exporter.state import ResultStore
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
    with ExporterThread(noc_lab) as exp:
        exp.wait_ready()
        driver = chromium()
        try:
            driver.get(f"http://127.0.0.1:{exp.port}/")
            text = driver.find_element("tag name", "body").text
            summary = driver.find_element("id", "summary").text
            maps_box = driver.find_element("id", "maps").text
            rows = driver.find_elements("css selector", "#failing tr.fail, #failing tr.ok")
            row_text = {}
            for r in rows:
                targets = r.find_elements("css selector", "td > .target")
                if targets:
                    row_text[targets[0].text] = r.text
            ok_line = driver.find_element("css selector", "#failing tr.ok")
            ok_line_text, ok_line_hidden = ok_line.text, ok_line.get_attribute("textContent")
            debug_links = [a.get_attribute("href") for a in driver.find_elements("link text", "debug")]
            legend = driver.find_element("id", "legend").text
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
    # Each row says its status in words, not colour alone; failing first, the healthy target of a
    # failing group folded into one line (its URL behind "show the target").
    assert ok_line_text.startswith("✔ OK") and "1 other target OK" in ok_line_text
    assert UPDATE_OK in ok_line_hidden and UPDATE_OK not in ok_line_text
    for url in (MAPS_EXPIRED, UPDATE_REFUSED):
        assert row_text[url].startswith("✘ FAILING"), row_text[url]
    assert "tls_expired" in row_text[MAPS_EXPIRED] and "expired at" in row_text[MAPS_EXPIRED]
    # Each reason shown is explained once, under the table.
    assert "tls_expired: a certificate in the chain has expired" in legend and "connect_refused: " in legend
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
    assert " s ago" in row_text[UPDATE_REFUSED] and " ms" in row_text[UPDATE_REFUSED]
    assert metrics_link.endswith("/metrics")
    assert len(debug_links) == 3, "one per failing row (the healthy target's is in its folded list)"
    query = parse_qs(urlsplit(debug_links[0]).query)
    assert query["debug"] == ["true"] and query["target"][0] in (MAPS_OK, MAPS_EXPIRED, UPDATE_REFUSED)
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


# ------------------------------------------------------------------ layout at NOC screen widths

WIDTHS = (1366, 1920, 3840)
LONG_DETAIL = ("CONNECT ussus4westprod.blob.core.windows.net:443 answered 503 Service Unavailable by the proxy "
               "(X-Squid-Error: ERR_CONNECT_FAIL 111) after 2.9 s; the proxy could not reach the server")


def _layout(driver, width: int, height: int = 1080) -> dict:
    """What the eye checks: overflow, clipped status badges, order, the reason column's width."""
    driver.set_window_size(width, height)
    return driver.execute_script("""
        const doc = document.documentElement;
        const clipped = [...document.querySelectorAll('.status')].filter(e => e.offsetParent !== null)
            .filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > window.innerWidth)
            .map(e => e.textContent);
        const verdicts = [...document.querySelectorAll('td:nth-child(7) .status')].map(e => e.textContent);
        const rows = [...document.querySelectorAll('#failing tr.fail, #failing tr.pending, #failing tr.ok')]
            .map(r => r.className);
        const reasons = [...document.querySelectorAll('#failing tr.fail td:nth-child(4)')]
            .map(td => td.getBoundingClientRect().width);
        const healthy = [...document.querySelectorAll('.healthy > li')].map(li => li.getBoundingClientRect().height);
        const line = parseFloat(getComputedStyle(document.body).lineHeight);
        const y = id => { const e = document.getElementById(id); return e ? e.getBoundingClientRect().top : null; };
        return {overflow: doc.scrollWidth - window.innerWidth, clipped, verdicts, rows, reasons, healthy, line,
                height: doc.scrollHeight, failing_y: y('attention'), healthy_y: y('healthy'),
                font: parseFloat(getComputedStyle(document.body).fontSize)};
    """)


def _shoot(driver, name: str, width: int, height: int) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.set_window_size(width, max(height, 600))
    driver.save_screenshot(str(ARTIFACTS / f"{name}-{width}.png"))


def _mixed_store(tmp_path):
    """Failing, healthy and collapsed groups with long URLs and long details."""
    long_url = "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/disallowedcertstl.cab"
    submission = [f"https://ussus{i}westprod.blob.core.windows.net/" for i in range(1, 9)]
    path = lab_config(tmp_path, {
        "maps": {"targets": [MAPS_OK, MAPS_EXPIRED]},
        "update": [UPDATE_OK, "https://www.microsoft.com/security/encyclopedia/adlpackages.aspx"],
        "ctl": [long_url],
        "submission": submission,
        "diagnostics": ["https://v10.events.data.microsoft.com/", "https://settings-win.data.microsoft.com/"],
    })
    config = load_config(path)
    store = ResultStore()
    store.set_jobs(config.jobs())
    now = time.time()
    for job in config.jobs():
        url = job.target.url
        if url == MAPS_OK:
            outcome = Outcome(ProbeResult(True, None, now - 3, 0.21, (), http_status=200),
                              maps=MapsVerdict(False, reason="crl_unreachable", hresult="0x80072F8F",
                                               cause="winhttp_proxy_missing", detail=LONG_DETAIL))
        elif url == MAPS_EXPIRED:
            outcome = Outcome(ProbeResult(False, "tls_expired", now - 4, 0.05, (), detail=LONG_DETAIL),
                              maps=MapsVerdict(False, reason="tls_expired", hresult="0x80072F8F",
                                               cause="certificate_invalid"))
        elif url == long_url or url in submission:
            outcome = Outcome(ProbeResult(False, "proxy_error", now - 5, 2.9, (), detail=LONG_DETAIL))
        else:
            outcome = Outcome(ProbeResult(True, None, now - 6, 0.04, (), http_status=200))
        store.record(job, outcome)
    return config, store, now


@pytest.mark.parametrize("width", WIDTHS)
def test_layout_at_noc_widths(tmp_path, width):
    config, store, now = _mixed_store(tmp_path)
    page = tmp_path / "status.html"
    page.write_text(render_status(config, store, now=now))
    driver = chromium()
    try:
        driver.get(page.as_uri())
        got = _layout(driver, width)
        _shoot(driver, "status-mixed", width, got["height"] + 50)
    finally:
        driver.quit()
    assert got["overflow"] <= 0, f"{got['overflow']} px of horizontal scrolling at {width} px"
    assert not got["clipped"], f"status text cut at {width} px: {got['clipped']}"
    assert got["verdicts"] and all(v in ("✔ VALID", "✘ INVALID") for v in got["verdicts"]), got["verdicts"]
    # Failing targets first, healthy groups after them, one line each.
    assert got["failing_y"] < got["healthy_y"]
    assert got["rows"][0] == "fail", got["rows"]
    assert len(got["healthy"]) == 2 and max(got["healthy"]) < 2.2 * got["line"], got["healthy"]  # update, diagnostics
    # The submission group's eight identical failures are one row, not eight.
    assert len([r for r in got["rows"] if r == "fail"]) == 4, got["rows"]  # maps x2, ctl, submission
    # Reasons get room: at least ~22 characters a line, whatever the URLs.
    assert min(got["reasons"]) >= 22 * got["font"] * 0.55, (got["reasons"], got["font"])


def test_builtin_catalogue_offline_fits_two_screens(tmp_path):
    """The exporter's own page for the built-in catalogue with no network (every target fails),
    fetched inside a network namespace, shown at 1920x1080 and the other widths."""
    out = tmp_path / "out"
    out.mkdir()
    import subprocess
    import sys

    result = subprocess.run(["unshare", "-n", sys.executable, str(Path(__file__).parent / "helpers" / "netns_scrape.py"),
                             str(out)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    page = out / "status.html"
    assert "FAILING" in page.read_text()
    driver = chromium()
    try:
        driver.get(page.as_uri())
        results = {}
        for width in WIDTHS:
            results[width] = _layout(driver, width)
            _shoot(driver, "status-offline", width, results[width]["height"] + 50)
    finally:
        driver.quit()
    for width, got in results.items():
        assert got["overflow"] <= 0, (width, got["overflow"])
        assert not got["clipped"], (width, got["clipped"])
    assert results[1920]["height"] <= 2 * 1080, f"{results[1920]['height']} px: more than two screens at 1920x1080"
