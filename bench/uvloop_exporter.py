"""Run the exporter's CLI on uvloop (an optional, faster event loop).

    python bench/uvloop_exporter.py --config.file F --web.listen-address 127.0.0.1:PORT

The CLI itself (exporter/cli.py) uses asyncio.run(); this wrapper installs
uvloop's event-loop policy first, which is what an `--event-loop uvloop`
option in the CLI would do (see docs/performance.md).
"""

import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
uvloop.install()

from exporter.cli import main  # noqa: E402

sys.exit(main())
