"""Turn the ResultStore into metric families at scrape time; no I/O here.

Sample (one HTTPS target, abridged):

    defender_target_info{group="maps",target="https://wdcp.microsoft.com/",route="defender",pattern="*.wdcp.microsoft.com",port="443"} 1
    defender_probe_success{group="maps",target="https://wdcp.microsoft.com/",route="defender"} 0
    defender_probe_failure_reason{group="maps",target="https://wdcp.microsoft.com/",route="defender",reason="dns_error"} 1
    defender_probe_phase_duration_seconds{group="maps",...,phase="resolve"} 0.0004
    defender_probes_total{group="maps",...,result="failure"} 3
"""

from __future__ import annotations

import platform
import time
from typing import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from . import metrics as m
from .crl import CRLCache
from .hostside import host_metric_families
from .state import ResultStore


def _gauge(spec: m.MetricSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


class DefenderCollector(Collector):
    def __init__(self, store: ResultStore, *, crl_cache: CRLCache | None = None,
                 extra: tuple[Collector, ...] = ()):
        self.store = store
        self.crl_cache = crl_cache
        self.extra = extra

    def describe(self) -> list[Metric]:
        # Describing nothing keeps registration from calling collect() early.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.collect_targets()
        if self.crl_cache is not None:
            yield from self.collect_crls()
        yield from self.collect_exporter()
        for collector in self.extra:
            yield from collector.collect()

    def collect_targets(self, keys=None) -> Iterator[Metric]:
        store = self.store
        info = _gauge(m.TARGET_INFO)
        success = _gauge(m.PROBE_SUCCESS)
        duration = _gauge(m.PROBE_DURATION)
        phases = _gauge(m.PROBE_PHASE_DURATION)
        status = _gauge(m.PROBE_HTTP_STATUS)
        reason = _gauge(m.PROBE_FAILURE_REASON)
        last_run = _gauge(m.PROBE_LAST_RUN)
        totals = CounterMetricFamily(m.PROBES_TOTAL.name, m.PROBES_TOTAL.help, labels=m.PROBES_TOTAL.labels)
        latency = HistogramMetricFamily(m.PROBE_LATENCY.name, m.PROBE_LATENCY.help, labels=m.PROBE_LATENCY.labels)
        tls_version = _gauge(m.TLS_VERSION_INFO)
        tls_cipher = _gauge(m.TLS_CIPHER_INFO)
        not_after = _gauge(m.TLS_CERT_NOT_AFTER)
        verified = _gauge(m.TLS_CHAIN_VERIFIED)
        revoked = _gauge(m.TLS_CERT_REVOKED)
        intercepted = _gauge(m.TLS_INTERCEPTED)
        maps_valid = _gauge(m.MAPS_CONNECTION_VALID)
        maps_info = _gauge(m.MAPS_VALIDATION_INFO)

        for key in keys if keys is not None else store.jobs:
            job = store.jobs[key]
            labels = [job.group.name, job.target.url, job.route.name]
            info.add_metric(labels + [job.target.pattern, str(job.target.port)], 1)
            stats = store.stats.get(key)
            if stats is not None:
                totals.add_metric(labels + ["success"], stats.successes)
                totals.add_metric(labels + ["failure"], stats.failures)
                latency.add_metric(labels, stats.latency.cumulative(), stats.latency.total)
            outcome = store.latest.get(key)
            if outcome is None:
                continue
            probe = outcome.probe
            success.add_metric(labels, 1 if probe.success else 0)
            duration.add_metric(labels, probe.duration)
            for phase, seconds in probe.phases:
                phases.add_metric(labels + [phase], seconds)
            status.add_metric(labels, probe.http_status)
            if probe.reason is not None:
                reason.add_metric(labels + [str(probe.reason)], 1)
            last_run.add_metric(labels, probe.finished_at)
            tls = probe.tls
            if tls is not None:
                tls_version.add_metric(labels + [tls.version], 1)
                tls_cipher.add_metric(labels + [tls.cipher], 1)
                verified.add_metric(labels, 1 if tls.verified else 0)
                for depth, cert in enumerate(tls.presented):
                    not_after.add_metric(
                        labels + [str(depth), cert.subject, cert.issuer, cert.serial, cert.fingerprint_sha256],
                        cert.not_after,
                    )
            if outcome.revoked is not None:
                revoked.add_metric(labels, 1 if outcome.revoked else 0)
            if outcome.intercepted is not None:
                intercepted.add_metric(labels, 1 if outcome.intercepted else 0)
            verdict = outcome.maps
            if verdict is not None:
                maps_valid.add_metric(labels + [verdict.source], 1 if verdict.valid else 0)
                if not verdict.valid:
                    maps_info.add_metric(labels + [verdict.source, verdict.hresult, verdict.cause, verdict.reason], 1)
        host_gauges = self._add_host(maps_valid, maps_info)
        yield from host_gauges
        yield from (
            info, success, duration, phases, status, reason, last_run, totals, latency,
            tls_version, tls_cipher, not_after, verified, revoked, intercepted, maps_valid, maps_info,
        )

    def _add_host(self, maps_valid: GaugeMetricFamily, maps_info: GaugeMetricFamily) -> list[Metric]:
        """Host-side collectors (MpCmdRun, mdatp): their MAPS verdicts join the
        MAPS families (one family per name), the host gauges stand alone."""
        snapshot = self.store.host_snapshot
        if snapshot is None:
            return []
        others = []
        for family in host_metric_families(snapshot):
            target = {m.MAPS_CONNECTION_VALID.name: maps_valid, m.MAPS_VALIDATION_INFO.name: maps_info}.get(family.name)
            if target is None:
                others.append(family)
            else:
                target.samples.extend(family.samples)
        return others

    def collect_crls(self) -> Iterator[Metric]:
        """CRL distribution points seen in probed chains, as last checked."""
        reachable = _gauge(m.CRL_REACHABLE)
        fetch = _gauge(m.CRL_FETCH_DURATION)
        this_update = _gauge(m.CRL_THIS_UPDATE)
        next_update = _gauge(m.CRL_NEXT_UPDATE)
        valid = _gauge(m.CRL_VALID)
        size = _gauge(m.CRL_SIZE)
        now = time.time()
        for (url, route), check in sorted(self.crl_cache.checks.items()):
            reachable.add_metric([url, route], 1 if check.reachable else 0)
            fetch.add_metric([url, route], check.duration)
        for url, doc in sorted(self.crl_cache.documents.items()):
            this_update.add_metric([url, doc.issuer], doc.this_update)
            if doc.next_update is not None:
                next_update.add_metric([url, doc.issuer], doc.next_update)
            size.add_metric([url], doc.size)
        for url in sorted({url for url, _ in self.crl_cache.checks}):
            valid.add_metric([url], 1 if self.crl_cache.document_valid(url, now) else 0)
        yield from (reachable, fetch, this_update, next_update, valid, size)

    def collect_exporter(self) -> Iterator[Metric]:
        store = self.store
        build = _gauge(m.BUILD_INFO)
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        targets = _gauge(m.EXPORTER_TARGETS)
        per_group: dict[str, int] = {}
        for job in store.jobs.values():
            per_group[job.group.name] = per_group.get(job.group.name, 0) + 1
        for group, count in sorted(per_group.items()):
            targets.add_metric([group], count)
        yield targets
        lag = HistogramMetricFamily(m.SCHEDULER_LAG.name, m.SCHEDULER_LAG.help)
        lag.add_metric([], store.lag.cumulative(), store.lag.total)
        yield lag
        reload_ok = _gauge(m.CONFIG_RELOAD_SUCCESSFUL)
        reload_ok.add_metric([], 1 if store.reload_successful else 0)
        yield reload_ok
        reload_ts = _gauge(m.CONFIG_RELOAD_TIMESTAMP)
        reload_ts.add_metric([], store.reload_success_timestamp)
        yield reload_ts
