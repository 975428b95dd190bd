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
from support import CATALOGUE_GROUPS, ExporterThread, lab_config



def _fetch(port: int, *, accept_gzip: bool) -> tuple[bytes, str | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept_gzip:
        request.add_header("Accept-Encoding", "gzip")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), response.headers.get("Content-Encoding")


def test_cached_exposition_matches_prometheus_client_and_gzip_is_one_member(tmp_path, lab_pki, lab_servers, free_port):
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
            generate_latest(exporter.exporter.collector)))
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


def _made_up_outcome(i: int, *, ok: bool):
    from exporter.probes.result import CertFacts, ProbeResult, TLSFacts
    from exporter.reasons import Reason
    from exporter.assess import MapsVerdict, Outcome

    leaf = CertFacts(b"leaf", f'CN=t{i}.lab,O="quoted\\\\name"', "CN=Lab CA", f"{i:04X}", "%064x" % i, 1.7e9, 1.8e9)
    tls = TLSFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", (leaf,), (leaf,) if ok else ())
    probe = ProbeResult(ok, None if ok else Reason.TLS_UNTRUSTED, 1.7e9 + i, 0.01 * (i + 1),
                        (("resolve", 0.0), ("connect", 0.001 * i), ("proxy_connect", 0.0), ("tls", 0.002),
                         ("processing", 0.003), ("transfer", 0.0001)), http_status=200 if ok else 0, tls=tls)
    maps = MapsVerdict(ok, reason="" if ok else "tls_untrusted", hresult="" if ok else "0x80072F8F",
                       cause="" if ok else "tls_inspection")
    return Outcome(probe, revoked=False, intercepted=not ok, maps=maps)


def test_cached_exposition_follows_reloads_that_add_remove_and_reorder_jobs():
    """The fragment columns are laid out by job order; a reload that adds,
    drops and reorders jobs must leave them equal to generate_latest()."""
    from exporter.config import parse_config
    from exporter.runtime import Exporter

    def config(urls):
        lines = ["interval: 60s", "groups:"]
        lines += [f"  {g}: {{enabled: false}}" for g in CATALOGUE_GROUPS if g != "maps"]
        lines += ["  maps:", "    targets:"] + [f'      - "{u}"' for u in urls]
        return parse_config("\n".join(lines) + "\n")

    def check(exporter):
        reference = generate_latest(exporter.collector)
        assert exporter.collector.render_exposition() == reference
        assert gzip.decompress(exporter.collector.render_exposition(gzip=True)) == reference
        return reference.decode()

    exporter = Exporter(config([f"https://t{i}.wd.microsoft.com/" for i in range(6)]))
    jobs = exporter.config.jobs()
    # Unchanged jobs of a reload are the same objects: their lines are kept, not re-rendered.
    exporter.store.set_jobs(jobs[:4])
    check(exporter)  # jobs without results
    for i, job in enumerate(jobs[:4]):
        exporter.store.record(job, _made_up_outcome(i, ok=i % 2 == 0))
    exporter.store.count_skipped(jobs[1].key)
    before = check(exporter)
    assert 'defender_probe_success{group="maps",route="defender",target="https://t1.wd.microsoft.com/"} 0.0' in before
    assert 'defender_probes_skipped_total{group="maps",route="defender",target="https://t1.wd.microsoft.com/"} 1.0' in before

    # A result no gzip scrape has seen yet (its deflate piece is made lazily): it must move with
    # its job through the reload below and still be compressed right.
    exporter.store.record(jobs[3], _made_up_outcome(7, ok=False))
    # Reload: t0 and t2 dropped, t5 and t4 added in front, the rest reordered.
    exporter.store.set_jobs([jobs[5], jobs[3], jobs[4], jobs[1]])
    after = check(exporter)
    assert "t0.wd" not in after and "t2.wd" not in after
    assert after.count("defender_target_info{") == 4
    # t1 and t3 kept their results; t4 and t5 have none yet.
    assert 'defender_probe_success{group="maps",route="defender",target="https://t3.wd.microsoft.com/"} 0.0' in after
    assert "defender_probe_success{" + 'group="maps",route="defender",target="https://t5.wd' not in after

    for i, job in enumerate([jobs[5], jobs[3], jobs[4], jobs[1]]):
        exporter.store.record(job, _made_up_outcome(10 + i, ok=True))
    final = check(exporter)
    assert 'defender_probe_success{group="maps",route="defender",target="https://t3.wd.microsoft.com/"} 1.0' in final
    assert final.count("defender_probe_latency_seconds_count{") == 1  # one (group, route)


def test_every_metric_name_is_written_once_in_the_code_its_spec():
    """A new metric is a spec in metrics.py plus its samples: no renderer, no
    second spelling of its name anywhere else in exporter/."""
    import re
    from pathlib import Path

    from exporter import metrics

    root = Path(metrics.__file__).parent
    sources = {path: path.read_text() for path in root.rglob("*.py")}
    for spec in metrics.ALL:
        pattern = re.compile(rf"\b{re.escape(spec.name)}\b")
        places = {path.relative_to(root).as_posix(): len(pattern.findall(text)) for path, text in sources.items()}
        places = {path: n for path, n in places.items() if n}
        # (metrics.py may name a metric in another one's help text.)
        assert set(places) == {"metrics.py"}, f"{spec.name} is written in {places}"
