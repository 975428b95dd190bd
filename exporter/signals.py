"""Stop and reload signals, with what each platform has.

POSIX loops take SIGTERM/SIGINT (stop) and SIGHUP (reload) through
loop.add_signal_handler. Windows' loops have no add_signal_handler (it raises
NotImplementedError), and Windows has no SIGHUP. There, stop comes through
signal.signal: Ctrl+C (SIGINT), Ctrl+Break (SIGBREAK, what service wrappers
such as WinSW or NSSM send on stop) and SIGTERM where it is delivered; the
handler hands over to the loop thread. Reload is then only POST /-/reload.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("exporter")

_STOP_NAMES = ("SIGTERM", "SIGINT", "SIGBREAK")


def install(loop: asyncio.AbstractEventLoop, stop: Callable[[], None], reload: Callable[[], None]) -> list[str]:
    """Route stop and reload signals to `stop` and `reload` (called on the loop's thread).
    Returns the names of the signals routed, e.g. ["SIGTERM", "SIGINT", "SIGHUP"]."""
    stops = [getattr(signal, name) for name in _STOP_NAMES if hasattr(signal, name)]
    try:
        for sig in stops:
            loop.add_signal_handler(sig, stop)
        routed = [sig.name for sig in stops]
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, reload)
            routed.append("SIGHUP")
        return routed
    except NotImplementedError:  # all or nothing: such a loop refuses every signal
        pass
    routed = []
    for sig in stops:
        try:
            signal.signal(sig, lambda _signum, _frame: loop.call_soon_threadsafe(stop))
            routed.append(sig.name)
        except (OSError, ValueError, RuntimeError):  # not settable here (not the main thread, not supported)
            continue
    log.info("this event loop has no signal handlers: stop with %s; reload with POST /-/reload",
             ", ".join(routed) or "no signal")
    return routed

