# Sourced by tests/run.sh and bench/run.sh: the two install steps they share.
#
#   install_debian_packages CALLER PACKAGE...   apt-get install what is missing (root), starting no service
#   ensure_venv CALLER                          .venv in the checkout, made by /usr/bin/python3 when there is
#                                               one; prints its interpreter
#
# Nothing goes into the system Python (Debian 12 and Ubuntu 24.04 refuse it: PEP 668), and no
# service is stopped: the tests and benchmarks start their own instances on free loopback ports.

install_debian_packages() {
  local caller=$1 p missing=()
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) != 0 ]]; then
    echo "$caller: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "$caller: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d exit 101: Debian's maintainer scripts must not start the services of what we install
  # (Squid, Prometheus, nginx...): we never use them. Only while we install, and only if the
  # machine has no policy of its own.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n $own_policy ]]; then rm -f "$policy"; trap - EXIT; fi
}

ensure_venv() {
  local caller=$1 python=python3 venv=.venv
  [[ -x /usr/bin/python3 ]] && python=/usr/bin/python3
  if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$caller: creating the virtual environment $venv with $python" >&2
    "$python" -m venv --clear "$venv" >&2
  fi
  echo "$PWD/$venv/bin/python"
}
