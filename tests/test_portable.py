"""Where Windows differs: no reader callbacks, no recvmsg, no loop signal handlers.

Windows' default event loop (Proactor) refuses add_reader/add_writer and add_signal_handler with
NotImplementedError, and Windows' sockets have no recvmsg. Neither exists on Linux, so these tests
run the real probes on a selector loop that refuses the same calls the same way (its own
transports keep working, as the Proactor's do), and hide recvmsg from the choice. The probe, MAPS
and lab test modules run a second time over the portable transport (conftest.probe_transport).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from lab.servers import Ok
from support import lab_config

from exporter import signals
from exporter.assess import Assessor
from exporter.config import load_config
from exporter.probes import ProbeEnv, _conn, _portable
from exporter.probes._net import ProbeState, translate

MAPS = "https://wdcp.microsoft.com/"


class ProactorLikeLoop(asyncio.SelectorEventLoop):
    """Refuses what Windows' Proactor loop refuses."""

    def add_reader(self, *args, **kwargs):
        raise NotImplementedError

    def add_writer(self, *args, **kwargs):
        raise NotImplementedError

    def add_signal_handler(self, *args, **kwargs):
        raise NotImplementedError


def _probe_on(loop_factory, path):
    config = load_config(path)

    async def main():
        env = ProbeEnv.from_config(config)
        (job,) = config.jobs()
        return await Assessor(config, trust=env.trust).run(job, env)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main()).probe


@pytest.fixture
def maps_config(tmp_path, lab_pki, lab_servers):
    server = lab_servers.serve(Ok(), port=443, tls=lab_pki.issue_leaf("wdcp.microsoft.com"))
    return lab_config(tmp_path, {"maps": [MAPS]}, connect_to=[server.connect_to("wdcp.microsoft.com", 443)],
                      ca_file=lab_pki.ca_bundle_path)


def _transport_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("probe transport")]


def test_a_loop_without_reader_callbacks_probes_over_the_portable_transport(maps_config, caplog, monkeypatch):
    monkeypatch.delenv(_portable.ENV, raising=False)
    caplog.set_level(logging.INFO, logger="exporter")
    probe = _probe_on(ProactorLikeLoop, maps_config)
    assert probe.success, probe.detail
    assert probe.http_status == 200 and probe.tls is not None
    phases = dict(probe.phases)
    assert phases["tls"] > 0 and phases["processing"] > 0 and phases["connect"] > 0
    assert 0 <= probe.duration - sum(phases.values()) < 0.005
    assert _transport_lines(caplog) == ["probe transport: portable (the event loop (ProactorLikeLoop) has no add_reader)"]


def test_a_platform_without_recvmsg_gets_the_portable_transport(maps_config, caplog, monkeypatch):
    monkeypatch.delenv(_portable.ENV, raising=False)
    monkeypatch.setattr(_portable, "_has_recvmsg", lambda: False)
    caplog.set_level(logging.INFO, logger="exporter")
    assert _probe_on(None, maps_config).success
    assert _transport_lines(caplog) == ["probe transport: portable (socket.recvmsg is not available on this platform)"]


def test_the_kernel_transport_is_the_default_and_the_variable_forces_portable(maps_config, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="exporter")
    monkeypatch.delenv(_portable.ENV, raising=False)
    assert _probe_on(None, maps_config).success
    monkeypatch.setenv(_portable.ENV, "portable")
    assert _probe_on(None, maps_config).success
    monkeypatch.setenv(_portable.ENV, "windows-please")
    assert _probe_on(None, maps_config).success
    assert _transport_lines(caplog) == [
        "probe transport: kernel (recvmsg with kernel receive timestamps)",
        "probe transport: portable (forced by DEFENDER_EXPORTER_TRANSPORT=portable)",
        "probe transport: kernel (recvmsg with kernel receive timestamps)",
    ]
    assert any("DEFENDER_EXPORTER_TRANSPORT=windows-please is not 'auto' or 'portable'" in r.getMessage()
               for r in caplog.records)


def test_the_kernel_transport_failing_on_a_platform_limit_falls_back(maps_config, caplog, monkeypatch):
    """Were the kernel transport chosen on a loop that cannot carry it, the probe would fail with
    NotImplementedError (which used to become http_error): it switches to portable instead."""
    monkeypatch.setattr(_portable, "_choose", lambda loop: (_conn.Connection, "chosen by the test"))
    caplog.set_level(logging.INFO, logger="exporter")
    probe = _probe_on(ProactorLikeLoop, maps_config)
    assert probe.success, probe.detail
    assert any(m.startswith("probe transport: portable from now on") for m in _transport_lines(caplog))


def test_translate_never_calls_a_platform_limitation_http_error():
    with pytest.raises(NotImplementedError):
        translate(NotImplementedError("add_reader"), ProbeState())


# ------------------------------------------------------------------------------------ signals


def test_signals_fall_back_where_the_loop_has_no_signal_handlers(caplog):
    caplog.set_level(logging.INFO, logger="exporter")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    loop = ProactorLikeLoop()
    stopped = []
    try:
        routed = signals.install(loop, lambda: stopped.append(True), lambda: None)
        assert routed == ["SIGTERM", "SIGINT"]  # no SIGHUP: reload is POST /-/reload there

        async def wait_for_stop():
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C
            for _ in range(100):
                if stopped:
                    return
                await asyncio.sleep(0.01)

        loop.run_until_complete(wait_for_stop())
        assert stopped == [True]
        assert any("reload with POST /-/reload" in r.getMessage() for r in caplog.records)
    finally:
        loop.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_signals_use_the_loop_where_it_can():
    loop = asyncio.new_event_loop()
    try:
        assert signals.install(loop, lambda: None, lambda: None) == ["SIGTERM", "SIGINT", "SIGHUP"]
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        loop.close()
