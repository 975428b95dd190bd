"""Every probe reason, produced by a real socket in the lab; phase timings; TLS facts."""

from __future__ import annotations

import time

import pytest
from lab.servers import (
    Delay,
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
from support import Marks, event_loops, lab_config, linux_only, outcome_for

from exporter.probes._tls import TrustStore
from exporter.reasons import Reason

# Each test runs over both probe transports (conftest.probe_transport).
pytestmark = pytest.mark.usefixtures("probe_transport")

MAPS = "https://wdcp.microsoft.com/"


def probe_maps(tmp_path, connect_to, **kwargs):
    path = lab_config(tmp_path, {"maps": [MAPS]}, connect_to=connect_to, **kwargs)
    return outcome_for(path, MAPS).probe


def test_healthy_https_reports_phases_chain_and_status(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    server = lab_servers.serve(Ok(status=503), port=443, tls=leaf)
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.success, probe.detail
    assert probe.reason is None
    assert probe.http_status == 503  # any answer from the endpoint counts
    assert server.sni_names == ["wdcp.microsoft.com"]
    assert server.hosts == ["wdcp.microsoft.com"]
    phases = dict(probe.phases)
    assert set(phases) == {"resolve", "connect", "proxy_connect", "tls", "processing", "transfer"}
    assert phases["proxy_connect"] == 0
    assert phases["tls"] > 0 and phases["connect"] > 0
    tls = probe.tls
    assert tls.verified and tls.version.startswith("TLS")
    assert [c.subject for c in tls.presented][0] == leaf.cert.subject.rfc4514_string()
    assert tls.verified_path[-1].subject == lab_pki.root.cert.subject.rfc4514_string()
    assert tls.presented[0].serial == format(leaf.serial, "X")


def test_processing_phase_measures_server_delay(tmp_path, lab_pki, lab_servers):
    """`processing` is the server's hold, `tls` ends before the request: checked against the
    probe's trace lines around each boundary and the server's note of its answer, all on one
    clock (time.perf_counter()), so that a loaded machine widens the bounds but never breaks them."""
    import asyncio

    from exporter.config import load_config
    from exporter.probes import ProbeEnv, run_probe

    server = lab_servers.serve(Delay(0.2), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    path = lab_config(tmp_path, {"maps": [MAPS]}, connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path)
    config = load_config(path)
    [job] = config.jobs()
    marks = Marks()
    probe = asyncio.run(run_probe(job, ProbeEnv.from_config(config), trace=marks))
    assert probe.success, probe.detail
    # The request went out between the lines around "sent GET" (the phase begins just before
    # it); the answer was noted by the server before it was written, and read before "answer".
    # (A kernel stamp moved onto perf_counter's clock is within a millisecond or two: `clocks`.)
    begun_by, begun_after, clocks = marks.at("sent GET"), marks.before("sent GET"), 0.002
    assert (server.answered_at[0] - begun_by - clocks <= probe.phase("processing")
            <= marks.at("answer 200") - begun_after + clocks), (probe.phases, marks.lines)
    assert server.answered_at[0] - begun_after >= 0.2 - 0.001  # the premise: the server held the request 0.2 s
    # `tls` runs from after the connection (its log line) to the request, not beyond.
    assert 0 < probe.phase("tls") <= begun_by - marks.at("connected to")
    # Phases follow one another without gaps or overlaps (tests/test_timestamps.py: under a blocked loop too).
    assert 0 <= probe.duration - sum(seconds for _, seconds in probe.phases) < 0.005


def test_a_slow_chain_check_is_part_of_the_tls_phase(tmp_path, lab_pki, lab_servers, monkeypatch):
    # The check is CPU work of ours; on a loaded machine it takes milliseconds.
    # It belongs to `tls` (as on Windows), so the phases still add up.
    check_time = 0.05
    verify = TrustStore.verify

    def slow_verify(self, *args, **kwargs):
        time.sleep(check_time)
        return verify(self, *args, **kwargs)

    monkeypatch.setattr(TrustStore, "verify", slow_verify)
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.success, probe.detail
    assert probe.phase("tls") >= check_time
    assert 0 <= probe.duration - sum(seconds for _, seconds in probe.phases) < 0.005


def test_no_socket_is_left_to_the_garbage_collector(tmp_path, lab_pki):
    """Every failure path closes its socket itself: nothing is found unclosed
    when the garbage collector runs (Python warns with a ResourceWarning)."""
    import gc
    import warnings

    from lab.servers import LabServers

    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    with LabServers() as servers, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        cases = {
            "never": servers.serve(NeverAnswer(), port=443),
            "reset": servers.serve(ResetMidHandshake(), port=443),
            "plaintext": servers.serve(Garbage(before_tls=True), port=443),
            "garbage": servers.serve(Garbage(), port=443, tls=leaf),
            "ok": servers.serve(Ok(), port=443, tls=leaf),
        }
        for server in cases.values():
            probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path,
                       timeout="500ms")
        fake_proxy = servers.serve(Garbage(), port=0)  # fails after the connect, inside open_stream
        path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": f"http://{fake_proxy.ip}:{fake_proxy.port}"})
        assert outcome_for(path, MAPS).probe.reason == Reason.PROXY_ERROR
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
                and ("socket" in str(w.message) or "transport" in str(w.message))]
    assert unclosed == []


def test_dns_error(tmp_path):
    # .invalid never resolves (RFC 6761); no connect_to, so the real resolver is asked.
    path = lab_config(tmp_path, {"maps": ["https://no-such-host.invalid/"]})
    probe = outcome_for(path, "https://no-such-host.invalid/").probe
    assert probe.reason == Reason.DNS_ERROR
    assert "no-such-host.invalid" in probe.detail


def test_connect_refused(tmp_path):
    ip, port = refused_address()
    probe = probe_maps(tmp_path, [f"wdcp.microsoft.com:443:{ip}:{port}"])
    assert probe.reason == Reason.CONNECT_REFUSED


def test_connect_timeout_on_full_backlog(tmp_path):
    """A listener that never accepts and whose backlog is full leaves the SYN unanswered."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (backlog 0 admits one or two)
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        probe = probe_maps(tmp_path, [f"wdcp.microsoft.com:443:127.0.0.1:{port}"], timeout="1s")
        assert probe.reason == Reason.CONNECT_TIMEOUT, probe.detail
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_reset_on_accept(tmp_path, lab_servers):
    # An RST right after the handshake races the check of the connect: the socket
    # may already report the reset (ECONNRESET) when the connect is checked, or the
    # reset shows on the first read. Either way it is a reset, not a refusal.
    server = lab_servers.serve(ResetOnAccept(), port=443)
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)])
    assert probe.reason == Reason.CONNECTION_RESET, probe.detail


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "proxy"])
def test_reset_reported_by_the_connect_is_a_reset(tmp_path, lab_servers, monkeypatch, through_proxy):
    """The losing side of that race, made certain: the connect itself reports ECONNRESET."""
    import errno
    import os

    from exporter.probes import _conn, _portable

    async def reset_at_connect(*args, **kwargs):
        raise OSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))

    for transport in (_conn.Connection, _portable.PortableConnection):
        monkeypatch.setattr(transport, "connect", reset_at_connect)
    if through_proxy:
        path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": "http://127.0.0.1:3128"})
        probe = outcome_for(path, MAPS).probe
    else:
        probe = probe_maps(tmp_path, ["wdcp.microsoft.com:443:127.0.0.1:443"])
    assert probe.reason == Reason.CONNECTION_RESET, probe.detail


def test_connection_reset_mid_handshake(tmp_path, lab_servers):
    server = lab_servers.serve(ResetMidHandshake(), port=443)
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)])
    assert probe.reason == Reason.CONNECTION_RESET, probe.detail


def test_tls_handshake_error_on_non_tls_server(tmp_path, lab_servers):
    server = lab_servers.serve(Garbage(before_tls=True), port=443)
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)])
    assert probe.reason == Reason.TLS_HANDSHAKE_ERROR, probe.detail


def test_tls_expired(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_expired("wdcp.microsoft.com"))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.reason == Reason.TLS_EXPIRED, probe.detail
    assert probe.detail.startswith("certificate at depth 0 (CN=wdcp.microsoft.com") and "expired at 20" in probe.detail
    assert probe.tls.presented, "the chain is reported even when it fails"
    assert not probe.tls.verified


def test_tls_not_yet_valid(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_not_yet_valid("wdcp.microsoft.com"))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.reason == Reason.TLS_NOT_YET_VALID, probe.detail


def test_tls_hostname_mismatch(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("other.example.com"))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.reason == Reason.TLS_HOSTNAME_MISMATCH, probe.detail


def test_tls_untrusted_issuer(tmp_path, lab_pki, unknown_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=unknown_pki.issue_leaf("wdcp.microsoft.com"))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.reason == Reason.TLS_UNTRUSTED, probe.detail
    assert "Unknown" in probe.tls.presented[0].issuer


def test_leaf_without_aki_is_valid_like_windows(tmp_path, lab_pki, lab_servers):
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com", with_aki=False)
    server = lab_servers.serve(Ok(), port=443, tls=leaf)
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.success, probe.detail


def test_ip_only_san_probed_by_name_is_a_hostname_mismatch(tmp_path, lab_pki, lab_servers):
    """The chain is fine; the name is not: the certificate is for an address, not for this name."""
    import ipaddress

    from cryptography import x509

    leaf = lab_pki.issue_leaf("wdcp.microsoft.com", san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server = lab_servers.serve(Ok(), port=443, tls=leaf)
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.reason == Reason.TLS_HOSTNAME_MISMATCH, probe.detail


@pytest.mark.parametrize("name, reason", [("wdcp.microsoft.com", None), ("other.example.com",
                                                                        Reason.TLS_HOSTNAME_MISMATCH)])
def test_a_leaf_with_only_a_common_name_is_matched_by_it_like_windows(tmp_path, lab_pki, lab_servers, name, reason):
    """No subjectAltName: Windows' SSL policy compares the server name with the subject CN."""
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf(name, san=None))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.reason == reason, probe.detail
    assert probe.tls.presented, "the chain is reported either way"


def test_a_ca_without_key_usage_is_a_ca_like_windows(tmp_path, lab_pki, lab_servers):
    ca = lab_pki.issue_ca("Lab No KeyUsage CA", key_usage=False)
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com", issuer=ca))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.success, probe.detail
    assert [c.subject for c in probe.tls.verified_path][1] == ca.cert.subject.rfc4514_string()


@pytest.mark.parametrize(
    "behaviour, reason",
    [
        (Garbage(), Reason.HTTP_ERROR),
        (EndlessHeaders(), Reason.HTTP_ERROR),
        (Truncated(), Reason.HTTP_ERROR),
        (NeverAnswer(), Reason.TIMEOUT),
        (Slowloris(interval=0.5), Reason.TIMEOUT),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_bad_http_answers(tmp_path, lab_pki, lab_servers, behaviour, reason):
    server = lab_servers.serve(behaviour, port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    probe = probe_maps(
        tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path, timeout="1s"
    )
    assert probe.reason == reason, probe.detail


def test_endless_body_is_cut_at_the_cap_and_counts_as_reached(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(EndlessBody(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    probe = probe_maps(tmp_path, [server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    assert probe.success, probe.detail
    assert probe.http_status == 200


def test_plain_http_target(tmp_path, lab_servers):
    server = lab_servers.serve(Ok(status=404), port=80)
    url = "http://go.microsoft.com/"
    path = lab_config(tmp_path, {"adl": [url]}, connect_to=[server.connect_to("go.microsoft.com", 80)])
    probe = outcome_for(path, url).probe
    assert probe.success and probe.http_status == 404
    assert probe.tls is None
    assert server.request_lines == ["GET / HTTP/1.1"]


@pytest.mark.parametrize("interim", [(103,), (100, 103)], ids=["103", "100+103"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_interim_answers_are_skipped(tmp_path, lab_pki, lab_servers, interim, scheme):
    """A 1xx is not the answer (RFC 9110 15.2): the final 200 behind it is."""
    from lab.servers import EarlyHints

    port = 443 if scheme == "https" else 80
    tls = lab_pki.issue_leaf("go.microsoft.com") if scheme == "https" else None
    server = lab_servers.serve(EarlyHints(interim=interim, status=200), port=port, tls=tls)
    url = f"{scheme}://go.microsoft.com/"
    path = lab_config(tmp_path, {"adl": [url]}, connect_to=[server.connect_to("go.microsoft.com", port)],
                      ca_file=lab_pki.ca_bundle_path)
    probe = outcome_for(path, url).probe
    assert probe.success, probe.detail
    assert probe.http_status == 200


def test_an_answer_outside_expect_is_unexpected_content(tmp_path, lab_servers):
    server = lab_servers.serve(Ok(status=404), port=80)
    url = "http://go.microsoft.com/"
    group = {"targets": [{"url": url, "expect": {"status": [200]}}]}
    path = lab_config(tmp_path, {"adl": group}, connect_to=[server.connect_to("go.microsoft.com", 80)])
    probe = outcome_for(path, url).probe
    assert probe.reason == Reason.UNEXPECTED_CONTENT, probe.detail
    assert probe.http_status == 404 and "arrived: HTTP 404 Not Found, text/plain, 3 bytes" in probe.detail


# ------------------------------------------------------------------ through Squid


def test_https_through_proxy_measures_proxy_connect(tmp_path, lab_pki, lab_servers, squid_factory):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    squid = squid_factory({"wdcp.microsoft.com": server.ip})
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": squid.url}, ca_file=lab_pki.ca_bundle_path)
    outcome = outcome_for(path, MAPS)
    probe = outcome.probe
    assert probe.success, probe.detail
    assert probe.phase("proxy_connect") > 0
    assert probe.proxy_status == 200
    assert probe.peer.endswith(f":{squid.port}")
    assert 0 <= probe.duration - sum(seconds for _, seconds in probe.phases) < 0.005


def test_proxy_connect_phase_holds_the_whole_connect_answer(tmp_path, lab_servers):
    """A proxy that trickles its answer to CONNECT: all of it is `proxy_connect`,
    none of it `transfer` (which is the endpoint's answer)."""
    slow_proxy = lab_servers.serve(Slowloris(interval=0.003), port=0)
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": f"http://{slow_proxy.ip}:{slow_proxy.port}"})
    probe = outcome_for(path, MAPS).probe
    assert probe.proxy_status == 200  # then the TLS handshake meets the rest of a plain answer and fails
    assert probe.phase("proxy_connect") > 0.15, probe.phases
    assert probe.phase("transfer") == 0, probe.phases


def test_plain_http_through_proxy_uses_absolute_uri(tmp_path, lab_servers, squid_factory):
    server = lab_servers.serve(Ok(status=403), port=80)
    squid = squid_factory({"go.microsoft.com": server.ip})
    url = "http://go.microsoft.com/fwlink"
    path = lab_config(tmp_path, {"adl": [url]}, routes={"defender": squid.url})
    probe = outcome_for(path, url).probe
    assert probe.success, probe.detail  # the origin's own 403 counts as reached
    assert probe.http_status == 403
    # Squid (a forward proxy) takes only the absolute form and logs its URL (its log is written
    # a moment later); it sends the origin form on.
    deadline = time.monotonic() + 10
    while not any(f" GET {url} " in line for line in squid.access_log_lines()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(f" GET {url} " in line for line in squid.access_log_lines()), squid.access_log_lines()
    assert server.request_lines == ["GET /fwlink HTTP/1.1"]
    # What a proxy receives, as sent: a recording server in the proxy's place.
    recorder = lab_servers.serve(Ok(status=403), port=80)
    path = lab_config(tmp_path, {"adl": [url]}, routes={"defender": recorder.url})
    assert outcome_for(path, url).probe.http_status == 403
    assert recorder.request_lines == [f"GET {url} HTTP/1.1"]


def test_proxy_denied_connect(tmp_path, lab_pki, lab_servers, squid_factory):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    squid = squid_factory({"wdcp.microsoft.com": server.ip}, deny_domains=["wdcp.microsoft.com"])
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": squid.url}, ca_file=lab_pki.ca_bundle_path)
    probe = outcome_for(path, MAPS).probe
    assert probe.reason == Reason.PROXY_DENIED, probe.detail
    assert probe.http_status == 403 and "ERR_ACCESS_DENIED" in probe.detail
    assert server.connections == 0


def test_proxy_denied_plain_http(tmp_path, lab_servers, squid_factory):
    server = lab_servers.serve(Ok(), port=80)
    squid = squid_factory({"go.microsoft.com": server.ip}, deny_domains=["go.microsoft.com"])
    url = "http://go.microsoft.com/"
    path = lab_config(tmp_path, {"adl": [url]}, routes={"defender": squid.url})
    probe = outcome_for(path, url).probe
    assert probe.reason == Reason.PROXY_DENIED, probe.detail


def test_proxy_auth_required_and_accepted(tmp_path, lab_pki, lab_servers, squid_factory):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    squid = squid_factory({"wdcp.microsoft.com": server.ip}, auth=("noc", "s3cret"))
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": squid.url}, ca_file=lab_pki.ca_bundle_path)
    probe = outcome_for(path, MAPS).probe
    assert probe.reason == Reason.PROXY_AUTH_REQUIRED, probe.detail
    assert probe.http_status == 407

    with_auth = squid.url.replace("http://", "http://noc:s3cret@")
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": with_auth}, ca_file=lab_pki.ca_bundle_path)
    probe = outcome_for(path, MAPS).probe
    assert probe.success, probe.detail


def test_proxy_error_when_proxy_cannot_forward(tmp_path, squid_factory):
    # The name is not in Squid's hosts file and its resolver says NXDOMAIN: Squid answers 5xx itself.
    squid = squid_factory({})
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": squid.url})
    probe = outcome_for(path, MAPS).probe
    assert probe.reason == Reason.PROXY_ERROR, probe.detail
    assert probe.http_status >= 500


def test_proxy_error_on_garbage_connect_answer(tmp_path, lab_servers):
    fake_proxy = lab_servers.serve(Garbage(), port=0)
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": f"http://{fake_proxy.ip}:{fake_proxy.port}"})
    probe = outcome_for(path, MAPS).probe
    assert probe.reason == Reason.PROXY_ERROR, probe.detail


def test_proxy_unreachable(tmp_path):
    ip, port = refused_address()
    path = lab_config(tmp_path, {"maps": [MAPS]}, routes={"defender": f"http://{ip}:{port}"})
    probe = outcome_for(path, MAPS).probe
    assert probe.reason == Reason.PROXY_UNREACHABLE, probe.detail


# ------------------------------------------------------------------ the connection


@linux_only
@pytest.mark.parametrize("loop_factory", event_loops())
def test_connection_reads_what_came_while_nobody_was_reading(loop_factory):
    """Bytes that arrive while no read waits (the loop then stops watching the
    socket) are read later, and a later read is woken when more arrive."""
    import asyncio
    import socket

    from exporter.probes._conn import Connection

    listener = socket.create_server(("127.0.0.1", 0))

    async def main() -> None:
        conn = await Connection.connect(socket.AF_INET, listener.getsockname())
        server_side, _ = listener.accept()
        try:
            server_side.sendall(b"hello")
            await asyncio.sleep(0.05)  # the loop reports the bytes; nobody is reading
            async with asyncio.timeout(2):
                assert await conn.read(5) == b"hello"
                asyncio.get_running_loop().call_later(0.05, server_side.sendall, b"world")
                assert await conn.read(5) == b"world"
                asyncio.get_running_loop().call_later(0.05, server_side.close)
                assert await conn.read(5) == b""
                assert conn.at_eof()
        finally:
            conn.abort()
            conn.abort()  # twice: never raises
            server_side.close()

    factory = loop_factory
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    finally:
        listener.close()


def test_every_reason_is_documented_and_tested():
    """Each Reason appears in this file or test_routes.py (so a new reason needs a test) and in the README."""
    from pathlib import Path

    source = Path(__file__).read_text() + (Path(__file__).parent / "test_routes.py").read_text()
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for reason in Reason:
        assert f"Reason.{reason.name}" in source, f"no test produces {reason}"
        assert f"`{reason.value}`" in readme, f"README does not document {reason}"


def test_a_bug_in_the_probe_path_is_logged_with_its_traceback_once(tmp_path, lab_pki, lab_servers, monkeypatch,
                                                                   caplog):
    """translate()'s catch-all still reports a reason, but a bug of ours must not
    pass for the endpoint's failure unseen: its traceback is logged, once per
    exception type and target (not once per probe), by each exporter for itself
    (the log belongs to its ProbeEnv: two exporters in one process share nothing)."""
    import asyncio
    import logging

    from exporter.config import load_config
    from exporter.probes import ProbeEnv, run_probe

    def broken_verify(self, presented, host):
        raise ZeroDivisionError("a bug in the chain check")

    monkeypatch.setattr(TrustStore, "verify", broken_verify)
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    connect_to = [server.connect_to("wdcp.microsoft.com", 443)]
    config = load_config(lab_config(tmp_path, {"maps": [MAPS]}, connect_to=connect_to, ca_file=lab_pki.ca_bundle_path))
    [job] = config.jobs()
    caplog.set_level(logging.ERROR, logger="exporter.probes")

    async def probes():
        one, other = ProbeEnv.from_config(config), ProbeEnv.from_config(config)
        return [await run_probe(job, env) for env in (one, one, other)]

    probes = asyncio.run(probes())
    assert all(p.reason == Reason.HTTP_ERROR and "unexpected ZeroDivisionError" in p.detail for p in probes)
    logged = [r for r in caplog.records if r.name == "exporter.probes"]
    assert len(logged) == 2, [r.getMessage() for r in logged]  # once by each env, not per probe
    assert MAPS in logged[0].getMessage() and "ZeroDivisionError" in logged[0].getMessage()
    assert logged[0].exc_info is not None and "a bug in the chain check" in caplog.text
