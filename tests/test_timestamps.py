"""The `processing` phase is dated by the kernel, not by a busy event loop.

The server answers 50 ms after the request; meanwhile the test blocks the
prober's event loop for 200 ms, as 500 handshakes in flight would. The answer
waits in the socket, and a probe that dated its first byte by when it read it
would say 200 ms. Each case runs on the stdlib loop and on uvloop.
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
from support import event_loops, lab_config, linux_only, recv_head

from exporter.config import load_config
from exporter.probes import ProbeEnv, http

SERVER_DELAY = 0.05
LOOP_BLOCKED = 0.2
# The server's own lateness on a busy test machine; far below what a blocked loop would add.
SLACK = 0.015

pytestmark = linux_only
loops = pytest.mark.parametrize("loop_factory", event_loops())


def probe_once(path, loop_factory, *, block_loop: bool, sent: list[float] | None = None):
    """Probe the config's one job on a fresh loop; with block_loop, the loop
    sleeps LOOP_BLOCKED seconds from the moment the request has been sent.
    `sent` gets the time.perf_counter() of that moment."""
    config = load_config(path)
    [job] = config.jobs()
    prober = http.probe

    def trace(message: str) -> None:
        # Logged right after the request went out, before the first read waits:
        # the callback runs as soon as the prober yields, while the answer is pending.
        if "sent GET" in message:
            if sent is not None:
                sent.append(time.perf_counter())
            if block_loop:
                asyncio.get_running_loop().call_soon(time.sleep, LOOP_BLOCKED)

    async def main():
        return await prober(job, ProbeEnv.from_config(config), trace=trace)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def assert_processing_is_the_servers_hold(probe, sent: float, answered: float) -> float:
    """`processing` runs from the request to the answer's arrival: at least the
    server's delay, and no more than the server really held the request (on a
    loaded machine it answers late itself) plus SLACK; never the time the
    prober's loop was blocked. Returns the hold."""
    held = max(SERVER_DELAY, answered - sent)
    assert SERVER_DELAY - 0.001 <= probe.phase("processing") < held + SLACK, (probe.phases, held)
    return held


def assert_phases_add_up(probe) -> None:
    total = sum(seconds for _, seconds in probe.phases)
    assert total <= probe.duration + 1e-6
    assert probe.duration - total < 0.005, (probe.phases, probe.duration)


@loops
def test_https_processing_is_dated_by_the_kernel_while_the_loop_is_blocked(tmp_path, lab_pki, lab_servers,
                                                                            loop_factory):
    server = lab_servers.serve(Delay(SERVER_DELAY), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    path = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]},
                      connect_to=[server.connect_to("wdcp.microsoft.com", 443)], ca_file=lab_pki.ca_bundle_path)
    sent: list[float] = []
    probe = probe_once(path, loop_factory, block_loop=True, sent=sent)
    assert probe.success, probe.detail
    assert probe.duration > LOOP_BLOCKED, "the loop was not blocked: the test proves nothing"
    held = assert_processing_is_the_servers_hold(probe, sent[0], server.answered_at[0])
    assert held < LOOP_BLOCKED - SLACK, "the server was later than the blocked loop: the test proves nothing"
    # The wait for the loop shows where it happened: after the first byte.
    assert probe.phase("transfer") > LOOP_BLOCKED - held - SLACK
    assert_phases_add_up(probe)


@loops
@pytest.mark.parametrize("block_loop", [True, False], ids=["loop-blocked", "unloaded"])
def test_http_processing_is_dated_by_the_kernel(tmp_path, lab_servers, loop_factory, block_loop):
    server = lab_servers.serve(Delay(SERVER_DELAY), port=80)
    url = "http://go.microsoft.com/"
    path = lab_config(tmp_path, {"adl": [url]}, connect_to=[server.connect_to("go.microsoft.com", 80)])
    sent: list[float] = []
    probe = probe_once(path, loop_factory, block_loop=block_loop, sent=sent)
    assert probe.success, probe.detail
    held = assert_processing_is_the_servers_hold(probe, sent[0], server.answered_at[0])
    if block_loop:
        assert probe.duration > LOOP_BLOCKED, "the loop was not blocked: the test proves nothing"
        assert held < LOOP_BLOCKED - SLACK, "the server was later than the blocked loop: the test proves nothing"
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
        self.answered_at: list[float] = []  # time.perf_counter() as each answer goes out
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
        sent: list[float] = []
        probe = probe_once(path, loop_factory, block_loop=False, sent=sent)
        blocked = probe_once(path, loop_factory, block_loop=True, sent=sent)
    for p, sent_at, answered in zip((probe, blocked), sent, server.answered_at):
        assert p.success, p.detail
        assert p.tls.version == "TLSv1.3"
        assert_processing_is_the_servers_hold(p, sent_at, answered)
        assert_phases_add_up(p)
