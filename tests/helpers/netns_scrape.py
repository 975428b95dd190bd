"""Run inside `unshare -n`: bring up loopback, start the installed exporter on
its built-in catalogue, wait until it is ready, save /metrics, stop it.

Usage: unshare -n python3 netns_scrape.py OUT_DIR
Writes OUT_DIR/metrics.txt, OUT_DIR/ready.txt, OUT_DIR/stderr.txt, OUT_DIR/shutdown_seconds.txt.
"""

import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

out = Path(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
exe = shutil.which("defender-connectivity-exporter")
if exe is None:
    sys.exit("the console script defender-connectivity-exporter is not installed")
stderr = open(out / "stderr.txt", "w")
proc = subprocess.Popen([exe, "--web.listen-address", "127.0.0.1:10100"], stderr=stderr)
base = "http://127.0.0.1:10100"
deadline = time.time() + 60
ready = ""
while time.time() < deadline:
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
            ready = r.read().decode()
            break
    except (urllib.error.URLError, ConnectionError, OSError):
        time.sleep(0.2)
(out / "ready.txt").write_text(ready)
with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
    (out / "metrics.txt").write_bytes(r.read())
started = time.time()
proc.send_signal(signal.SIGTERM)
code = proc.wait(timeout=30)
(out / "shutdown_seconds.txt").write_text(f"{time.time() - started:.3f} {code}\n")
