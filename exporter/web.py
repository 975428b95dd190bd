"""The HTTP side: /metrics, /probe, /config, the status page and the lifecycle endpoints.

    GET  /           status page (statuspage.py): every target, its last result, the MAPS verdict
    GET  /metrics    the exposition, built from the ResultStore (a scrape never probes)
    GET  /probe      ?target=URL[&route=R][&group=G][&debug=true]: one probe now (ondemand.py)
    GET  /config     the running configuration as YAML, proxy passwords redacted
    GET  /-/healthy  200 while the process serves (open even with basic auth)
    GET  /-/ready    200 once every job of the first configuration has a result, else 503 (open)
    POST /-/reload   re-read the config file (as SIGHUP does); 500 keeps the running config

Only /probe waits for the network, and it is allow-listed and rate limited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import ondemand
from .basicauth import BasicAuth, Verdict
from .ondemand import NotAllowed, ProbeLimits, RateLimiter
from .redact import Redactor
from .runtime import Exporter
from .statuspage import render_config, render_status
from .webconfig import WebConfig
from .wording import plural

log = logging.getLogger("exporter.web")

EXPORTER_KEY = web.AppKey("exporter", Exporter)
LIMITER_KEY = web.AppKey("probe_limiter", RateLimiter)

# Health checks of containers and load balancers carry no credentials.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
TEXT = "text/plain"
# Bytes of /metrics body that may wait in the transport (see metrics()).
METRICS_WRITE_BUFFER = 4 * 1024 * 1024
# Seconds after a /metrics response when a due full garbage collection runs.
GC_AFTER_SCRAPE = 1.0
# Seconds the shutdown may take; SIGTERM must end the process within 5 s.
SHUTDOWN_GRACE = 4.0


async def serve(exporter: Exporter, host: str | None, port: int, stop: asyncio.Event, *,
                web_config: WebConfig | None = None, probe_limits: ProbeLimits | None = None,
                started: Callable[[], None] | None = None) -> None:
    """Serve `exporter` on host:port until `stop` is set: the one start-up and
    shutdown, for the CLI and the tests alike. Listening comes first (an OSError
    if it cannot), then probing and the full-collection policy; `started` is
    called once all runs. TLS: exporter.web_ssl_context."""
    runner = web.AppRunner(make_app(exporter, web_config=web_config, probe_limits=probe_limits),
                           access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=exporter.web_ssl_context, reuse_address=True)
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    exporter.start()
    exporter.full_collections.start()
    try:
        if started is not None:
            started()
        await stop.wait()
        log.info("shutting down")
    finally:
        exporter.full_collections.stop()
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE):
                await exporter.stop()
                await runner.cleanup()
        except TimeoutError:
            log.warning("shutdown took longer than %.0f s; exiting anyway", SHUTDOWN_GRACE)


def make_app(exporter: Exporter, *, web_config: WebConfig | None = None,
             probe_limits: ProbeLimits | None = None) -> web.Application:
    middlewares = [_errors_middleware]
    if web_config is not None:
        middlewares.append(_security_middleware(web_config))
    app = web.Application(client_max_size=64 * 1024, middlewares=middlewares)
    if web_config is not None:
        # Every answer, errors and streamed ones (/metrics sends its headers at
        # prepare(), before a middleware sees it again), gets the configured headers.
        async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
            response.headers.update(web_config.headers)

        app.on_response_prepare.append(add_headers)
    app[EXPORTER_KEY] = exporter
    app[LIMITER_KEY] = RateLimiter(probe_limits or ProbeLimits())
    app.router.add_get("/", status_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/config", config)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    return app


@web.middleware
async def _errors_middleware(request: web.Request, handler):
    """A bug in a handler answers 500 and is logged; it never takes the server down."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("handler for %s failed", request.path)
        return web.Response(status=500, text="Internal error; see the exporter's log.\n")


def _security_middleware(config: WebConfig):
    auth = BasicAuth(config)

    @web.middleware
    async def middleware(request: web.Request, handler):
        if config.users and request.path not in OPEN_PATHS:
            verdict = await _authorize(request, auth)
            if verdict.retry_after > 0:
                seconds = ondemand.retry_after(verdict.retry_after)
                return web.Response(status=429, text=f"Too many failed logins; retry in {seconds} s.\n",
                                    headers={"Retry-After": seconds})
            if not verdict.ok:
                return web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="defender-connectivity-exporter"'})
        return await handler(request)  # http_server_config.headers are added in on_response_prepare

    return middleware


async def _authorize(request: web.Request, auth: BasicAuth) -> Verdict:
    # RFC 9110 11.1: the scheme name is case-insensitive ("basic", "BASIC").
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return Verdict(False)
    try:
        user, sep, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return Verdict(False)
    if not sep:
        return Verdict(False)
    return await auth.check(user, password)


async def metrics(request: web.Request) -> web.StreamResponse:
    """The exposition from per-target fragments rendered when results change
    (collector.iter_exposition), streamed so the body is never held whole:
    at 10,000 targets it is tens of megabytes."""
    exporter = request.app[EXPORTER_KEY]
    wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
    if wants_gzip:
        response.headers["Content-Encoding"] = "gzip"  # already compressed: no enable_compression()
    # iter_exposition takes its snapshot of the fragments before yielding the
    # first piece, so writing (which yields to the loop) cannot mix two moments.
    pieces = exporter.collector.iter_exposition(gzip=wants_gzip)
    # New probes wait (a little) while the body goes out (scheduler.SCRAPE_HOLD).
    scrapes = exporter.scheduler.scrapes
    scrapes.started()
    try:
        await response.prepare(request)
        if request.transport is not None:
            # Let a few megabytes queue in the transport before write() waits: each
            # wait is a trip round the event loop, behind whatever probes are doing.
            request.transport.set_write_buffer_limits(high=METRICS_WRITE_BUFFER)
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
    finally:
        scrapes.finished()
    # The next scrape is a scrape interval away: a full collection in a
    # moment (once the transport has sent the last queued bytes), if one is
    # due, pauses nobody's scrape (gcpolicy.py).
    asyncio.get_running_loop().call_later(GC_AFTER_SCRAPE, exporter.full_collections.scrape_finished)
    return response


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    if exporter.ready:
        return web.Response(text="Ready.\n")
    done, total = exporter.first_round()
    return web.Response(status=503, text=f"Not ready: first round {done}/{total} probes done.\n")


async def reload(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    ok, error = await exporter.reload()
    if ok:
        return web.Response(text=f"Reloaded: {plural(len(exporter.store.jobs), 'probe job')}.\n")
    # ConfigError messages never echo a proxy URL; redact against the running config anyway.
    return web.Response(status=500,
                        text=f"Reload failed; the running configuration is kept.\n{Redactor(exporter.config)(error)}\n")


async def status_page(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    page = render_status(exporter.config, exporter.store, reload_successful=exporter.reload_successful)
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def config(request: web.Request) -> web.Response:
    return web.Response(text=render_config(request.app[EXPORTER_KEY].config), content_type=TEXT)


async def probe(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    query = request.query
    debug = query.get("debug", "").lower() in ("1", "true", "yes")
    try:
        job = ondemand.find_job(exporter.config, query.get("target", ""),
                                route=query.get("route") or None, group=query.get("group") or None)
    except NotAllowed as exc:
        return web.Response(status=400, text=f"{exc}\n", content_type=TEXT)
    limiter = request.app[LIMITER_KEY]
    key = job.target.url
    wait = limiter.acquire(key)
    if wait > 0:
        seconds = ondemand.retry_after(wait)
        log.debug("on-demand probe of %s refused by the rate limit; retry in %s s", key, seconds)
        return web.Response(status=429, text=f"Too many on-demand probes; retry in {seconds} s.\n",
                            headers={"Retry-After": seconds}, content_type=TEXT)
    try:
        result = await ondemand.run(exporter, job)
    finally:
        limiter.release(key)
    if debug:
        return web.Response(text=ondemand.render_debug(result, Redactor(exporter.config)), content_type=TEXT)
    if result.outcome is None:
        return web.Response(status=504, text=f"{result.error}\n", content_type=TEXT)
    return web.Response(body=ondemand.exposition(result), headers={"Content-Type": CONTENT_TYPE_LATEST})
