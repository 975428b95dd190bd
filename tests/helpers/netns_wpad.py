"""Run inside `unshare -m -n --propagation private`: WPAD found by DNS as Windows finds it.

Usage: unshare -m -n --propagation private python3 netns_wpad.py OUT_DIR

OUT_DIR holds `hosts` and `resolv.conf` (bind-mounted over /etc/hosts and
/etc/resolv.conf in this mount namespace only) and receives `result.json`.
The hosts file names wpad.<parent domain> only, so discovery has to walk up
from the search domain. A lab HTTP server serves wpad.dat there; another one
plays the proxy the PAC names (it answers any absolute-URI GET with 200).
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1])
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", str(out / "hosts"), "/etc/hosts"], check=True)
subprocess.run(["mount", "--bind", str(out / "resolv.conf"), "/etc/resolv.conf"], check=True)

from lab import Files, LabServers, Ok  # noqa: E402

from exporter.assess import Assessor  # noqa: E402
from exporter.catalogue import builtin_catalogue  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.probes import ProbeEnv  # noqa: E402

WPAD_IP = (out / "wpad_ip").read_text().strip()
TARGET = "http://crl.microsoft.com/pki/crl/products/lab.crl"

with LabServers() as lab:
    proxy = lab.serve(Ok(body=b"via the PAC's proxy\n"), ip="127.0.0.1")
    pac = f'function FindProxyForURL(url, host) {{ return "PROXY 127.0.0.1:{proxy.port}"; }}'
    wpad = lab.serve(Files({"/wpad.dat": pac.encode()}), ip=WPAD_IP, port=80)
    config_path = out / "config.yml"
    config_path.write_text(
        "timeout: 3s\n"
        "routes:\n  auto:\n    wpad: true\n"
        "groups:\n"
        + "".join(f"  {g}: {{enabled: false}}\n" for g in builtin_catalogue()["groups"] if g != "crl")
        + f"  crl:\n    route: auto\n    targets: ['{TARGET}']\n"
    )
    config = load_config(config_path)

    async def main():
        env = ProbeEnv.from_config(config)
        assessor = Assessor(config, trust=env.trust)
        try:
            outcome = await assessor.run(config.jobs()[0], env)
        finally:
            assessor.routes.close()
        source = assessor.routes.sources["auto"]
        return {
            "success": outcome.probe.success,
            "reason": str(outcome.probe.reason) if outcome.probe.reason else None,
            "detail": outcome.probe.detail,
            "proxy": outcome.proxy,
            "proxy_port": proxy.port,
            "pac_url": source.last.url if source.last else None,
            "wpad_requests": wpad.request_lines,
            "proxy_requests": proxy.request_lines,
        }

    (out / "result.json").write_text(json.dumps(asyncio.run(main())))
