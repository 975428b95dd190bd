"""No credential written in a config file reaches a message, whatever shape the mistake has.

Each case is a config with a password in a wrong place. The password must not appear, as
written, URL-decoded or inside a Basic token, in what `--config.check` prints, in what
`POST /-/reload` answers, nor in the exporter's log.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest
from support import ExporterThread, lab_config

from exporter.config import ConfigError, parse_config

REPO = Path(__file__).parent.parent
PW = "Zq7-secret-pw"
ENCODED = "Zq7%40sec%3Aret%2Fpw"  # decodes to Zq7@sec:ret/pw

CASES = {
    "route-is-a-string": f'routes:\n  defender: "http://noc:{PW}@proxy.corp.example:3128"\n',
    "route-is-a-list": f'routes:\n  defender: ["http://noc:{PW}@proxy.corp.example:3128"]\n',
    "proxy-is-a-list": f'routes:\n  defender: {{proxy: ["http://noc:{PW}@proxy.corp.example:3128"]}}\n',
    "proxy-key-misspelt": f'routes:\n  defender: {{prxy: "http://noc:{PW}@proxy.corp.example:3128"}}\n',
    "url-as-route-name": f'routes:\n  "http://noc:{PW}@proxy.corp.example:3128": {{}}\n',
    "url-as-group-name": f'groups:\n  "http://noc:{PW}@proxy.corp.example:3128": {{}}\n',
    "proxy-bad-port": f'routes:\n  defender: {{proxy: "http://noc:{PW}@proxy.corp.example:99999"}}\n',
    "proxy-no-port-encoded": f'routes:\n  defender: {{proxy: "http://noc:{ENCODED}@proxy.corp.example"}}\n',
    "proxy-https-encoded": f'routes:\n  defender: {{proxy: "https://noc:{ENCODED}@proxy.corp.example:3128"}}\n',
    "proxy-unencoded-at": f'routes:\n  defender: {{proxy: "http://noc:{PW}@x@proxy.corp.example"}}\n',
    "proxy-as-interval": f'interval: "http://noc:{PW}@proxy.corp.example:3128"\n',
    "proxy-as-connect-to": f'connect_to: ["http://noc:{PW}@proxy.corp.example:3128"]\n',
    "long-url-shortened": f'interval: "http://a-rather-long-user-name-for-a-service:{PW}@proxy.corp.example:3128"\n',
    "top-level-string": f'"http://noc:{PW}@proxy.corp.example:3128"\n',
    "target-with-password": f'groups:\n  maps:\n    targets: ["https://noc:{PW}@wdcp.microsoft.com/"]\n',
    "target-bad-port": f'groups:\n  maps:\n    targets: ["https://noc:{PW}@wdcp.microsoft.com:notaport/"]\n',
    "target-ftp": f'groups:\n  maps:\n    targets: ["ftp://noc:{ENCODED}@wdcp.microsoft.com/"]\n',
    "duplicate-route-key": f'routes:\n  "http://noc:{PW}@p:1": {{}}\n  "http://noc:{PW}@p:1": {{}}\n',
    "yaml-error-after": f'routes:\n  defender: {{proxy: "http://noc:{PW}@proxy.corp.example:3128"\n',
}


def forms() -> list[str]:
    out = []
    for pw in (PW, ENCODED, unquote(ENCODED)):
        out += [pw, base64.b64encode(f"noc:{pw}".encode()).decode()]
    return out + ["Zq7@sec", "sec:ret"]


def assert_no_secret(text: str, where: str) -> None:
    for form in forms():
        assert form not in text, f"{form!r} leaks in {where}: {text}"
    for prefix in ("Zq7-", "Zq7%"):  # not even a shortened one
        assert prefix not in text, f"part of the password leaks in {where}: {text}"


@pytest.mark.parametrize("name", CASES)
def test_error_message_carries_no_secret(name):
    with pytest.raises(ConfigError) as info:
        parse_config(CASES[name], "c.yml")
    assert_no_secret(str(info.value), f"the error for {name}")
    assert str(info.value).startswith("c.yml: ")


def test_config_check_prints_no_secret(tmp_path):
    for name, text in CASES.items():
        path = tmp_path / f"{name}.yml"
        path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(path), "--config.check"],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert done.stderr.startswith(f"error: {path}: "), (name, done.stderr)
        assert_no_secret(done.stdout + done.stderr, f"--config.check output for {name}")


def test_reload_answer_and_log_carry_no_secret(tmp_path, caplog):
    path = lab_config(tmp_path, {"maps": ["https://wdcp.microsoft.com/"]}, connect_to=["::127.0.0.1:9"])
    good = path.read_text()
    with ExporterThread(path) as exp:
        for name, text in CASES.items():
            path.write_text(text)
            request = urllib.request.Request(f"http://127.0.0.1:{exp.port}/-/reload", method="POST")
            with caplog.at_level(logging.DEBUG):
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(request, timeout=20)
            assert info.value.code == 500, name
            body = info.value.read().decode()
            assert "the running configuration is kept" in body
            assert_no_secret(body, f"the reload answer for {name}")
        path.write_text(good)
        assert exp.get("/config")[0] == 200
        for page in ("/config", "/", "/metrics"):
            assert_no_secret(exp.get(page)[1], page)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "config reload failed" in logged
    assert_no_secret(logged, "the log")
