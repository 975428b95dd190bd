"""Full garbage collections run on the exporter's timer, not CPython's trigger."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

from exporter.gcpolicy import FullCollections
from support import CATALOGUE_GROUPS


class _Node:
    def __init__(self) -> None:
        self.other = self


def test_full_collections_run_on_the_timer_and_thresholds_come_back():
    before = gc.get_threshold()
    seen = {}

    async def main() -> None:
        policy = FullCollections(interval=0.3)
        policy.start()
        try:
            seen["threshold"] = gc.get_threshold()
            full_before = gc.get_stats()[2]["collections"]
            # Cyclic garbage that only a full collection frees, aged into generation 2.
            node = _Node()
            ref = weakref.ref(node)
            gc.collect(1)
            gc.collect(1)
            del node
            # Lots of young allocations: CPython would run full collections on its own.
            keep = []
            for _ in range(200):
                keep.append([[] for _ in range(1000)])
                await asyncio.sleep(0)
            seen["full_by_cpython"] = gc.get_stats()[2]["collections"] - full_before
            seen["alive_before_timer"] = ref() is not None
            await asyncio.sleep(0.5)
            seen["alive_after_timer"] = ref() is not None
            seen["full_after_timer"] = gc.get_stats()[2]["collections"] - full_before
        finally:
            policy.stop()

    asyncio.run(main())
    assert seen["threshold"][:2] == before[:2] and seen["threshold"][2] > 10**6
    assert seen["full_by_cpython"] == 0
    assert seen["alive_before_timer"] and not seen["alive_after_timer"]
    assert seen["full_after_timer"] >= 1
    assert gc.get_threshold() == before


def test_a_due_full_collection_runs_after_a_scrape_not_before(tmp_path, free_port):
    """With a scrape, the full collection happens just after it (when due),
    not at the backstop half a period later."""
    import urllib.request

    from aiohttp import web as aioweb

    from exporter import web
    from exporter.config import parse_config
    from exporter.runtime import Exporter


    seen = {}

    async def main() -> None:
        off = ", ".join(f"{g}: {{enabled: false}}" for g in CATALOGUE_GROUPS)
        exporter = Exporter(parse_config(f"groups: {{{off}}}\n"))
        runner = aioweb.AppRunner(web.make_app(exporter))
        await runner.setup()
        port = free_port()
        await aioweb.TCPSite(runner, "127.0.0.1", port).start()
        policy = exporter.full_collections = FullCollections(interval=4.0)  # due at 4 s, the backstop at 6 s
        policy.start()
        t0 = time.monotonic()

        async def scrape_at(when: float) -> None:
            await asyncio.sleep(max(0.0, t0 + when - time.monotonic()))
            await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read())

        try:
            full = lambda: gc.get_stats()[2]["collections"]  # noqa: E731
            start = full()
            await scrape_at(0.0)
            await asyncio.sleep(web.GC_AFTER_SCRAPE + 0.3)
            seen["not_due_yet"] = full() - start
            await scrape_at(4.1)
            await asyncio.sleep(web.GC_AFTER_SCRAPE + 0.3)  # before the backstop
            seen["after_due_scrape"] = full() - start
        finally:
            policy.stop()
            await runner.cleanup()
        seen["inactive"] = not policy.running

    asyncio.run(main())
    assert seen["not_due_yet"] == 0
    assert seen["after_due_scrape"] == 1
    assert seen["inactive"]
