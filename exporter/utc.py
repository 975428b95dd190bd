"""Times as people and logs read them: ISO 8601 in UTC, to the second."""

from __future__ import annotations

import time


def iso(ts: float) -> str:
    """2026-12-02T01:25:00Z for a Unix time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
