"""The PAC sandbox's worker process: `python -m exporter.probes.pacworker`.

A PAC script is code from the network. It runs here, in a process of its own
with an address-space limit (RLIMIT_AS, argv[1] bytes) and a CPU-time limit,
never in the exporter; the parent (exporter/probes/pac.py) kills this process
when one call runs past its time bound. The engine is pypac's PACFile (the
JavaScript interpreter of dukpy, with the PAC helper functions
shExpMatch, isInNet, dnsResolve, ... as Netscape and Microsoft define them).

Protocol: one JSON object per line on stdin, one answer per line on stdout.

    {"op": "load", "digest": D, "script": TEXT}    -> {"ok": true} | {"ok": false, "error": ...}
    {"op": "eval", "digest": D, "url": U, "host": H} -> {"ok": true, "value": V} | {"ok": false, "error": ...}

The first line written is {"ready": true}, once the engine is imported.
"""

from __future__ import annotations

import json
import resource
import sys
from collections import OrderedDict

# Scripts kept compiled at once (one per PAC route is typical).
KEPT_SCRIPTS = 16


def _limit(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # A runaway that the parent somehow fails to kill still stops here.
    resource.setrlimit(resource.RLIMIT_CPU, (600, 600))


def _describe(exc: BaseException) -> str:
    text = str(getattr(exc, "original_exc", None) or exc).strip() or type(exc).__name__
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


def main() -> None:
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 256 << 20
    from pypac.parser import PACFile  # imported before the limit: the import is not the script's cost

    _limit(memory)
    scripts: OrderedDict[str, PACFile] = OrderedDict()
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "load":
                scripts[request["digest"]] = PACFile(request["script"])
                while len(scripts) > KEPT_SCRIPTS:
                    scripts.popitem(last=False)
                answer = {"ok": True}
            elif op == "eval":
                pac = scripts.get(request["digest"])
                if pac is None:
                    answer = {"ok": False, "error": "script not loaded", "unloaded": True}
                else:
                    value = pac.find_proxy_for_url(request["url"], request["host"])
                    answer = {"ok": True, "value": value if isinstance(value, str) else None,
                              "type": type(value).__name__}
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
        except MemoryError:
            answer = {"ok": False, "error": "the script ran out of its memory bound"}
        except Exception as exc:  # noqa: BLE001 - a script's error is an answer, not a crash
            answer = {"ok": False, "error": _describe(exc)}
        try:
            out.write(json.dumps(answer) + "\n")
            out.flush()
        except MemoryError:
            out.write('{"ok": false, "error": "the script ran out of its memory bound"}\n')
            out.flush()


if __name__ == "__main__":
    main()
