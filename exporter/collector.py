"""What the exporter exposes, as samples of the specs in metrics.py; no I/O here.

The one description of the series: `target_samples()` for each job's
per-target families, `DefenderCollector.live_samples()` for the rest (latency
and lag histograms, CRLs, host collectors, the exporter itself). Both
/metrics (exposition.ExpositionCache: per-job lines cached when a result
arrives) and /probe (ondemand.exposition) are written from them by the one
generic writer in exposition.py; `DefenderCollector.collect()` builds the same
families through prometheus_client, for anyone who registers the collector
(and for the test that compares the two byte for byte).
"""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from . import metrics as m
from .config import ProbeJob
from .crl import CRLCache
from .exposition import ExpositionCache, Sample
from .hostside import host_samples
from .assess import Outcome
from .ocsp import OCSPCache
from .state import JobStats

if TYPE_CHECKING:
    from .runtime import Exporter


def target_samples(job: ProbeJob, stats: JobStats | None, outcome: Outcome | None) -> Iterator[Sample]:
    """Every sample of one job's per-target families (metrics.TARGET_FAMILIES)."""
    base = (job.group.name, job.target.url, job.route.name)
    yield m.TARGET_INFO, base + (job.target.pattern, str(job.target.port), job.target.source), 1
    if stats is not None:
        yield m.PROBES_TOTAL, base + ("success",), stats.successes
        yield m.PROBES_TOTAL, base + ("failure",), stats.failures
        yield m.PROBES_SKIPPED, base, stats.skipped
    if outcome is None:
        return
    probe = outcome.probe
    yield m.PROBE_SUCCESS, base, probe.success
    yield m.PROBE_DURATION, base, probe.duration
    for phase, seconds in probe.phases:
        yield m.PROBE_PHASE_DURATION, base + (phase,), seconds
    yield m.PROBE_HTTP_STATUS, base, probe.http_status
    if probe.content_bytes is not None:
        yield m.PROBE_CONTENT_SIZE, base, probe.content_bytes
    if probe.content_last_modified is not None:
        yield m.PROBE_CONTENT_LAST_MODIFIED, base, probe.content_last_modified
    if probe.reason is not None:
        yield m.PROBE_FAILURE_REASON, base + (str(probe.reason),), 1
    yield m.PROBE_LAST_RUN, base, probe.finished_at
    tls = probe.tls
    if tls is not None:
        yield m.TLS_VERSION_INFO, base + (tls.version,), 1
        yield m.TLS_CIPHER_INFO, base + (tls.cipher,), 1
        yield m.TLS_CHAIN_VERIFIED, base, tls.verified
        for depth, cert in enumerate(tls.presented):
            yield (m.TLS_CERT_NOT_AFTER,
                   base + (str(depth), cert.subject, cert.issuer, cert.serial, cert.fingerprint_sha256), cert.not_after)
        if tls.ocsp_staple is not None:
            yield m.TLS_OCSP_STAPLED, base, bool(tls.ocsp_staple)
    if outcome.revoked is not None:
        yield m.TLS_CERT_REVOKED, base, outcome.revoked
    if outcome.intercepted is not None:
        yield m.TLS_INTERCEPTED, base, outcome.intercepted
    if outcome.proxy:
        yield m.ROUTE_PROXY_INFO, base + (outcome.proxy,), 1
    verdict = outcome.maps
    if verdict is not None:
        yield m.MAPS_CONNECTION_VALID, base + (verdict.source,), verdict.valid
        if not verdict.valid:
            yield m.MAPS_VALIDATION_INFO, base + (verdict.source, verdict.hresult, verdict.cause, verdict.reason), 1
    if outcome.revocation_valid_until is not None:
        yield m.MAPS_REVOCATION_VALID_UNTIL, base, outcome.revocation_valid_until


class DefenderCollector(Collector):
    """The series of one running exporter (runtime.Exporter: its store, CRL
    cache, reload status and host snapshot); owns the exposition cache that
    /metrics is served from."""

    def __init__(self, exporter: "Exporter"):
        self.exporter = exporter
        self.store = exporter.store
        # Hooked to the store now, so each job's lines are written as its results
        # arrive, not all at the first scrape.
        self.cache = ExpositionCache(self.store, self.job_samples)

    def job_samples(self, key: tuple) -> Iterator[Sample]:
        store = self.store
        return target_samples(store.jobs[key], store.stats.get(key), store.latest.get(key))

    def samples(self) -> Iterator[Sample]:
        for key in self.store.jobs:
            yield from self.job_samples(key)
        yield from self.live_samples()

    def live_samples(self) -> Iterator[Sample]:
        """Every sample but the per-job ones: formatted at each scrape."""
        store, exporter = self.store, self.exporter
        for (group, route), histogram in store.latency.items():
            yield m.PROBE_LATENCY, (group, route), histogram
        yield from host_samples(exporter.host_snapshot)
        yield from self._crl_samples(exporter.assessor.crl_cache)
        yield from self._ocsp_samples(exporter.assessor.ocsp_cache)
        yield from exporter.assessor.routes.samples()
        yield m.BUILD_INFO, (__version__, platform.python_version()), 1
        per_group: dict[str, int] = {}
        for job in store.jobs.values():
            per_group[job.group.name] = per_group.get(job.group.name, 0) + 1
        for group, count in sorted(per_group.items()):
            yield m.EXPORTER_TARGETS, (group,), count
        yield m.SCHEDULER_LAG, (), store.lag
        yield m.CONFIG_RELOAD_SUCCESSFUL, (), exporter.reload_successful
        yield m.CONFIG_RELOAD_TIMESTAMP, (), exporter.reload_success_timestamp

    @staticmethod
    def _crl_samples(crls: CRLCache) -> Iterator[Sample]:
        """CRL distribution points seen in probed chains, as last checked."""
        for (url, route), check in sorted(crls.checks.items()):
            yield m.CRL_REACHABLE, (url, route), check.reachable
            yield m.CRL_FETCH_DURATION, (url, route), check.duration
        for url, doc in sorted(crls.documents.items()):
            yield m.CRL_THIS_UPDATE, (url, doc.issuer), doc.this_update
            if doc.next_update is not None:
                yield m.CRL_NEXT_UPDATE, (url, doc.issuer), doc.next_update
            yield m.CRL_SIZE, (url,), doc.size
        now = time.time()
        for url in sorted({url for url, _ in crls.checks}):
            yield m.CRL_VALID, (url,), crls.document_valid(url, now)

    @staticmethod
    def _ocsp_samples(responders: OCSPCache) -> Iterator[Sample]:
        """OCSP responders seen in probed chains, per URL and route, as last checked: the checks of
        every certificate the responder serves, folded (all must hold for a 1)."""
        now = time.time()
        by_point: dict[tuple[str, str], list] = {}
        for (url, route, _), check in responders.checks.items():
            by_point.setdefault((url, route), []).append(check)
        for (url, route), checks in sorted(by_point.items()):
            latest = max(checks, key=lambda c: c.checked_at)
            yield m.OCSP_REACHABLE, (url, route), all(c.reachable for c in checks)
            yield m.OCSP_FETCH_DURATION, (url, route), latest.duration
            usable = [c.answer for c in checks if c.answer is not None and c.answer.next_update >= now]
            yield m.OCSP_RESPONSE_VALID, (url, route), len(usable) == len(checks)
            if usable:
                yield m.OCSP_NEXT_UPDATE, (url, route), min(a.next_update for a in usable)

    def iter_exposition(self, *, gzip: bool = False) -> Iterator[bytes]:
        """The /metrics body (text format 0.0.4, gzip-compressed if asked: send
        with Content-Encoding: gzip) in pieces, for a streamed response; the
        cached fragments are read at the first piece."""
        return self.cache.chunks(self.live_samples(), gzip=gzip)

    def render_exposition(self, *, gzip: bool = False) -> bytes:
        return b"".join(self.iter_exposition(gzip=gzip))

    def describe(self) -> list[Metric]:
        # Describing nothing keeps registration from calling collect() early.
        return []

    def collect(self) -> Iterator[Metric]:
        """The same families as prometheus_client metric families."""
        families = {spec.name: _family(spec) for spec in m.ALL}
        for spec, values, value in self.samples():
            family = families[spec.name]
            if spec.type == "histogram":
                family.add_metric(list(values), value.cumulative(), value.total)
            else:
                family.add_metric(list(values), value)
        for spec in m.ALL:
            family = families[spec.name]
            if spec.always_shown or family.samples:
                yield family


_FAMILY_TYPES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}


def _family(spec: m.MetricSpec) -> Metric:
    return _FAMILY_TYPES[spec.type](spec.name, spec.help, labels=spec.labels)
