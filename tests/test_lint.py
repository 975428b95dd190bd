"""pyflakes finds nothing in exporter/ and tests/: no unused import or variable, no
f-string without a placeholder, no undefined or redefined name."""

from __future__ import annotations

import io
from pathlib import Path

from pyflakes.api import checkRecursive
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parent.parent


def pyflakes(*paths: Path) -> tuple[int, str]:
    out = io.StringIO()
    count = checkRecursive([str(p) for p in paths], Reporter(out, out))
    return count, out.getvalue()


def test_pyflakes_finds_nothing():
    count, found = pyflakes(ROOT / "exporter", ROOT / "tests")
    assert count == 0 and not found, found


def test_pyflakes_would_say_so(tmp_path):
    """The premise: the same check, on a folder with a finding, reports it."""
    (tmp_path / "example.py").write_text("import os\nprint(f'no placeholder')\n")
    count, found = pyflakes(tmp_path)
    assert count == 2 and "'os' imported but unused" in found and "f-string is missing placeholders" in found
