"""/metrics from cached fragments: the same bytes prometheus_client would render,
and a gzip body that every client decodes (one gzip member, not several)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import time
import urllib.request
import zlib

from lab.servers import Ok, refused_address
from prometheus_client import generate_latest
from support import ExporterThread, lab_config

from conftest import free_port


def _fetch(port: int, *, accept_gzip: bool) -> tuple[bytes, str | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept_gzip:
        request.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), response.headers.get("Content-Encoding")


def test_cached_exposition_matches_prometheus_client_and_gzip_is_one_member(tmp_path, lab_pki, lab_servers):
    ok = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    ip, port_refused = refused_address()
    path = lab_config(
        tmp_path,
        {"maps": ["https://wdcp.microsoft.com/", "https://europe.cp.wd.microsoft.com/"],
         "adl": ["http://go.microsoft.com/"]},
        connect_to=[ok.connect_to("wdcp.microsoft.com", 443), f"europe.cp.wd.microsoft.com:443:{ip}:{port_refused}",
                    f"go.microsoft.com:80:{ip}:{port_refused}"],
        ca_file=lab_pki.ca_bundle_path, interval="1s", timeout="1s",
    )
    port = free_port()
    with ExporterThread(path, port=port) as exporter:
        exporter.wait_ready()
        time.sleep(1.2)  # a second round: counters and histograms move
        # Compare within one moment of the store: render both on the exporter's loop.
        cached, reference = exporter.call(lambda: (
            b"".join(exporter.exporter.collector.iter_exposition(gzip=False)),
            generate_latest(exporter.exporter.registry)))
        plain, encoding = _fetch(port, accept_gzip=False)
        packed, packed_encoding = _fetch(port, accept_gzip=True)
        curl = shutil.which("curl")
        curled = subprocess.run([curl, "-s", "--compressed", f"http://127.0.0.1:{port}/metrics"],
                                capture_output=True, timeout=30).stdout if curl else None
    assert cached == reference
    assert encoding is None and packed_encoding == "gzip"
    # One member: a single-member decoder (what curl and browsers use) reaches the end of it.
    decoder = zlib.decompressobj(wbits=31)
    text = decoder.decompress(packed) + decoder.flush()
    assert decoder.eof and decoder.unused_data == b""
    assert text == gzip.decompress(packed)
    assert b"defender_probe_success" in text and b'reason="connect_refused"' in text
    assert text.count(b"# TYPE ") == plain.count(b"# TYPE ")
    if curled is not None:
        assert b"# EOF" not in curled and curled.count(b"# TYPE ") == plain.count(b"# TYPE ")
    promtool = shutil.which("promtool")
    assert promtool
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert (lint.stdout + lint.stderr).strip() == b""
