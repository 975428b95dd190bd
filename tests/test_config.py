"""Configuration: defaults, overrides, and one invalid file per error with its exact message.

Each tests/testdata/config/invalid-*.yml starts with `# error: <message>`; the
message is what the user sees (after the file's directory is stripped).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import assert_table_message, invalid_files

from exporter.config import ConfigError, load_config, parse_config

TESTDATA = Path(__file__).parent / "testdata" / "config"
INVALID = invalid_files("config")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_config_message(path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_table_message(path, str(info.value))


def test_invalid_table_is_not_empty():
    assert len(INVALID) >= 20


def test_secrets_never_in_error_messages():
    text = "routes:\n  defender:\n    proxy: http://user:hunter2@proxy.example\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yml")
    assert "hunter2" not in str(info.value)


def test_defaults_without_a_file():
    config = load_config(None)
    assert config.interval == 60 and config.timeout == 10 and config.concurrency == 64
    assert set(config.routes) == {"defender", "system"}
    assert all(r.proxy is None for r in config.routes.values())
    assert config.tls.ssl_options == 3 and config.tls.pinning and config.tls.revocation
    assert not config.host.enabled
    assert [g.name for g in config.groups] == [
        "maps", "update", "adl", "submission", "crl", "diagnostics", "ctl", "revocation",
    ]


@pytest.mark.parametrize("text", ["", "\n  \n", "# interval: 30s\n", "---\n"])
def test_an_empty_file_is_an_error_not_the_built_in_catalogue(tmp_path, text):
    path = tmp_path / "half-written.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "the file is empty; to run the built-in catalogue, start without --config.file" in str(info.value)


def test_an_empty_mapping_is_the_built_in_catalogue(tmp_path):
    path = tmp_path / "defaults.yml"
    path.write_text("{}\n")
    assert [j.key for j in load_config(path).jobs()] == [j.key for j in load_config(None).jobs()]


def test_duplicate_keys_anywhere_name_both_lines():
    text = "groups:\n  maps:\n    targets:\n      - {url: https://a.example/, url: https://b.example/}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yml")
    assert str(info.value) == ("c.yml: groups.maps.targets[0].url: given twice, at lines 4 and 4 "
                               "(YAML would keep only the last)")
    # a merge key's values may be overridden: that is what `<<` is for
    config = parse_config("routes:\n  base: &p {proxy: http://p.example:3128}\n"
                          "  other: {<<: *p, proxy: http://q.example:3128}\n", "c.yml")
    assert config.routes["other"].proxy.host == "q.example"


def test_target_urls_are_normalised():
    config = parse_config("groups:\n  intranet:\n    targets: [HTTPS://Mirror.Example:443, 'http://[::1]:80?x=1',"
                          " 'https://mirror.example:8443/a']\n", "c.yml")
    assert [t.url for t in config.group("intranet").targets] == [
        "https://mirror.example/", "http://[::1]/?x=1", "https://mirror.example:8443/a"]
    assert config.group("intranet").targets[0].pattern == "https://mirror.example/"


def test_overrides_replace_add_and_disable_groups():
    config = parse_config(
        """
interval: 2m
timeout: 15s
concurrency: 8
routes:
  defender: {proxy: "http://svc%40corp:p%3Ass@proxy.corp.example:8080"}
  branch: {proxy: http://10.1.2.3:3128}
connect_to: ["wdcp.microsoft.com:443:127.0.0.2:8443", "::[::1]:"]
groups:
  maps:
    interval: 30s
    targets: ["https://wdcp.microsoft.com/", {url: "https://x.cp.wd.microsoft.com/a?b=c", pattern: "*.wd.microsoft.com"}]
  diagnostics: {enabled: false}
  update: {route: [defender, branch]}
  intranet:
    description: our own mirror
    route: system
    targets: ["http://mirror.corp.example:8080/defu/"]
""",
        "c.yml",
    )
    assert config.interval == 120 and config.timeout == 15 and config.concurrency == 8
    proxy = config.routes["defender"].proxy
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == ("proxy.corp.example", 8080, "svc@corp", "p:ss")
    assert "p:ss" not in repr(proxy) and "p:ss" not in proxy.redacted()
    maps = config.group("maps")
    assert maps.interval == 30 and maps.timeout == 15
    assert [t.url for t in maps.targets] == ["https://wdcp.microsoft.com/", "https://x.cp.wd.microsoft.com/a?b=c"]
    assert maps.targets[1].request_target == "/a?b=c" and maps.targets[0].pattern == "https://wdcp.microsoft.com/"
    assert config.group("diagnostics") is None
    assert config.group("update").routes == ("defender", "branch")
    assert len([j for j in config.jobs() if j.group.name == "update"]) == 2 * len(config.group("update").targets)
    intranet = config.group("intranet")
    assert intranet.targets[0].port == 8080 and intranet.routes == ("system",)
    rule, any_rule = config.connect_to
    assert rule.apply("wdcp.microsoft.com", 443) == ("127.0.0.2", 8443) and not rule.matches("other", 443)
    assert any_rule.matches("anything", 1) and any_rule.apply("anything", 1) == ("::1", 1)


def test_expected_roots_normalised():
    fp = "84:7D:F6:A7:84:97:94:3F:27:FC:72:EB:93:F9:A6:37:32:0A:02:B5:61:D0:A9:1B:09:E8:7A:78:07:ED:7C:61"
    config = parse_config(f"groups:\n  update:\n    expected_roots: ['{fp}', '{fp.replace(':', '').lower()}']\n")
    assert config.group("update").expected_roots == {bytes.fromhex(fp.replace(":", ""))}


def test_config_check_flag(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("interval: 30s\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(good), "--config.check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout

    bad = TESTDATA / "invalid-duration.yml"
    result = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(bad), "--config.check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}: interval: expected a duration such as 30s or 5m, got 'soon'"
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(tmp_path / "nope.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "nope.yml: cannot read file: No such file or directory" in result.stderr
