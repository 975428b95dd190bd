"""Run the exporter's CLI with what the bench adds to see inside it, without
touching the shipped files:

    BENCH_GC_LOG=1          log every full garbage collection and its pause

    python bench/exporter_variant.py --config.file F --web.listen-address 127.0.0.1:PORT
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if os.environ.get("BENCH_GC_LOG") == "1":
    # Log every full (generation 2) collection and its pause to stderr.
    import gc
    import time

    _gc_started = [0.0]

    def _gc_timer(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            _gc_started[0] = time.perf_counter()
        else:
            print(f"gc2 {time.time():.3f} {1000 * (time.perf_counter() - _gc_started[0]):.1f} ms "
                  f"collected={info.get('collected')}", file=sys.stderr, flush=True)

    gc.callbacks.append(_gc_timer)

from exporter.cli import main  # noqa: E402

sys.exit(main())
