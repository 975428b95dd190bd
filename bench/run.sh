#!/usr/bin/env bash
# One command from a fresh checkout: install what the benchmarks need, then run them.
#   bash bench/run.sh sidebyside | scale | fidelity | all | profile   [options of bench/run.py]
# Root on Debian 12. Everything it starts listens on 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nginx-light prometheus-blackbox-exporter)
. tests/setup.sh
install_debian_packages bench/run.sh "${packages[@]}"
# Into the project's .venv (as tests/run.sh), never the system Python; the bench starts its own
# nginx and blackbox_exporter on loopback and leaves any of the machine's alone.
venv_python=$(ensure_venv bench/run.sh)
"$venv_python" -m pip install --quiet --disable-pip-version-check -e . uvloop py-spy
export PATH="$PWD/.venv/bin:$PATH"
exec "$venv_python" bench/run.py "$@"
