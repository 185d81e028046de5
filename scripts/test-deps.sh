#!/usr/bin/env bash
# System packages the test suite drives for real: iproute2 (network-namespace
# "machines"), redis-server, openssh-server (sshd inside those namespaces),
# chromium (the dashboard tests drive it through Playwright), r-base-core
# (examples/r_command.py drives an R script through a command task; r-cran-jsonlite
# and r-cran-randomforest: examples/loo_rf.R serves rows in one R process).
# Installs only what is missing; needs root (CI and these machines run as root).
set -euo pipefail
want=(iproute2 redis-server openssh-server openssh-client chromium r-base-core r-cran-jsonlite r-cran-randomforest)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "test-deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
  echo "test-deps: tests that need them are skipped outside CI and fail in CI" >&2
  exit 0
fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# the packages' own services are not wanted: the tests start their own servers
for svc in redis-server ssh; do
  (command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1) || true
  (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
done
