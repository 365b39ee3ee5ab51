#!/usr/bin/env bash
# Benchmarks (figures for docs/BENCHMARKS.md; never assertions in tests):
#   1. memory: two cycles (full, then incremental) over a source of N objects (default
#      100,000) on s3s-fs and on local directories, peak RSS by /usr/bin/time -v;
#   2. copy throughput: pachyderm-backup against `rclone copy` with the same number
#      of transfers, both streaming between two buckets of one s3s-fs server.
# Usage: scripts/bench.sh [memory|copy|all]   (env: OBJECTS_N, TRANSFERS, BIN)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
what="${1:-all}"
BIN="${BIN:-$root/target/release/pachyderm-backup}"
[ -x "$BIN" ] || BIN="$root/target/debug/pachyderm-backup"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OBJECTS_N="${OBJECTS_N:-100000}"
TRANSFERS="${TRANSFERS:-16}"
work="$(mktemp -d /tmp/pachyderm-backup-bench.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${PGDATA_DIR:-}" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# A throwaway PostgreSQL with the fixture's databases (small: the benchmarks are about objects).
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGPORT_BENCH=$(free_port)
mkdir -p "$work/pg"; [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$work/pg"
PGDATA_DIR="$work/pg/data"
as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$work/pg/log" -w -t 30 -o "-c listen_addresses=127.0.0.1 -p $PGPORT_BENCH -k $work/pg -c fsync=off" start >/dev/null
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -c 'CREATE DATABASE pachyderm' -c 'CREATE DATABASE dex' >/dev/null
sed 's/{{CHUNKS}}/100/' tests/fixtures/pachyderm.sql | "$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -d pachyderm -v ON_ERROR_STOP=1 >/dev/null
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -d dex -v ON_ERROR_STOP=1 -f tests/fixtures/dex.sql >/dev/null
common_env=(PAUSE_MODE=none PGHOST=127.0.0.1 PGPORT="$PGPORT_BENCH" PGUSER=postgres PGSSLMODE=disable PG_BIN_DIR="$PGBIN" LOG_FORMAT=json PROGRESS_INTERVAL=10s)

start_s3s() {
  command -v s3s-fs >/dev/null || cargo install s3s-fs@0.14.1 --locked --features binary
  S3PORT=$(free_port)
  mkdir -p "$work/s3"
  s3s-fs --host 127.0.0.1 --port "$S3PORT" --access-key test --secret-key testtesttest "$work/s3" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$S3PORT) 2>/dev/null && break; sleep 0.1; done
  s3_env=(AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest AWS_REGION=us-east-1 AWS_ENDPOINT="http://127.0.0.1:$S3PORT" AWS_ALLOW_HTTP=true)
}
S3PORT=""

if [ "$what" = memory ] || [ "$what" = all ]; then
  [ -n "$S3PORT" ] || start_s3s
  # s3s-fs keeps a bucket as a directory: the objects are written there directly.
  python3 - "$work/s3/mem-src/chunk" "$OBJECTS_N" <<'PY'
import hashlib, os, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(root, exist_ok=True)
for i in range(1, n + 1):
    h = hashlib.sha256(f"chunk-{i}".encode()).hexdigest()
    with open(os.path.join(root, f"{h}.{i:016x}"), "wb") as f:
        f.write(hashlib.sha512(str(i).encode()).digest() * 16)
PY
  mkdir -p "$work/s3/mem-dst"
  for store in s3 local; do
    if [ "$store" = s3 ]; then urls=(SOURCE_URL=s3://mem-src TARGET_URL=s3://mem-dst "${s3_env[@]}"); else urls=(SOURCE_URL="file://$work/s3/mem-src" TARGET_URL="file://$work/local-dst"); fi
    echo "== memory: $OBJECTS_N objects of 1 KiB, $store buckets, $TRANSFERS transfers"
    for run in first second; do
      if ! env -i PATH="$PATH" "${common_env[@]}" "${urls[@]}" COPY_CONCURRENCY="$TRANSFERS" \
        /usr/bin/time -v "$BIN" run 2>"$work/mem-$store-$run.log" >/dev/null; then
        echo "   $run run FAILED:"; grep -v '"progress' "$work/mem-$store-$run.log" | tail -5; exit 1
      fi
      rss=$(grep 'Maximum resident set size' "$work/mem-$store-$run.log" | awk '{print $6}')
      wall=$(grep 'Elapsed (wall clock)' "$work/mem-$store-$run.log" | awk '{print $8}')
      summary=$(grep '"backup complete"' "$work/mem-$store-$run.log" | python3 -c 'import json,sys;l=json.loads(sys.stdin.readline());print("objects=%s copied=%s reused=%s" % (l["objects"], l["objects_copied"], l["objects_reused"]))')
      echo "   $run run: wall $wall, peak RSS $((rss / 1024)) MiB, $summary"
    done
  done
fi

if [ "$what" = copy ] || [ "$what" = all ]; then
  command -v rclone >/dev/null || { apt-get install -y -qq rclone >/dev/null; }
  [ -n "$S3PORT" ] || start_s3s
  mkdir -p "$work/s3/src/chunk" "$work/s3/dst-ours" "$work/s3/dst-rclone"
  echo "== copy: 400 objects of 1 MiB + 10 of 20 MiB (600 MiB) between two buckets of s3s-fs, $TRANSFERS transfers"
  python3 - "$work/s3/src/chunk" <<'PY'
import hashlib, os, sys
root = sys.argv[1]
for i in range(1, 411):
    size = 20 * 1024 * 1024 if i > 400 else 1024 * 1024
    h = hashlib.sha256(f"chunk-{i}".encode()).hexdigest()
    with open(os.path.join(root, f"{h}.{i:016x}"), "wb") as f:
        f.write(os.urandom(size))
PY
  start=$(date +%s.%N)
  env -i PATH="$PATH" "${common_env[@]}" SOURCE_URL=s3://src TARGET_URL=s3://dst-ours AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest \
    AWS_REGION=us-east-1 AWS_ENDPOINT="http://127.0.0.1:$S3PORT" AWS_ALLOW_HTTP=true COPY_CONCURRENCY="$TRANSFERS" PRECOPY=false \
    /usr/bin/time -v "$BIN" run 2>"$work/copy.log" >/dev/null
  ours=$(python3 -c "import time;print(f'{time.time()-$start:.1f}')")
  ours_rss=$(grep 'Maximum resident set size' "$work/copy.log" | awk '{print $6}')
  cat > "$work/rclone.conf" <<EOF
[a]
type = s3
provider = Other
endpoint = http://127.0.0.1:$S3PORT
access_key_id = test
secret_access_key = testtesttest
force_path_style = true
[b]
type = s3
provider = Other
endpoint = http://127.0.0.1:$S3PORT
access_key_id = test
secret_access_key = testtesttest
force_path_style = true
EOF
  start=$(date +%s.%N)
  env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" copy --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) a:src b:dst-rclone
  theirs=$(python3 -c "import time;print(f'{time.time()-$start:.1f}')")
  capture=$(python3 -c "import glob,json;m=json.load(open(glob.glob('$work/s3/dst-ours/backups/*/manifest.json')[0]));print(f\"{m['phases']['capture']:.1f}\")")
  echo "   pachyderm-backup run (whole run):             ${ours}s, peak RSS $((ours_rss / 1024)) MiB"
  cpu=$(awk -F': ' '/User time|System time/ {printf "%s ", $2}' "$work/copy.log")
  echo "   pachyderm-backup capture phase (the copy ∥ the dumps): ${capture}s; CPU user/sys: ${cpu}s"
  echo "   rclone copy (two remotes, streamed):          ${theirs}s"
fi
