"""Run the exporter's CLI with the variants the bench compares, without
touching the shipped files:

    BENCH_UVLOOP=1          uvloop's event loop (what an `--event-loop uvloop`
                            option of exporter/cli.py would do)
    BENCH_CACHED_METRICS=1  /metrics served by collector.render_exposition()
                            (the change proposed for exporter/web.py)
    BENCH_GC_LOG=1          log every full garbage collection and its pause

    python bench/exporter_variant.py --config.file F --web.listen-address 127.0.0.1:PORT
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if os.environ.get("BENCH_GC_LOG") == "1":
    # Log every full (generation 2) collection and its pause to stderr.
    import gc
    import time

    _gc_started = [0.0]

    def _gc_timer(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            _gc_started[0] = time.perf_counter()
        else:
            print(f"gc2 {time.time():.3f} {1000 * (time.perf_counter() - _gc_started[0]):.1f} ms "
                  f"collected={info.get('collected')}", file=sys.stderr, flush=True)

    gc.callbacks.append(_gc_timer)

if os.environ.get("BENCH_UVLOOP") == "1":
    import uvloop

    uvloop.install()

if os.environ.get("BENCH_CACHED_METRICS") == "1":
    from aiohttp import web as aioweb
    from prometheus_client import CONTENT_TYPE_LATEST

    from exporter import web

    async def metrics(request: aioweb.Request) -> aioweb.StreamResponse:
        exporter = request.app[web.EXPORTER_KEY]
        wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        if wants_gzip:
            headers["Content-Encoding"] = "gzip"  # the pieces are gzip members already
        response = aioweb.StreamResponse(headers=headers)
        await response.prepare(request)
        for piece in exporter.collector.iter_exposition(gzip=wants_gzip):
            await response.write(piece)
        await response.write_eof()
        return response

    web.metrics = metrics

from exporter.cli import main  # noqa: E402

sys.exit(main())
