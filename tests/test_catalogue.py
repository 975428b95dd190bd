"""The built-in catalogue against Microsoft's article: no published entry may go missing.

PUBLISHED is the article's table, transcribed entry by entry (the source is
"Configure and validate Microsoft Defender Antivirus network connections";
our copy is shared/reference/seed-defender-network-connections.sv.txt).
When the copy is present beside the repository, the test also re-reads it, so
a change of the article shows up here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config import builtin_catalogue, load_config

SUBMISSION_HOSTS = [
    f"{name}.blob.core.windows.net"
    for name in (
        "ussus1eastprod", "ussus2eastprod", "ussus3eastprod", "ussus4eastprod", "wsus1eastprod", "wsus2eastprod",
        "ussus1westprod", "ussus2westprod", "ussus3westprod", "ussus4westprod", "wsus1westprod", "wsus2westprod",
        "usseu1northprod", "wseu1northprod", "usseu1westprod", "wseu1westprod",
        "ussuk1southprod", "wsuk1southprod", "ussuk1westprod", "wsuk1westprod",
    )
]

PUBLISHED: dict[str, list[str]] = {
    "maps": ["*.wdcp.microsoft.com", "*.wdcpalt.microsoft.com", "*.wd.microsoft.com"],
    "update": ["*.update.microsoft.com", "*.delivery.mp.microsoft.com", "*.windowsupdate.com",
               "ctldl.windowsupdate.com"],
    "adl": [
        "*.download.microsoft.com",
        "*.download.windowsupdate.com",
        "go.microsoft.com",
        "https://www.microsoft.com/security/encyclopedia/adlpackages.aspx",
        "https://definitionupdates.microsoft.com/download/DefinitionUpdates/",
        "https://fe3cr.delivery.mp.microsoft.com/ClientWebService/client.asmx",
    ],
    "submission": SUBMISSION_HOSTS,
    "crl": [
        "http://www.microsoft.com/pkiops/crl/",
        "http://www.microsoft.com/pkiops/certs",
        "http://crl.microsoft.com/pki/crl/products",
        "http://www.microsoft.com/pki/certs",
    ],
    "diagnostics": ["vortex-win.data.microsoft.com", "settings-win.data.microsoft.com"],
}
# The article: "Port 80 required" for these.
PORT_80_REQUIRED = ["*.download.windowsupdate.com", "go.microsoft.com"]

ARTICLE = Path(__file__).resolve().parents[2] / "shared/reference/seed-defender-network-connections.sv.txt"


def _patterns(group: str) -> set[str]:
    return {t["pattern"] for t in builtin_catalogue()["groups"][group]["targets"]}


@pytest.mark.parametrize("group", list(PUBLISHED))
def test_every_published_entry_is_in_the_catalogue(group):
    assert set(PUBLISHED[group]) <= _patterns(group)


def test_counts_match_the_article():
    assert len(PUBLISHED["submission"]) == 20 and _patterns("submission") == set(SUBMISSION_HOSTS)
    assert len(_patterns("crl")) == 4
    assert sum(len(v) for v in PUBLISHED.values()) == 3 + 4 + 6 + 20 + 4 + 2


def test_no_entry_is_invented():
    for group, entries in PUBLISHED.items():
        assert _patterns(group) <= set(entries), f"{group}: catalogue has entries the article does not"


def test_targets_stand_for_their_pattern():
    config = load_config(None)
    for group in config.groups:
        for target in group.targets:
            pattern = target.pattern
            if pattern.startswith("http"):
                assert target.url == pattern
            elif pattern.startswith("*."):
                suffix = pattern[2:]
                assert target.host == suffix or target.host.endswith("." + suffix), (target.url, pattern)
            else:
                assert target.host == pattern, (target.url, pattern)


def test_port_80_required_entries_are_probed_on_80_and_443():
    config = load_config(None)
    targets = [t for g in config.groups for t in g.targets]
    for pattern in PORT_80_REQUIRED:
        ports = {t.port for t in targets if t.pattern == pattern}
        assert ports == {80, 443}, pattern
        hosts_80 = {t.host for t in targets if t.pattern == pattern and t.port == 80}
        hosts_443 = {t.host for t in targets if t.pattern == pattern and t.port == 443}
        assert hosts_80 == hosts_443, f"{pattern}: every host on 80 also on 443"


def test_crl_urls_are_plain_http_on_the_system_route():
    config = load_config(None)
    crl = config.group("crl")
    assert crl.routes == ("system",)
    assert all(t.scheme == "http" and t.port == 80 for t in crl.targets)
    assert all(g.routes == ("defender",) for g in config.groups if g.name != "crl")


def test_maps_and_submission_are_pinned_by_default():
    config = load_config(None)
    assert config.group("maps").expected_roots and config.group("submission").expected_roots
    assert not config.group("update").expected_roots
    assert config.group("maps").validate_maps and not config.group("update").validate_maps


@pytest.mark.skipif(not ARTICLE.exists(), reason="the article's copy is not beside the repository")
def test_transcription_matches_the_article_text():
    text = ARTICLE.read_text(encoding="utf-8")
    published = {e for entries in PUBLISHED.values() for e in entries}
    for entry in published:
        assert entry in text, f"{entry} not found in the article text"
    # ... and every line of the article's table (one entry per line) is transcribed.
    table_lines = {
        line.split(" (")[0].strip()
        for line in text.splitlines()
        if re.fullmatch(r"(https?://|\*\.|[a-z0-9-]+\.)[\w./*-]+( \(.*\))?", line.strip())
        and re.search(r"microsoft\.com|windows\.net|windowsupdate\.com", line)
    }
    assert table_lines == published
