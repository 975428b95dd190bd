"""Run inside `unshare -n`: bring up loopback, start the exporter on its built-in catalogue,
wait until it is ready, save /metrics, stop it.

Usage: unshare -n python3 netns_scrape.py OUT_DIR [SHELL_COMMAND]

Without SHELL_COMMAND, starts the installed console script on 127.0.0.1:10100. With it, runs
`bash -c SHELL_COMMAND` (e.g. the README's install-and-run line, as written) in its own process
group and waits for an exporter on the default port 10100.
Writes OUT_DIR/metrics.txt, OUT_DIR/status.html (the status page), OUT_DIR/ready.txt, OUT_DIR/stderr.txt, OUT_DIR/shutdown_seconds.txt.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

out = Path(sys.argv[1])
shell_command = sys.argv[2] if len(sys.argv) > 2 else None
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
stderr = open(out / "stderr.txt", "w")
if shell_command is None:
    exe = shutil.which("defender-connectivity-exporter")
    if exe is None:
        sys.exit("the console script defender-connectivity-exporter is not installed")
    proc = subprocess.Popen([exe, "--web.listen-address", "127.0.0.1:10100"], stderr=stderr)
    deadline = time.time() + 60
else:
    proc = subprocess.Popen(["bash", "-c", shell_command], stdout=stderr, stderr=stderr, start_new_session=True)
    deadline = time.time() + 240  # the command installs first
base = "http://127.0.0.1:10100"
ready = ""
while time.time() < deadline and proc.poll() is None:
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
            ready = r.read().decode()
            break
    except (urllib.error.URLError, ConnectionError, OSError):
        time.sleep(0.2)
(out / "ready.txt").write_text(ready)
if not ready:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL) if shell_command else proc.kill()
    sys.exit(f"no exporter became ready on {base} (exit code {proc.wait()}); see {out / 'stderr.txt'}")
with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
    (out / "metrics.txt").write_bytes(r.read())
with urllib.request.urlopen(base + "/", timeout=10) as r:
    (out / "status.html").write_bytes(r.read())
started = time.time()
if shell_command is None:
    proc.send_signal(signal.SIGTERM)
else:
    os.killpg(proc.pid, signal.SIGTERM)
code = proc.wait(timeout=30)
(out / "shutdown_seconds.txt").write_text(f"{time.time() - started:.3f} {code}\n")
