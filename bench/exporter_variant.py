"""Run the exporter's CLI with the variants the bench compares, without
touching the shipped files:

    BENCH_UVLOOP=1          uvloop's event loop (what an `--event-loop uvloop`
                            option of exporter/cli.py would do)
    BENCH_CACHED_METRICS=1  /metrics served by collector.render_exposition()
                            (the change proposed for exporter/web.py)

    python bench/exporter_variant.py --config.file F --web.listen-address 127.0.0.1:PORT
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
