#!/usr/bin/env bash
# The demo: installs PostgreSQL's server if it is missing, then runs one local backup
# cycle (throwaway PostgreSQL with a Pachyderm-like fixture, local-directory buckets,
# no cluster) and prints what it did and where the backup is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
if [ ! -x "${CARGO_TARGET_DIR:-target}/debug/pachyderm-backup" ]; then
  echo "== first build: cargo compiles about 390 crates, about 9 minutes on 2 cores (measured) (once; later runs start at once)" >&2
fi
exec cargo run --locked -- demo "$@"
