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
import weakref
import zlib
from typing import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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

    def render_exposition(self, *, gzip: bool = False) -> bytes:
        """The whole /metrics body from cached per-target fragments; see render_exposition()."""
        return render_exposition(self.store, gzip=gzip, collector=self)

    def iter_exposition(self, *, gzip: bool = False) -> Iterator[bytes]:
        """The same body in pieces, for a streamed response; see iter_exposition()."""
        return iter_exposition(self.store, gzip=gzip, collector=self)

    def collect(self) -> Iterator[Metric]:
        yield from self.collect_targets()
        yield self.collect_latency()
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
            info, success, duration, phases, status, reason, last_run, totals,
            tls_version, tls_cipher, not_after, verified, revoked, intercepted, maps_valid, maps_info,
        )

    def collect_latency(self) -> Metric:
        """Probe wall times per (group, route): every probe of every target
        of the group on that route, since the exporter started."""
        latency = HistogramMetricFamily(m.PROBE_LATENCY.name, m.PROBE_LATENCY.help, labels=m.PROBE_LATENCY.labels)
        for (group, route), histogram in self.store.latency.items():
            latency.add_metric([group, route], histogram.cumulative(), histogram.total)
        return latency

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


# ----------------------------------------------------------------------------- cached exposition
#
# generate_latest() over the collector above formats every sample of every
# target on every scrape (about 0.3 ms per target: 3 s at 10,000 targets).
# render_exposition() gives the same text from per-target fragments rendered
# once when the target's result changes (ResultStore.listeners) and kept until
# it changes again; each fragment also keeps a compressed copy of itself (a
# sync-flushed deflate piece), and a gzip body is one gzip member framing the
# pieces, whose CRC is computed as the scrape streams by.
#
# The fragments are kept in columns, one list per family in job order, so a
# scrape is a few hundred b"".join() calls over list slices (C speed), not a
# Python loop over every job of every family.

_TARGET_FAMILIES: tuple[m.MetricSpec, ...] = (
    m.TARGET_INFO, m.PROBE_SUCCESS, m.PROBE_DURATION, m.PROBE_PHASE_DURATION, m.PROBE_HTTP_STATUS,
    m.PROBE_FAILURE_REASON, m.PROBE_LAST_RUN, m.PROBES_TOTAL, m.TLS_VERSION_INFO,
    m.TLS_CIPHER_INFO, m.TLS_CERT_NOT_AFTER, m.TLS_CHAIN_VERIFIED, m.TLS_CERT_REVOKED, m.TLS_INTERCEPTED,
    m.MAPS_CONNECTION_VALID, m.MAPS_VALIDATION_INFO,
)
_FAMILY_COUNT = len(_TARGET_FAMILIES)
_FAMILY_NAMES = tuple(spec.name for spec in _TARGET_FAMILIES)
_MAPS_VALID = _TARGET_FAMILIES.index(m.MAPS_CONNECTION_VALID)
_MAPS_INFO = _TARGET_FAMILIES.index(m.MAPS_VALIDATION_INFO)


def _header(spec: m.MetricSpec) -> str:
    help_text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {spec.name} {help_text}\n# TYPE {spec.name} {spec.type}\n"


_HEADERS = tuple(_header(spec).encode() for spec in _TARGET_FAMILIES)


def _esc(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _gz(data: bytes) -> bytes:
    """A piece of raw deflate that ends on a byte boundary (sync flush) and is
    not final, so pieces made independently concatenate into one deflate stream.

    The body is then ONE gzip member (header, pieces, final block, CRC, size):
    curl and browsers stop after the first member of a multi-member body, so a
    concatenation of members would look truncated to them. A small window
    keeps the compressor's set-up cheap (fragments are small), and no piece
    refers back into another.
    """
    compressor = zlib.compressobj(6, zlib.DEFLATED, -10, 2)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


# gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# The final deflate block: fixed Huffman, empty (BFINAL=1, BTYPE=01, end-of-block).
_DEFLATE_END = b"\x03\x00"


class _GzipStream:
    """Frames deflate pieces as one gzip member; the CRC and size of the
    uncompressed text are accumulated as its pieces go by."""

    def __init__(self) -> None:
        self.crc = 0
        self.size = 0

    def text(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)

    def trailer(self) -> bytes:
        return _DEFLATE_END + self.crc.to_bytes(4, "little") + (self.size & 0xFFFFFFFF).to_bytes(4, "little")


# Jobs per piece of a streamed body.
_CHUNK_JOBS = 1000


def render_target(job, stats, outcome) -> tuple[str, ...]:
    """The lines of one job in each of the per-target families, in the order of
    _TARGET_FAMILIES (same text, label order and number format as
    generate_latest() gives)."""
    fmt = floatToGoString
    g = f'group="{_esc(job.group.name)}"'
    r = f'route="{_esc(job.route.name)}"'
    t = f'target="{_esc(job.target.url)}"'
    rt = f"{r},{t}"
    base = f"{g},{rt}"
    out: dict[str, str] = {}  # family name -> its lines of this job
    out[m.TARGET_INFO.name] = (
        f'defender_target_info{{{g},pattern="{_esc(job.target.pattern)}",port="{job.target.port}",{rt}}} 1.0\n')
    if stats is not None:
        out[m.PROBES_TOTAL.name] = (f'defender_probes_total{{{g},result="success",{rt}}} {fmt(stats.successes)}\n'
                  f'defender_probes_total{{{g},result="failure",{rt}}} {fmt(stats.failures)}\n')
    if outcome is None:
        return _in_family_order(out)
    probe = outcome.probe
    out[m.PROBE_SUCCESS.name] = f"defender_probe_success{{{base}}} {'1.0' if probe.success else '0.0'}\n"
    out[m.PROBE_DURATION.name] = f"defender_probe_duration_seconds{{{base}}} {fmt(probe.duration)}\n"
    out[m.PROBE_PHASE_DURATION.name] = "".join(
        f'defender_probe_phase_duration_seconds{{{g},phase="{_esc(phase)}",{rt}}} {fmt(seconds)}\n'
        for phase, seconds in probe.phases)
    out[m.PROBE_HTTP_STATUS.name] = f"defender_probe_http_status_code{{{base}}} {fmt(probe.http_status)}\n"
    if probe.reason is not None:
        out[m.PROBE_FAILURE_REASON.name] = (
            f'defender_probe_failure_reason{{{g},reason="{_esc(str(probe.reason))}",{rt}}} 1.0\n')
    out[m.PROBE_LAST_RUN.name] = f"defender_probe_last_run_timestamp_seconds{{{base}}} {fmt(probe.finished_at)}\n"
    tls = probe.tls
    if tls is not None:
        out[m.TLS_VERSION_INFO.name] = f'defender_tls_version_info{{{base},version="{_esc(tls.version)}"}} 1.0\n'
        out[m.TLS_CIPHER_INFO.name] = f'defender_tls_cipher_info{{cipher="{_esc(tls.cipher)}",{base}}} 1.0\n'
        out[m.TLS_CERT_NOT_AFTER.name] = "".join(
            f'defender_tls_cert_not_after_timestamp_seconds{{depth="{depth}",'
            f'fingerprint_sha256="{_esc(cert.fingerprint_sha256)}",{g},issuer="{_esc(cert.issuer)}",{r},'
            f'serial="{_esc(cert.serial)}",subject="{_esc(cert.subject)}",{t}}} {fmt(cert.not_after)}\n'
            for depth, cert in enumerate(tls.presented))
        out[m.TLS_CHAIN_VERIFIED.name] = f"defender_tls_chain_verified{{{base}}} {'1.0' if tls.verified else '0.0'}\n"
    if outcome.revoked is not None:
        out[m.TLS_CERT_REVOKED.name] = f"defender_tls_cert_revoked{{{base}}} {'1.0' if outcome.revoked else '0.0'}\n"
    if outcome.intercepted is not None:
        out[m.TLS_INTERCEPTED.name] = f"defender_tls_intercepted{{{base}}} {'1.0' if outcome.intercepted else '0.0'}\n"
    verdict = outcome.maps
    if verdict is not None:
        source = f'source="{_esc(verdict.source)}"'
        out[m.MAPS_CONNECTION_VALID.name] = (
            f"defender_maps_connection_valid{{{g},{r},{source},{t}}} {'1.0' if verdict.valid else '0.0'}\n")
        if not verdict.valid:
            out[m.MAPS_VALIDATION_INFO.name] = (f'defender_maps_validation_info{{cause="{_esc(verdict.cause)}",{g},'
                       f'hresult="{_esc(verdict.hresult)}",reason="{_esc(verdict.reason)}",{r},{source},{t}}} 1.0\n')
    return _in_family_order(out)


def _in_family_order(lines: dict[str, str]) -> tuple[str, ...]:
    return tuple(lines.get(name, "") for name in _FAMILY_NAMES)


class _Families:
    """A list of metric families posing as a collector, for generate_latest()."""

    def __init__(self, families):
        self.families = list(families)

    def collect(self):
        return self.families


class ExpositionCache:
    """The per-target families' lines (text and deflate piece) of every job,
    kept current by the store's listeners; see render_exposition().

    Stored by column: texts[f][i] is job i's lines of family f, in the order of
    store.jobs, so a scrape joins slices of each column. The layout is rebuilt
    when the store's job list is replaced (a reload)."""

    def __init__(self, store: ResultStore):
        self.store = store
        self._jobs: dict | None = None  # the store.jobs the layout was built for
        self.position: dict[tuple, int] = {}
        self.rendered: list[int] = []  # per position: the key version its lines show
        self.texts: list[list[bytes]] = [[] for _ in range(_FAMILY_COUNT)]
        self.pieces: list[list[bytes]] = [[] for _ in range(_FAMILY_COUNT)]
        self._gz_headers = tuple(_gz(h) for h in _HEADERS)
        store.listeners.append(self.update)

    def _layout(self) -> None:
        """Positions for the store's current jobs; lines of jobs that stay are kept."""
        store = self.store
        old_position, old_rendered, old_texts, old_pieces = self.position, self.rendered, self.texts, self.pieces
        keys = list(store.jobs)
        self.position = {key: i for i, key in enumerate(keys)}
        self.rendered = [-1] * len(keys)
        self.texts = [[b""] * len(keys) for _ in range(_FAMILY_COUNT)]
        self.pieces = [[b""] * len(keys) for _ in range(_FAMILY_COUNT)]
        for key, i in self.position.items():
            j = old_position.get(key)
            if j is not None:
                self.rendered[i] = old_rendered[j]
                for f in range(_FAMILY_COUNT):
                    self.texts[f][i] = old_texts[f][j]
                    self.pieces[f][i] = old_pieces[f][j]
        self._jobs = store.jobs

    def update(self, key: tuple) -> None:
        store = self.store
        if self._jobs is not store.jobs:
            self._layout()
        i = self.position.get(key)
        if i is None:
            return
        lines = render_target(store.jobs[key], store.stats.get(key), store.latest.get(key))
        for f in range(_FAMILY_COUNT):
            text = lines[f].encode() if lines[f] else b""
            column = self.texts[f]
            if column[i] != text:
                column[i] = text
                self.pieces[f][i] = _gz(text) if text else b""
        self.rendered[i] = store.key_versions.get(key, 0)

    def render(self, collector: "DefenderCollector", *, gzip: bool) -> bytes:
        return b"".join(self.chunks(collector, gzip=gzip))

    def chunks(self, collector: "DefenderCollector", *, gzip: bool) -> Iterator[bytes]:
        """The body in pieces of at most _CHUNK_JOBS jobs of one family, for a
        streamed response that never holds the whole body."""
        store = self.store
        if self._jobs is not store.jobs:
            self._layout()
        versions = store.key_versions
        for key, i in self.position.items():  # jobs changed by a reload, or never rendered
            if self.rendered[i] != versions.get(key, 0):
                self.update(key)
        # Everything below reads this snapshot (the column lists are replaced,
        # never resized, by a reload; a slice copies), so writing the body,
        # which yields to the loop, cannot mix two moments.
        count = len(self.position)
        texts = [list(column) for column in self.texts]
        pieces = [list(column) for column in self.pieces] if gzip else None
        # Host-side MAPS verdicts join the MAPS families; host gauges come first.
        maps_valid, maps_info = _gauge(m.MAPS_CONNECTION_VALID), _gauge(m.MAPS_VALIDATION_INFO)
        host_families = collector._add_host(maps_valid, maps_info)
        head = generate_latest(_Families(host_families)) if host_families else b""
        host_lines = {
            _MAPS_VALID: _samples_only(maps_valid) if maps_valid.samples else b"",
            _MAPS_INFO: _samples_only(maps_info) if maps_info.samples else b"",
        }
        tail_families = [collector.collect_latency()]
        if collector.crl_cache is not None:
            tail_families += list(collector.collect_crls())
        tail_families += list(collector.collect_exporter())
        for extra in collector.extra:
            tail_families += list(extra.collect())
        tail = generate_latest(_Families(tail_families))
        stream = _GzipStream() if gzip else None

        def piece(text: bytes, compressed: bytes | None = None) -> bytes:
            if stream is None:
                return text
            stream.text(text)
            return _gz(text) if compressed is None else compressed

        if gzip:
            yield _GZIP_HEADER
        if head:
            yield piece(head)
        for f in range(_FAMILY_COUNT):
            yield piece(_HEADERS[f], self._gz_headers[f])
            for start in range(0, count, _CHUNK_JOBS):
                text = b"".join(texts[f][start:start + _CHUNK_JOBS])
                if text:
                    yield piece(text, b"".join(pieces[f][start:start + _CHUNK_JOBS]) if pieces else None)
            extra_lines = host_lines.get(f)
            if extra_lines:
                yield piece(extra_lines)
        yield piece(tail)
        if stream is not None:
            yield stream.trailer()


def _samples_only(family: Metric) -> bytes:
    text = generate_latest(_Families([family]))
    return text.split(b"\n", 2)[2]  # drop the HELP and TYPE lines


_CACHES: "weakref.WeakKeyDictionary[ResultStore, ExpositionCache]" = weakref.WeakKeyDictionary()


def exposition_cache(store: ResultStore) -> ExpositionCache:
    """The store's exposition cache, made (and hooked to the store) on first use."""
    cache = _CACHES.get(store)
    if cache is None:
        cache = _CACHES[store] = ExpositionCache(store)
    return cache


def iter_exposition(store: ResultStore, *, gzip: bool, collector: DefenderCollector) -> Iterator[bytes]:
    """render_exposition() in pieces (b"".join() of them is the body), so that a
    streamed response (aiohttp's StreamResponse) never holds the whole body."""
    return exposition_cache(store).chunks(collector, gzip=gzip)


def render_exposition(store: ResultStore, *, gzip: bool, crl_cache: CRLCache | None = None,
                      extra: tuple[Collector, ...] = (), collector: DefenderCollector | None = None) -> bytes:
    """The /metrics body in the text format (0.0.4), byte for byte what
    generate_latest() gives for a DefenderCollector over the same store, from
    cached per-target fragments; gzip=True gives it gzip-compressed (send with
    Content-Encoding: gzip). Pass the exporter's collector (or its crl_cache
    and extra collectors) so the CRL, host and extra families are included."""
    if collector is None:
        collector = DefenderCollector(store, crl_cache=crl_cache, extra=extra)
    return exposition_cache(store).render(collector, gzip=gzip)
