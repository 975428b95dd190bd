#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Extra arguments go to pytest.
# CI runs exactly this via .ci/run, on a fresh Debian 12 machine as root.
#
# Python packages go into the project's own virtual environment `.venv` (created with the
# Debian system interpreter /usr/bin/python3 when there is one), never into the system Python:
# Debian 12 and Ubuntu 24.04 refuse that (PEP 668, "externally-managed-environment").
# Services are left alone: every test starts its own Squid, Prometheus, Alertmanager, node_exporter on
# free loopback ports, so a Prometheus or Squid already running on this machine keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the lab uses: Squid, tinyproxy and Apache httpd (forward proxies of three
# families on the routes), mitmproxy (a real TLS-inspecting proxy), Prometheus + promtool and
# Alertmanager (rules, e2e alerting), node_exporter (reads textfile mode's file), systemd
# (systemd-analyze verify of deploy/systemd), Chromium + driver
# (status page), iproute2 and util-linux (network namespaces for the built-in catalogue run),
# python3-venv (the project's virtual environment), gcab + osslsigncode + cabextract
# (certificate trust list cabinets, packed, signed and checked by real tools), jsonnet (renders
# the monitoring mixin in mixin/), victoria-metrics (VictoriaMetrics, vmagent and vmalert for the
# many-sites e2e test), openssl (`openssl s_server -status_file`: a MAPS server that staples OCSP).
packages=(squid tinyproxy apache2 mitmproxy prometheus prometheus-alertmanager prometheus-node-exporter systemd
          chromium chromium-driver iproute2 util-linux ca-certificates python3-venv gcab osslsigncode cabextract
          jsonnet victoria-metrics openssl)
# Node.js and npm (tests/test_grafana_schema.py runs tsc): Debian's, unless the machine has its own.
command -v npm >/dev/null || packages+=(nodejs npm)
. tests/setup.sh
install_debian_packages tests/run.sh "${packages[@]}"

# kubectl (for `kubectl kustomize`, tests/test_kubernetes.py) ships in the machine image; Debian has no
# package of it. Say so plainly rather than fail inside a test.
command -v kubectl >/dev/null || echo "tests/run.sh: kubectl not found: tests/test_kubernetes.py will fail" >&2

venv_python=$(ensure_venv tests/run.sh)
venv=.venv
"$venv_python" -m pip install --quiet --disable-pip-version-check -e ".[test]"

# npm packages, in a private prefix (tests/.npm, gitignored): Grafana's published dashboard types
# and the TypeScript compiler, for tests/test_grafana_schema.py.
npm_packages=(@grafana/schema@13.2.3 typescript@7.0.2)
if ! [[ -x tests/.npm/node_modules/.bin/tsc && -f tests/.npm/node_modules/@grafana/schema/package.json ]]; then
  echo "tests/run.sh: installing npm packages into tests/.npm: ${npm_packages[*]}"
  npm install --prefix tests/.npm --no-save --no-audit --no-fund --loglevel=error "${npm_packages[@]}" >/dev/null
fi

# The console script (defender-connectivity-exporter) is in $venv/bin; tests/conftest.py also
# puts the interpreter's own bin directory first on PATH.
export PATH="$PWD/$venv/bin:$PATH"
exec "$venv_python" -m pytest -p no:cacheprovider "$@"
