#!/usr/bin/env bash
# One command from a fresh checkout: install what the benchmarks need, then run them.
#   bash bench/run.sh sidebyside | scale | fidelity | all | profile   [options of bench/run.py]
# Root on Debian 12. Everything it starts listens on 127.0.0.0/8 only.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nginx-light prometheus-blackbox-exporter)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts both as services on install; the bench runs its own private instances.
for service in nginx prometheus-blackbox-exporter; do
  systemctl stop "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
done
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e . uvloop py-spy
exec python3 bench/run.py "$@"
