#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Works on a fresh Debian 12
# machine as root (CI runs exactly this via .ci/run). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the lab uses: Squid (proxy routes), mitmproxy (a real TLS-inspecting
# proxy), Prometheus + promtool and
# Alertmanager (rules, e2e alerting), Chromium + driver (status page), iproute2 and
# util-linux (network namespaces for the built-in catalogue run).
packages=(squid mitmproxy prometheus prometheus-alertmanager chromium chromium-driver iproute2 util-linux ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tests/run.sh: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the services on install; the tests run their own private instances.
for service in squid prometheus prometheus-alertmanager; do
  systemctl stop "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
done

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[test]"

exec python3 -m pytest -p no:cacheprovider "$@"
