"""The text exposition format (0.0.4): one generic writer of samples, and the
per-job fragment cache that /metrics is served from.

A sample is ``(spec, values, value)``: a `MetricSpec` from metrics.py, the
values of its labels in the spec's order, and the value (for a histogram, a
`state.Histogram`). Everything the exporter exposes is written by
`_Format.lines()` from such samples, with the text, label order and number
format prometheus_client's generate_latest() gives (a test compares them byte
for byte). Nothing here knows which metrics exist: the collector says what the
samples are.

Why a cache: formatting every sample of every job on every scrape costs about
0.3 ms per job (3 s at 10,000 jobs). `ExpositionCache` formats a job's
samples of the per-target families once, when the job's result changes
(`ResultStore.listeners`), and keeps them until it changes again; each
fragment also keeps a compressed copy of itself (a sync-flushed deflate
piece, made by the first gzip scrape that needs it, so a fragment replaced
before anyone asked for it in gzip is never compressed), and a gzip body is
one gzip member framing the pieces, whose CRC is computed as the scrape
streams by. The fragments are kept in columns, one list
per family in job order, so a scrape is a few hundred b"".join() calls over
list slices (C speed), not a Python loop over every job of every family.
"""

from __future__ import annotations

import operator
import zlib
from typing import Any, Callable, Iterable, Iterator

from prometheus_client.utils import floatToGoString

from . import metrics as m
from .state import ResultStore

Sample = tuple[m.MetricSpec, tuple[str, ...], Any]


def _esc(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _needs_escape(values: tuple[str, ...]) -> bool:
    joined = "".join(values)
    return "\\" in joined or '"' in joined or "\n" in joined


def _template(name: str, labels: tuple[str, ...]) -> tuple[str, Callable[[tuple], tuple]]:
    """A %-template of one sample line, label pairs sorted by name as
    generate_latest() sorts them, and how to take the values in that order."""
    order = sorted(range(len(labels)), key=labels.__getitem__)
    if not labels:
        return f"{name} %s\n", lambda values: ()
    pairs = ",".join(f'{labels[i]}="%s"' for i in order)
    if len(order) == 1:
        return f"{name}{{{pairs}}} %s\n", lambda values: (values[0],)
    return f"{name}{{{pairs}}} %s\n", operator.itemgetter(*order)


class _Format:
    """How the samples of one family are written."""

    __slots__ = ("header", "line", "bucket", "count", "sum", "histogram")

    def __init__(self, spec: m.MetricSpec):
        help_text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
        self.header = f"# HELP {spec.name} {help_text}\n# TYPE {spec.name} {spec.type}\n"
        self.histogram = spec.type == "histogram"
        self.line = _template(spec.name, spec.labels)
        self.bucket = _template(spec.name + "_bucket", spec.labels + ("le",))
        self.count = _template(spec.name + "_count", spec.labels)
        self.sum = _template(spec.name + "_sum", spec.labels)

    def lines(self, values: tuple[str, ...], value: Any) -> str:
        if _needs_escape(values):
            values = tuple(map(_esc, values))
        if not self.histogram:
            template, pick = self.line
            return template % (pick(values) + (_number(value),))
        out = []
        template, pick = self.bucket
        running = 0
        for bound, running in value.cumulative():
            out.append(template % (pick(values + (bound,)) + (_number(running),)))
        for (template, pick), number in ((self.count, running), (self.sum, value.total)):
            out.append(template % (pick(values) + (_number(number),)))
        return "".join(out)


def _number(value: Any) -> str:
    if value is True:
        return "1.0"
    if value is False:
        return "0.0"
    return floatToGoString(value)


FORMATS: dict[str, _Format] = {spec.name: _Format(spec) for spec in m.ALL}


def render(samples: Iterable[Sample], specs: Iterable[m.MetricSpec] = m.ALL) -> str:
    """The exposition of `samples`, one family per spec in the order of `specs`
    (a family without samples: HELP and TYPE only, unless spec.always_shown is False)."""
    lines = _lines_by_family(samples)
    return "".join(_family_text(spec, lines.get(spec.name)) for spec in specs)


def _lines_by_family(samples: Iterable[Sample]) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for spec, values, value in samples:
        lines.setdefault(spec.name, []).append(FORMATS[spec.name].lines(values, value))
    return lines


def _family_text(spec: m.MetricSpec, lines: list[str] | None) -> str:
    if not lines and not spec.always_shown:
        return ""
    return FORMATS[spec.name].header + "".join(lines or ())


# ----------------------------------------------------------------------------- gzip framing


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


# ----------------------------------------------------------------------------- the cache

# Jobs per piece of a streamed body.
_CHUNK_JOBS = 1000

_COLUMNS = m.TARGET_FAMILIES
_COLUMN = {spec.name: f for f, spec in enumerate(_COLUMNS)}
_COLUMN_COUNT = len(_COLUMNS)


class ExpositionCache:
    """The per-target families' lines (text and deflate piece) of every job,
    kept current by the store's listeners.

    `job_samples(key)` gives the samples of one job (the collector's
    description of the series); only samples of metrics.TARGET_FAMILIES are
    kept here. Stored by column: texts[f][i] is job i's lines of family f, in
    the order of store.jobs, so a scrape joins slices of each column. The
    layout is rebuilt when the store's job list is replaced (a reload)."""

    def __init__(self, store: ResultStore, job_samples: Callable[[tuple], Iterable[Sample]]):
        self.store = store
        self.job_samples = job_samples
        self._jobs: dict | None = None  # the store.jobs the layout was built for
        self.position: dict[tuple, int] = {}
        self.rendered: list[int] = []  # per position: the key version its lines show
        self.texts: list[list[bytes]] = [[] for _ in range(_COLUMN_COUNT)]
        self.pieces: list[list[bytes]] = [[] for _ in range(_COLUMN_COUNT)]
        self._uncompressed: set[tuple[int, int]] = set()  # (column, position) whose piece is still to make
        self._headers = tuple(FORMATS[spec.name].header.encode() for spec in _COLUMNS)
        self._gz_headers = tuple(_gz(h) for h in self._headers)
        store.listeners.append(self.update)

    def _layout(self) -> None:
        """Positions for the store's current jobs; lines of jobs that stay are kept."""
        store = self.store
        self._compress()  # positions are about to move (a reload: rare), pieces with them
        old_position, old_rendered, old_texts, old_pieces = self.position, self.rendered, self.texts, self.pieces
        keys = list(store.jobs)
        self.position = {key: i for i, key in enumerate(keys)}
        self.rendered = [-1] * len(keys)
        self.texts = [[b""] * len(keys) for _ in range(_COLUMN_COUNT)]
        self.pieces = [[b""] * len(keys) for _ in range(_COLUMN_COUNT)]
        for key, i in self.position.items():
            j = old_position.get(key)
            if j is not None:
                self.rendered[i] = old_rendered[j]
                for f in range(_COLUMN_COUNT):
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
        lines: list[list[str]] = [[] for _ in range(_COLUMN_COUNT)]
        for spec, values, value in self.job_samples(key):
            lines[_COLUMN[spec.name]].append(FORMATS[spec.name].lines(values, value))
        for f in range(_COLUMN_COUNT):
            text = "".join(lines[f]).encode()
            column = self.texts[f]
            if column[i] != text:
                column[i] = text
                self.pieces[f][i] = b""
                if text:
                    self._uncompressed.add((f, i))
        self.rendered[i] = store.key_versions.get(key, 0)

    def _compress(self) -> None:
        """Make the deflate pieces of the fragments that changed since the last gzip scrape."""
        for f, i in self._uncompressed:
            self.pieces[f][i] = _gz(self.texts[f][i])
        self._uncompressed.clear()

    def chunks(self, live: Iterable[Sample], *, gzip: bool) -> Iterator[bytes]:
        """The whole body in pieces (b"".join() of them is the body) of at most
        _CHUNK_JOBS jobs of one family, for a streamed response that never
        holds the whole body. Families in the order of metrics.ALL; `live` are
        the samples formatted now (everything but the cached per-target lines,
        e.g. histograms, CRLs, the host collectors' MAPS verdicts, which follow
        the cached lines of their family)."""
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
        if gzip:
            self._compress()
        count = len(self.position)
        texts = [list(column) for column in self.texts]
        pieces = [list(column) for column in self.pieces] if gzip else None
        live_lines = _lines_by_family(live)
        stream = _GzipStream() if gzip else None

        def piece(text: bytes, compressed: bytes | None = None) -> bytes:
            if stream is None:
                return text
            stream.text(text)
            return _gz(text) if compressed is None else compressed

        if gzip:
            yield _GZIP_HEADER
        pending: list[str] = []  # formatted-now text, sent as one piece before the next cached one
        for spec in m.ALL:
            f = _COLUMN.get(spec.name)
            if f is None:
                text = _family_text(spec, live_lines.get(spec.name))
                if text:
                    pending.append(text)
                continue
            if pending:
                yield piece("".join(pending).encode())
                pending = []
            yield piece(self._headers[f], self._gz_headers[f])
            for start in range(0, count, _CHUNK_JOBS):
                text = b"".join(texts[f][start:start + _CHUNK_JOBS])
                if text:
                    yield piece(text, b"".join(pieces[f][start:start + _CHUNK_JOBS]) if pieces else None)
            pending.extend(live_lines.get(spec.name, ()))
        if pending:
            yield piece("".join(pending).encode())
        if stream is not None:
            yield stream.trailer()
