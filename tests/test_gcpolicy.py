"""Full garbage collections run on the exporter's timer, not CPython's trigger."""

from __future__ import annotations

import asyncio
import gc
import weakref

from exporter.gcpolicy import FullCollections


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
