"""The running exporter: config, store, scheduler and collector, with reload.

One object owns the lifecycle (start, reload, stop) so that the CLI, the web
app and the tests drive it the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .assess import Assessor
from .collector import DefenderCollector
from .config import Config, ConfigError, HostConfig, load_config
from .gcpolicy import FullCollections
from .hostside import HostSnapshot, collect_host, emulated_evidence
from .webconfig import WebConfig, WebConfigError, load_web_config
from .wording import plural
from .redact import Redactor
from .probes import ProbeEnv
from .routes import host_route_checks
from .scheduler import Scheduler
from .state import ResultStore
from .statelog import StateLog

log = logging.getLogger("exporter")


class Exporter:
    def __init__(self, config: Config, *, config_path: str | Path | None = None,
                 web_config: WebConfig | None = None, web_config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        # --web.config.file: re-read on reload, applied to the running server in place.
        self.web_config = web_config
        self.web_config_path = web_config_path
        self.web_ssl_context: ssl.SSLContext | None = None
        self.store = ResultStore()
        env = ProbeEnv.from_config(config)
        self.assessor = Assessor(config, trust=env.trust)
        self.env = env.with_system_routes(self.assessor.system_routes_for)
        self.scheduler = Scheduler(self.store, self.env, config.jobs(), concurrency=config.concurrency,
                                   runner=self._run_job)
        # The exporter's own state, beside the store's results.
        self.first_jobs = frozenset(self.store.jobs)  # /-/ready waits for these
        self._ready = False
        self.reload_successful = True
        self.reload_success_timestamp = time.time()
        self.host_snapshot: HostSnapshot | None = None  # the host collectors' latest, when they run
        # Info lines on what changed, a summary after the first round (exporter/statelog.py).
        self.state_log = StateLog(self.store, ready=lambda: self.ready, redact=Redactor(config))
        self.collector = DefenderCollector(self)
        # Started by whoever serves (cli): it takes over the process's full collections.
        self.full_collections = FullCollections()
        self._task: asyncio.Task | None = None
        self._host_task: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """True once every job of the first configuration has a result (or was
        removed by a reload); it stays true."""
        if not self._ready:
            store = self.store
            self._ready = all(key in store.latest or key not in store.jobs for key in self.first_jobs)
        return self._ready

    def first_round(self) -> tuple[int, int]:
        """(jobs of the first configuration with a result, all of them)."""
        return sum(1 for key in self.first_jobs if key in self.store.latest), len(self.first_jobs)

    def _mark_reload(self, ok: bool) -> None:
        self.reload_successful = ok
        if ok:
            self.reload_success_timestamp = time.time()

    async def _run_job(self, job, env):
        # Through self.assessor at call time, so a reload's new settings apply.
        return await self.assessor.run(job, env)

    def start(self) -> None:
        # Name resolution runs in the default executor's threads; a resolver
        # that times out (5 s per try is common) must not hold up every other
        # probe, so give it as many threads as probes may be in flight (capped).
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=min(64, max(8, self.config.concurrency)),
                                                     thread_name_prefix="resolver"))
        self._task = loop.create_task(self.scheduler.run(), name="scheduler")
        self._restart_host_collector()

    def _restart_host_collector(self) -> None:
        if self._host_task is not None:
            self._host_task.cancel()
            self._host_task = None
        if self.config.host.enabled:
            self._host_task = asyncio.get_running_loop().create_task(self._collect_host(self.config.host),
                                                                     name="host-collector")
        else:
            self.host_snapshot = None

    async def _collect_host(self, host: HostConfig) -> None:
        """Defender's own tools, on their own (longer) interval."""
        while True:
            try:
                snapshot = await collect_host(host, evidence=emulated_evidence(self.store))
                checks = host_route_checks(snapshot, self.config.routes)
                self.host_snapshot = dataclasses.replace(snapshot, route_checks=checks)
                for error in snapshot.errors:
                    log.warning("host collector: %s", error)
                for route, expected, found in checks:
                    if expected != found:
                        log.warning("route %s is configured as %s, but this endpoint's settings give %s",
                                    route, expected, found)
            except Exception:  # a parser bug must not end the loop
                log.exception("host collector failed")
            await asyncio.sleep(host.interval)

    async def stop(self) -> None:
        self.assessor.routes.close()  # the PAC sandbox's worker, if one was started
        if self._host_task is not None:
            self._host_task.cancel()
            self._host_task = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file (and --web.config.file). A bad file keeps the
        running configuration, all of it: nothing is applied unless both are good."""
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
                env = await asyncio.to_thread(ProbeEnv.from_config, config, errors=self.env.errors)
                if self.web_config is not None and self.web_config_path:
                    new_web = await asyncio.to_thread(load_web_config, self.web_config_path)
                    self.web_config.update_from(new_web, self.web_ssl_context)
            except (ConfigError, WebConfigError) as exc:
                self._mark_reload(False)
                log.error("config reload failed, keeping the running config: %s", exc)
                return False, str(exc)
            self.config = config
            self.assessor = Assessor(config, crl_cache=self.assessor.crl_cache, ocsp_cache=self.assessor.ocsp_cache,
                                     trust=env.trust, pac_sandbox=self.assessor.routes.sandbox)
            self.env = env = env.with_system_routes(self.assessor.system_routes_for)
            self.state_log.redact = Redactor(config)
            self.scheduler.set_jobs(config.jobs(), env=env, concurrency=config.concurrency)
            self._mark_reload(True)
            if self._task is not None:
                self._restart_host_collector()
            log.info("config reloaded from %s: %s", config.source, plural(len(self.store.jobs), "probe job"))
            return True, ""

