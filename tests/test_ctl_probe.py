"""The certificate trust lists probed as CryptoAPI fetches them: plain HTTP, system route, content checked.

Cabinets packed by Debian's gcab, served by a lab HTTP server at ctldl.windowsupdate.com; the
system route goes through a real Squid while the Defender route is broken, so a success proves
the CTL group took the system route. An internal mirror (`ctl_mirror_url:`) takes Microsoft's place.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest
from lab.ctl import make_ctl_cabinet, tools_available
from lab.servers import Files, Ok, refused_address
from support import lab_config, root_fingerprint, run_jobs

from exporter import metrics as m
from exporter.catalogue import catalogue_groups
from exporter.collector import target_samples
from exporter.config import load_config
from exporter.reasons import Reason

pytestmark = pytest.mark.skipif(not tools_available(), reason="gcab is not installed (tests/run.sh installs it)")

CTL_URLS = [t["url"] for t in catalogue_groups()["ctl"]["targets"]]
HTML = b"<html><body><h1>Access denied</h1>Web filtering blocked this request.</body></html>\n"


def _cabinets(tmp_path, lab_pki) -> dict[str, bytes]:
    return {urlsplit(url).path.rsplit("/", 1)[-1]: make_ctl_cabinet(tmp_path, urlsplit(url).path.rsplit("/", 1)[-1][:-4],
                                                                  lab_pki.issuing) for url in CTL_URLS}


def _run(tmp_path, lab_pki, squid, *, extra=None, name="config.yml"):
    ip, port = refused_address()
    config = lab_config(
        tmp_path, {"ctl": {"expected_roots": [root_fingerprint(lab_pki)]}},
        routes={"system": squid.url, "defender": f"http://{ip}:{port}"},
        ca_file=lab_pki.ca_bundle_path, extra=extra, name=name)
    loaded = load_config(config)
    return loaded, run_jobs(loaded)


def test_genuine_trust_lists_on_the_system_route(tmp_path, lab_pki, lab_servers, squid_factory):
    cabinets = _cabinets(tmp_path, lab_pki)
    prefix = urlsplit(CTL_URLS[0]).path.rsplit("/", 1)[0]
    origin = lab_servers.serve(Files({f"{prefix}/{n}": body for n, body in cabinets.items()}), port=80)
    squid = squid_factory({"ctldl.windowsupdate.com": origin.ip})
    config, outcomes = _run(tmp_path, lab_pki, squid)
    assert [j.route.name for j in config.jobs()] == ["system"] * 3
    for job in config.jobs():
        probe = outcomes[job.key].probe
        assert probe.success, (job.target.url, probe.reason, probe.detail)
        name = job.target.url.rsplit("/", 1)[-1]
        assert probe.content_bytes == len(cabinets[name])
        assert probe.content_last_modified is not None and probe.content_last_modified > 0
        samples = {spec.name: value for spec, labels, value in target_samples(job, None, outcomes[job.key])}
        assert samples[m.PROBE_CONTENT_SIZE.name] == len(cabinets[name])
        assert samples[m.PROBE_CONTENT_LAST_MODIFIED.name] == probe.content_last_modified
    # Squid passed the plain-HTTP requests on: the absolute-form requests went through the system route.
    assert origin.file_requests(f"{prefix}/authrootstl.cab") >= 1


def test_an_error_page_where_a_trust_list_belongs_is_not_green(tmp_path, lab_pki, lab_servers, squid_factory):
    origin = lab_servers.serve(Ok(body=HTML, content_type="text/html"), port=80)
    squid = squid_factory({"ctldl.windowsupdate.com": origin.ip})
    config, outcomes = _run(tmp_path, lab_pki, squid)
    for job in config.jobs():
        probe = outcomes[job.key].probe
        assert probe.reason == Reason.UNEXPECTED_CONTENT, probe.detail
        assert "not a cabinet file: no MSCF signature" in probe.detail
        assert f"HTTP 200 OK, text/html, {len(HTML)} bytes" in probe.detail


def test_a_trust_list_signed_under_another_root_is_not_green(tmp_path, lab_pki, unknown_pki, lab_servers, squid_factory):
    prefix = urlsplit(CTL_URLS[0]).path.rsplit("/", 1)[0]
    forged = {f"{prefix}/{urlsplit(u).path.rsplit('/', 1)[-1]}": make_ctl_cabinet(tmp_path, f"forged{i}", unknown_pki.issuing)
              for i, u in enumerate(CTL_URLS)}
    origin = lab_servers.serve(Files(forged), port=80)
    squid = squid_factory({"ctldl.windowsupdate.com": origin.ip})
    config, outcomes = _run(tmp_path, lab_pki, squid)
    for job in config.jobs():
        probe = outcomes[job.key].probe
        assert probe.reason == Reason.UNEXPECTED_CONTENT and "expected roots" in probe.detail, probe.detail


def test_the_internal_mirror_is_probed_in_microsofts_place(tmp_path, lab_pki, lab_servers, squid_factory):
    cabinets = _cabinets(tmp_path, lab_pki)
    mirror = lab_servers.serve(Files({f"/ctl/{n}": body for n, body in cabinets.items()}), port=80)
    squid = squid_factory({"pki.corp.example": mirror.ip})  # Microsoft's host is not reachable at all
    config, outcomes = _run(tmp_path, lab_pki, squid, extra={"ctl_mirror_url": "http://pki.corp.example/ctl/"})
    urls = [job.target.url for job in config.jobs()]
    assert urls == [f"http://pki.corp.example/ctl/{n}stl.cab" for n in ("authroot", "disallowedcert", "pinrules")]
    for job in config.jobs():
        probe = outcomes[job.key].probe
        assert probe.success, (job.target.url, probe.reason, probe.detail)
        assert job.target.source == "config" and job.target.pattern == "ctldl.windowsupdate.com"
    assert all(mirror.file_requests(f"/ctl/{n}") >= 1 for n in cabinets)


def test_last_modified_is_the_servers(tmp_path, lab_pki, lab_servers, squid_factory):
    """The exposed Last-Modified is the one the server sent (Files sends the serve time)."""
    cabinets = _cabinets(tmp_path, lab_pki)
    prefix = urlsplit(CTL_URLS[0]).path.rsplit("/", 1)[0]
    origin = lab_servers.serve(Files({f"{prefix}/{n}": body for n, body in cabinets.items()}), port=80)
    squid = squid_factory({"ctldl.windowsupdate.com": origin.ip})
    import urllib.request
    proxy = urllib.request.ProxyHandler({"http": squid.url})
    with urllib.request.build_opener(proxy).open(CTL_URLS[0], timeout=10) as answer:
        sent = parsedate_to_datetime(answer.headers["Last-Modified"]).timestamp()
    config, outcomes = _run(tmp_path, lab_pki, squid)
    assert outcomes[config.jobs()[0].key].probe.content_last_modified == sent
