"""The `processing` phase is dated by the kernel, not by a busy event loop.

The server answers 50 ms after the request; meanwhile the test blocks the
prober's event loop for 300 ms, as 500 handshakes in flight would. The answer
waits in the socket, and a probe that dated its first byte by when it read it
would say 300 ms. Each case runs on the stdlib loop and on uvloop.

Every bound is causal, on the one clock that the prober, its trace and the
lab servers share (time.perf_counter(), one process): the request went out
between two trace lines, the answer arrived between the server's noting it
and its write's return. A loaded machine widens the bounds, never breaks
them; a prober that counted its blocked loop still fails them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from typing import Self

import pytest
from lab.servers import Delay
from support import Marks, event_loops, lab_config, linux_only, recv_head, wait_for

from exporter.config import load_config
from exporter.probes import ProbeEnv, http

SERVER_DELAY = 0.05
LOOP_BLOCKED = 0.3
# The kernel's stamp moved onto time.perf_counter()'s clock (_conn.Connection.arrival): within this.
CLOCKS = 0.002
# A measurement whose premise a busy machine spoiled is taken again, this many times at most.
ATTEMPTS = 3

pytestmark = linux_only
loops = pytest.mark.parametrize("loop_factory", event_loops())


def probe_once(path, loop_factory, *, block_loop: bool) -> tuple:
    """Probe the config's one job on a fresh loop: (result, its trace's Marks).
    With block_loop, the loop sleeps LOOP_BLOCKED seconds from the moment the
    request has been sent."""
    config = load_config(path)
    [job] = config.jobs()
    marks = Marks()

    def trace(message: str) -> None:
        marks(message)
        # Logged right after the request went out, before the first read waits:
        # the callback runs as soon as the prober yields, while the answer is pending.
        if block_loop and "sent GET" in message:
            asyncio.get_running_loop().call_soon(time.sleep, LOOP_BLOCKED)

    async def main():
        return await http.probe(job, ProbeEnv.from_config(config), trace=trace)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main()), marks


def measured(path, loop_factory, server, *, block_loop: bool):
    """Probe once, and say when the server's answer went out: (result, marks,
    noted, written), the server's clock readings just before and just after
    its write. With the loop blocked, probe again (ATTEMPTS in all) while the
    machine was too busy for the measurement to tell a kernel stamp from a
    late read: the answer was not in the socket well before the loop was free."""
    for _ in range(ATTEMPTS):
        done = len(server.written_at)
        probe, marks = probe_once(path, loop_factory, block_loop=block_loop)
        assert probe.success, probe.detail
        # The prober may have the answer before the server's thread notes its write.
        wait_for(lambda: len(server.written_at) > done, what="the server noting its answer")
        noted, written = server.answered_at[done], server.written_at[done]
        if not block_loop or written - marks.before("sent GET") + CLOCKS < LOOP_BLOCKED:
            return probe, marks, noted, written
    pytest.fail(f"the server never answered well before the loop was free ({ATTEMPTS} tries): the test proves nothing")


def assert_processing_is_the_servers_hold(probe, marks: Marks, noted: float, written: float) -> None:
    """`processing` runs from the request to the answer's arrival: it began
    between the trace lines around the send ("sent GET" comes right after the
    phase begins) and the kernel dated the answer between the server's noting
    it and its write's return; never the time the prober's loop was blocked."""
    shortest = noted - marks.at("sent GET")
    longest = written - marks.before("sent GET")
    assert shortest - CLOCKS <= probe.phase("processing") <= longest + CLOCKS, (probe.phases, shortest, longest)
    assert shortest >= SERVER_DELAY - (marks.at("sent GET") - marks.before("sent GET")), "the server did not wait"


def assert_phases_add_up(probe) -> None:
    total = sum(seconds for _, seconds in probe.phases)
    assert total <= probe.duration + 1e-6
    assert probe.duration - total < 0.005, (probe.phases, probe.duration)


def assert_the_wait_for_the_loop_is_transfer(probe, marks: Marks, written: float) -> None:
    """The loop was free LOOP_BLOCKED after the request at the earliest; the
    answer was in the socket at `written` at the latest: the wait between is
    the transfer's (after the first byte), not the processing's."""
    assert probe.duration > LOOP_BLOCKED, "the loop was not blocked: the test proves nothing"
    assert probe.phase("transfer") >= marks.at("sent GET") + LOOP_BLOCKED - written - CLOCKS, probe.phases


@loops
def test_https_processing_is_dated_by_the_kernel_while_the_loop_is_blocked(tmp_path, lab_pki, lab_servers,
                                                                            loop_factory):
    server = lab_servers.serve(Delay(SERVER_DELAY), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    path = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                      connect_to=[server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    probe, marks, noted, written = measured(path, loop_factory, server, block_loop=True)
    assert_processing_is_the_servers_hold(probe, marks, noted, written)
    assert_the_wait_for_the_loop_is_transfer(probe, marks, written)
    assert_phases_add_up(probe)


@loops
@pytest.mark.parametrize("block_loop", [True, False], ids=["loop-blocked", "unloaded"])
def test_http_processing_is_dated_by_the_kernel(tmp_path, lab_servers, loop_factory, block_loop):
    server = lab_servers.serve(Delay(SERVER_DELAY), port=80)
    url = "http://go.microsoft.com/"
    path = lab_config(tmp_path, {"adl": [url]}, connect_to=[server.connect_to("go.microsoft.com", 80)])
    probe, marks, noted, written = measured(path, loop_factory, server, block_loop=block_loop)
    assert_processing_is_the_servers_hold(probe, marks, noted, written)
    if block_loop:
        assert_the_wait_for_the_loop_is_transfer(probe, marks, written)
    assert_phases_add_up(probe)


# ------------------------------------------------------------------ TLS 1.3 session tickets


class TicketServer:
    """TLS 1.3 with OpenSSL's default session tickets, which go out as the
    handshake completes (the lab's servers send none); the answer comes
    `delay` seconds after the request. One connection at a time."""

    def __init__(self, leaf, delay: float) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(leaf.chain_path, leaf.key_path)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        assert self.context.num_tickets > 0
        self.delay = delay
        # time.perf_counter() just before each answer is written, and once the write returned.
        self.answered_at: list[float] = []
        self.written_at: list[float] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ticket-server", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    recv_head(tls)
                    time.sleep(self.delay)
                    self.answered_at.append(time.perf_counter())  # first: the client may be quicker
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                    self.written_at.append(time.perf_counter())
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()


def test_ticket_server_sends_tickets(lab_pki):
    """The premise of the next test: a client of this server gets a ticket."""
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    context = ssl.create_default_context(cafile=str(lab_pki.ca_bundle_path))
    with (TicketServer(leaf, 0.0) as server,
          socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
          context.wrap_socket(raw, server_hostname="wdcp.microsoft.com") as tls):
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"GET / HTTP/1.1\r\nHost: wdcp.microsoft.com\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")  # tickets are read on the way
        assert tls.session is not None and tls.session.has_ticket


@loops
def test_tls13_session_tickets_are_not_the_first_byte(tmp_path, lab_pki, loop_factory):
    """Tickets arrive right after our request, 50 ms before the answer; the
    first byte is the first record that carries application data."""
    leaf = lab_pki.issue_leaf("wdcp.microsoft.com")
    with TicketServer(leaf, SERVER_DELAY) as server:
        path = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                          connect_to=[f"wdcp.microsoft.com:443:127.0.0.1:{server.port}"],
                          ca_file=lab_pki.ca_bundle_path)
        for block_loop in (False, True):
            probe, marks, noted, written = measured(path, loop_factory, server, block_loop=block_loop)
            assert probe.tls.version == "TLSv1.3"
            assert_processing_is_the_servers_hold(probe, marks, noted, written)
            assert_phases_add_up(probe)
