"""--web.config.file validation: one bad file per error with its exact message, and --config.check.

Each tests/testdata/webconfig/invalid-*.yml starts with `# error: <message>`; the message is what the
user sees (after the file's directory is stripped). Files it names resolve against that folder, as
exporter-toolkit resolves them: `server.crt`/`server.key` there are a throw-away self-signed pair made
for these tests only, `encrypted.key` is the same key under the passphrase `testonly`, and
`other.key` matches nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import assert_table_message, invalid_files

from exporter.webconfig import WebConfigError, load_web_config

REPO = Path(__file__).parent.parent
TESTDATA = Path(__file__).parent / "testdata" / "webconfig"
INVALID = invalid_files("webconfig")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_web_config_message(path):
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    message = str(info.value)
    assert_table_message(path, message)
    assert "Errno" not in message and "PEM lib" not in message and "_ssl.c" not in message


def test_invalid_table_is_not_empty():
    assert len(INVALID) >= 20


def test_a_good_web_config_loads(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {TESTDATA / 'server.crt'}\n"
                    f"  key_file: {TESTDATA / 'server.key'}\n"
                    "basic_auth_users:\n  prometheus: $2y$10$Dy0uOerwxNTFsDp1YxH3mu7E2hQ2p2IvKpdxCNU2bPwDvyKUcKZ6q\n"
                    "http_server_config:\n  headers: {X-Frame-Options: deny}\n")
    web = load_web_config(str(path))
    assert web.tls.cert_file == str(TESTDATA / "server.crt") and set(web.users) == {"prometheus"}
    assert web.ssl_context() is not None


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "--config.check", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_config_check_validates_the_web_config_too(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("interval: 30s\n")
    bad = TESTDATA / "invalid-cert-missing.yml"
    done = check("--config.file", str(config), "--web.config.file", str(bad))
    assert done.returncode == 2, done.stdout
    assert done.stderr.strip() == f"error: {bad}: tls_server_config.cert_file: {TESTDATA}/missing.crt: no such file"

    missing = tmp_path / "nope.yml"
    done = check("--web.config.file", str(missing))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {missing}: cannot read file: No such file or directory"

    good = tmp_path / "web.yml"
    good.write_text(f"tls_server_config:\n  cert_file: {TESTDATA / 'server.crt'}\n"
                    f"  key_file: {TESTDATA / 'server.key'}\n")
    done = check("--config.file", str(config), "--web.config.file", str(good))
    assert done.returncode == 0, done.stderr
    assert f"{good}: valid" in done.stdout and f"{config}: valid" in done.stdout
