#!/usr/bin/env bash
# What benchmarks/bench_r_loo.py runs beside cloudloop: R with randomForest and
# jsonlite (also test dependencies), and R's own parallel tools doMC and furrr,
# from Debian's packages. Installs only what is missing; needs root.
set -euo pipefail
want=(r-base-core r-cran-jsonlite r-cran-randomforest r-cran-domc r-cran-furrr)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "bench-deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
