r"""Textfile mode: one host-side collection, written for a node exporter's textfile collector.

    defender-connectivity-exporter host --textfile DIR [--config.file F]

Fleets already run windows_exporter (Windows) or node_exporter (Linux, macOS);
their textfile collector reads every ``*.prom`` file of a directory on each
scrape. A scheduler (Task Scheduler, a systemd timer) runs this mode every few
minutes; it runs the host collectors once and writes ``DIR/defender_connectivity.prom``.

What the readers require, and how the file meets it:

- Only names ending in ``.prom`` are read: the file is written under a
  temporary name (``.defender_connectivity.prom.<pid>.tmp``) and renamed into
  place, so a reader sees the old file or the new one, never part of one
  (``os.replace``: rename(2) on POSIX, MoveFileEx with REPLACE_EXISTING on Windows).
- windows_exporter rejects a file that starts with a UTF-16 or UTF-32 byte
  order mark; both reject any sample with a timestamp, and a file with the
  same series twice. The file is UTF-8 without a byte order mark, LF line
  endings, ends with a newline, has no timestamps and each series once.
- The series are the exporter's own host-side series (same names, same
  labels, ``source="mpcmdrun"`` / ``source="mdatp"``), plus
  a success gauge per collector (metrics.HOST_TEXTFILE_COLLECTOR_SUCCESS) and
  the time of the run (metrics.HOST_TEXTFILE_LAST_RUN). A collector that
  failed leaves its series out (as the exporter does) and says so with 0.

Windows: while windows_exporter has the file open, replacing it may fail with
a sharing violation; the rename is retried for a few seconds before giving up.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from exporter import exposition, metrics

from .collector import HostSnapshot, host_samples

FILENAME = "defender_connectivity.prom"

# Exit status of `host --textfile`, for the scheduler (documented in docs/deployment.md).
EXIT_OK = 0              # written; every collector ran and was understood
EXIT_COLLECTOR_FAILED = 1  # written; at least one collector failed (its success gauge is 0)
EXIT_USAGE = 2           # bad usage or configuration; nothing written
EXIT_WRITE_FAILED = 3    # the file could not be written; the previous one, if any, is untouched

_REPLACE_ATTEMPTS = 50
_REPLACE_PAUSE = 0.1  # seconds between attempts (Windows sharing violations)


class TextfileError(Exception):
    """The file could not be written; the message names the path and the reason."""


def collector_label(name: str) -> str:
    """``"reg SSLOptions"`` -> ``"reg_ssloptions"``: a collector's label value."""
    return name.lower().replace(" ", "_")


def render(snapshot: HostSnapshot, *, finished_at: float | None = None) -> bytes:
    """The file's bytes for one collection: UTF-8, LF, no timestamps, newline at the end."""
    samples = host_samples(snapshot)
    samples += [(metrics.HOST_TEXTFILE_COLLECTOR_SUCCESS, (collector_label(name),), 1.0 if ok else 0.0)
                for name, ok in snapshot.collectors]
    samples.append((metrics.HOST_TEXTFILE_LAST_RUN, (), snapshot.taken_at if finished_at is None else finished_at))
    present = {spec.name for spec, _, _ in samples}
    # Only the families this file has: the exporter's other families are not ours to write here.
    text = exposition.render(samples, [spec for spec in metrics.ALL if spec.name in present])
    return text.encode("utf-8")


def write_atomically(directory: Path | str, data: bytes, *, name: str = FILENAME) -> Path:
    """Write ``directory/name`` so that a reader sees the old file or the new one, never part.

    Raises TextfileError naming the path. The directory must exist: a typo must
    not create a directory that no collector reads."""
    directory = Path(directory)
    final = directory / name
    if not directory.is_dir():
        raise TextfileError(f"{directory}: not a directory (create it, or point --textfile at the "
                            "textfile collector's directory)")
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    except OSError as exc:
        raise TextfileError(f"cannot create {temporary}: {exc.strerror or exc}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the content is on disk before the name points at it
        finally:
            os.close(fd)
        _replace(temporary, final)
    except OSError as exc:
        _remove(temporary)
        raise TextfileError(f"cannot write {final}: {exc.strerror or exc}") from None
    return final


def _replace(source: Path, target: Path) -> None:
    for attempt in range(_REPLACE_ATTEMPTS):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            # Windows: a reader holds the old file open without FILE_SHARE_DELETE.
            if sys.platform != "win32" or attempt == _REPLACE_ATTEMPTS - 1:
                raise
            time.sleep(_REPLACE_PAUSE)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:  # already gone, or never created: nothing to clean up
        pass


def exit_status(snapshot: HostSnapshot) -> int:
    """EXIT_OK when every collector succeeded, else EXIT_COLLECTOR_FAILED."""
    return EXIT_OK if all(ok for _, ok in snapshot.collectors) and snapshot.collectors else EXIT_COLLECTOR_FAILED


def run(config_file: str | None, textfile: str | None) -> int:
    """`host` subcommand: collect once, then write the file (or print it without --textfile).

    Returns the exit status (EXIT_*); ConfigError propagates (the CLI makes it 2)."""
    import asyncio
    import logging

    from exporter.config import load_config

    from .collector import collect_host

    log = logging.getLogger("exporter")
    config = load_config(config_file)
    snapshot = asyncio.run(collect_host(config.host))
    for error in snapshot.errors:
        log.warning("host collector: %s", error)
    data = render(snapshot, finished_at=time.time())
    status = exit_status(snapshot)
    if textfile is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return status
    try:
        path = write_atomically(textfile, data)
    except TextfileError as exc:
        log.error("textfile not written: %s", exc)
        return EXIT_WRITE_FAILED
    failed = [name for name, ok in snapshot.collectors if not ok]
    log.info("wrote %s (%s mode; %d collectors, failed: %s)", path, snapshot.mode, len(snapshot.collectors),
             ", ".join(failed) or "none")
    return status
