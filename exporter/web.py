"""The HTTP side: /metrics, /-/healthy, /-/ready, /-/reload and a landing page.

Handlers only read the ResultStore; nothing here waits for a probe.
"""

from __future__ import annotations

import base64
import binascii
import html
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .runtime import Exporter
from .webconfig import WebConfig

log = logging.getLogger("exporter.web")

EXPORTER_KEY = web.AppKey("exporter", Exporter)


# Health checks of containers and load balancers carry no credentials.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})


def make_app(exporter: Exporter, *, web_config: WebConfig | None = None) -> web.Application:
    middlewares = []
    if web_config is not None:
        middlewares.append(_security_middleware(web_config))
    app = web.Application(client_max_size=64 * 1024, middlewares=middlewares)
    app[EXPORTER_KEY] = exporter
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/", landing)
    return app


def _security_middleware(config: WebConfig):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if config.users and request.path not in OPEN_PATHS and not _authorized(request, config):
            response = web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="defender-connectivity-exporter"'})
        else:
            response = await handler(request)
        response.headers.update(config.headers)
        return response

    return middleware


def _authorized(request: web.Request, config: WebConfig) -> bool:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return config.check_password(user, password)


async def metrics(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    body = generate_latest(exporter.registry)
    response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression()
    return response


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    store = request.app[EXPORTER_KEY].store
    if store.ready:
        return web.Response(text="Ready.\n")
    done = sum(1 for key in store.initial_jobs if key in store.latest)
    return web.Response(status=503, text=f"Not ready: first round {done}/{len(store.initial_jobs)} probes done.\n")


async def reload(request: web.Request) -> web.Response:
    ok, error = await request.app[EXPORTER_KEY].reload()
    if ok:
        return web.Response(text="Reloaded.\n")
    return web.Response(status=500, text=f"Reload failed; the running configuration is kept.\n{error}\n")


async def landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    store = exporter.store
    failing = sum(1 for o in store.latest.values() if not o.probe.success)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Defender connectivity exporter</title></head>
<body>
<h1>Defender connectivity exporter {html.escape(__version__)}</h1>
<p>{len(store.jobs)} probe jobs, {len(store.latest)} with a result, {failing} failing.
Configuration: {html.escape(exporter.config.source)}.</p>
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li>
</ul>
</body></html>
"""
    return web.Response(text=page, content_type="text/html")
