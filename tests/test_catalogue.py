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

from exporter.catalogue import builtin_catalogue, catalogue_groups
from exporter.config import load_config

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
    "update": ["*.update.microsoft.com", "*.delivery.mp.microsoft.com", "*.windowsupdate.com"],
    # The article lists ctldl.windowsupdate.com in the Microsoft Update row; what is fetched
    # there is the certificate trust lists, probed as CryptoAPI fetches them (group ctl).
    "ctl": ["ctldl.windowsupdate.com"],
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
    """The patterns of the standard profile's entries that cite the article."""
    return {t["pattern"] for t in catalogue_groups()[group]["targets"] if t["source"] == "article"}


@pytest.mark.parametrize("group", list(PUBLISHED))
def test_every_published_entry_is_in_the_catalogue(group):
    assert set(PUBLISHED[group]) <= _patterns(group)


def test_counts_match_the_article():
    assert len(PUBLISHED["submission"]) == 20 and _patterns("submission") == set(SUBMISSION_HOSTS)
    assert len(_patterns("crl")) == 4
    assert sum(len(v) for v in PUBLISHED.values()) == 3 + 4 + 6 + 20 + 4 + 2
    assert not set(catalogue_groups()) - set(PUBLISHED) - {"revocation"}, "a new group cites the article?"


def test_no_entry_is_invented():
    for group, entries in PUBLISHED.items():
        assert _patterns(group) <= set(entries), f"{group}: catalogue has entries the article does not"


def test_targets_stand_for_their_pattern():
    config = load_config(None)
    for group in config.groups:
        for target in group.targets:
            pattern = target.pattern
            if pattern.startswith("http"):
                # A URL entry of the article is a prefix (the crl group probes real files under it).
                assert target.url.startswith(pattern), (target.url, pattern)
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


SYSTEM_ROUTE_GROUPS = ("crl", "ctl", "revocation")  # what the OS's certificate engine fetches


def test_certificate_engine_fetches_are_plain_http_on_the_system_route():
    config = load_config(None)
    for name in SYSTEM_ROUTE_GROUPS:
        group = config.group(name)
        assert group.routes == ("system",), name
        assert all(t.scheme == "http" and t.port == 80 for t in group.targets), name
    assert all(g.routes == ("defender",) for g in config.groups if g.name not in SYSTEM_ROUTE_GROUPS)


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


# ----------------------------------------------------------------- profiles, regions, sources, docs

DOC = Path(__file__).resolve().parents[1] / "docs" / "catalogue.md"


def _doc_rows() -> list[dict[str, str]]:
    columns = ["profile", "group", "pattern", "urls", "source", "route", "protocol", "region", "why"]
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| standard |") or line.startswith("| streamlined |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == len(columns), line
            rows.append(dict(zip(columns, cells)))
    return rows


def _data_rows() -> set[tuple[str, ...]]:
    """(profile, group, url, pattern, source, route, protocol, region) for every catalogue entry."""
    out = set()
    for profile in ("standard", "streamlined"):
        groups = catalogue_groups(profile)
        names = groups if profile == "standard" else builtin_catalogue()["profiles"][profile]
        for name in names:
            spec = groups[name]
            for t in spec["targets"]:
                content = t.get("expect", {}).get("content") or spec.get("content")
                protocol = ("HTTP" if t["url"].startswith("http:") else "HTTPS") + (
                    f", content `{content}`" if content else "")
                out.add((profile, name, t["url"], t["pattern"], t["source"], spec.get("route", "defender"),
                         protocol, t.get("region", "all")))
    return out


def test_the_catalogue_doc_has_one_row_for_every_entry_and_agrees_with_the_data():
    documented = set()
    for row in _doc_rows():
        assert row["why"], f"{row['pattern']}: say why"
        for url in re.findall(r"`([^`]+)`", row["urls"]):
            documented.add((row["profile"], row["group"], url, row["pattern"].strip("`"), row["source"],
                            row["route"], row["protocol"], row["region"]))
    assert documented == _data_rows()


def test_every_source_is_named_and_documented():
    from exporter.catalogue import source_urls
    doc = DOC.read_text(encoding="utf-8")
    used = {t[4] for t in _data_rows()}
    assert used <= set(source_urls()), used - set(source_urls())
    for source in source_urls():
        assert f"| `{source}` |" in doc, f"docs/catalogue.md: the Sources table lacks {source}"


def test_streamlined_profile_replaces_maps_and_submission_and_keeps_the_rest():
    from exporter.config import parse_config
    standard, streamlined = load_config(None), parse_config("connectivity: streamlined\n")
    assert [g.name for g in standard.groups] == [g.name for g in streamlined.groups]
    for name in ("maps", "submission"):
        hosts = {t.host for t in streamlined.group(name).targets}
        assert hosts and all(h.endswith(".endpoint.security.microsoft.com") for h in hosts), hosts
    assert streamlined.group("maps").validate_maps and streamlined.group("maps").expected_roots
    for name in ("update", "adl", "crl", "ctl", "revocation", "diagnostics"):
        assert streamlined.group(name) == standard.group(name)
    assert streamlined.connectivity == "streamlined"


@pytest.mark.parametrize("region", ["us", "eu", "uk", "au"])
@pytest.mark.parametrize("profile", ["standard", "streamlined"])
def test_a_region_keeps_its_own_and_the_global_targets(profile, region):
    from exporter.config import parse_config
    everything = parse_config(f"connectivity: {profile}\n")
    narrowed = parse_config(f"connectivity: {profile}\nregion: {region}\n")
    for group in everything.groups:
        kept = {t.url for t in narrowed.group(group.name).targets}
        expected = {t.url for t in group.targets if t.region in (None, region)}
        assert kept == expected, group.name
    maps = narrowed.group("maps").targets
    assert any(t.region == region for t in maps), "every geography has a MAPS front end"
    assert not any(t.region not in (None, region) for g in narrowed.groups for t in g.targets)


def test_the_ctl_mirror_replaces_microsofts_trust_list_urls():
    from exporter.config import parse_config
    config = parse_config("ctl_mirror_url: http://pki.corp.example/ctl/\n")
    urls = [t.url for t in config.group("ctl").targets]
    assert urls == [f"http://pki.corp.example/ctl/{n}stl.cab" for n in ("authroot", "disallowedcert", "pinrules")]
    assert {t.source for t in config.group("ctl").targets} == {"config"}
    assert config.group("ctl").routes == ("system",)
    assert {t.expect.content for t in config.group("ctl").targets} == {"ctl"}


def test_catalogue_entries_carry_their_source_and_user_targets_say_config():
    from exporter.config import parse_config
    config = parse_config("groups: {intranet: {targets: ['https://wsus.corp.example/']}}\n")
    assert {t.source for t in config.group("maps").targets} == {"article"}
    assert {t.source for t in config.group("revocation").targets} <= {"azure-ca-details", "microsoft-tls-g2-chain"}
    assert [t.source for t in config.group("intranet").targets] == ["config"]
