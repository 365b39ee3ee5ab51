#!/usr/bin/env bash
# Benchmarks (figures for docs/BENCHMARKS.md; never assertions in tests):
#   1. memory: two cycles (full, then incremental) over a source of N objects (default
#      100,000) on s3s-fs and on local directories, peak RSS by /usr/bin/time -v;
#   2. copy: COPY_MIB MiB (default 1100) of chunk-like objects (1 KiB-20 MiB) between two
#      buckets of one s3s-fs server, side by side on the same data: the GET ceiling
#      (rclone to tmpfs), our streamed run against `rclone copy` with two remotes, our
#      server-side run against `rclone copy` with one remote and `aws s3 sync`, our
#      restore (server-side and streamed) against pg_restore + `rclone copy` back;
#      wall, peak RSS and CPU of each.
#   3. downtime: the paused interval (the capture) of a nightly run at 10,000, 100,000
#      and 1,000,000 live chunks (DOWNTIME_SIZES), indexed by the database and, for
#      comparison, by a listing of the whole bucket (the table renamed away), beside the
#      seeds' manual procedure on the same data (pg_dump of both databases, then
#      `rclone sync` of the bucket), and bare pg_dump of both databases.
#   4. scale: peak RSS of a nightly run's object pipeline at SCALE_SIZES objects
#      (default 1,000,000 and 10,000,000; examples/scale.rs: a synthetic source that
#      makes its listing pages on demand, so no disk holds the objects).
#   5. shards: the first copy of SHARD_MIB MiB of chunk-like objects (64 KiB-4 MiB) by
#      `copy-shard` with N = 1, 2, 4 shards (SHARD_COUNTS), each shard a process as each
#      index of the copy Job is a pod, all at once, between two buckets of s3s-fs.
# Usage: scripts/bench.sh [memory|copy|downtime|scale|shards|all]   (env: OBJECTS_N, TRANSFERS, COPY_MIB, BIN, DOWNTIME_SIZES, SCALE_SIZES, SHARD_MIB, SHARD_COUNTS)
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
shm="/dev/shm/$(basename "$work")"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${PGDATA_DIR:-}" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work" "$shm"
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
sed 's/{{CHUNKS}}/100/' src/demo/pachyderm.sql | "$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -d pachyderm -v ON_ERROR_STOP=1 >/dev/null
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -d dex -v ON_ERROR_STOP=1 -f src/demo/dex.sql >/dev/null
# Pachyderm's index of live chunks: rows for chunks $1..$2 of $3 bytes (the fixture has
# 1..100). A run copies what the database says is live, so every object a benchmark
# puts in its source bucket needs its row, or the run copies only the fixture's hundred.
index_chunks() {
  "$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -d pachyderm -v ON_ERROR_STOP=1 -c \
    "INSERT INTO storage.chunk_objects (chunk_id, gen, uploaded, tombstone, size) SELECT sha256(convert_to('chunk-' || i, 'UTF8')), i, true, false, $3 FROM generate_series($1, $2) i ON CONFLICT DO NOTHING" >/dev/null
}
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
  index_chunks 101 "$OBJECTS_N" 1024
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
  command -v aws >/dev/null || python3 -m pip install -q --disable-pip-version-check awscli
  [ -n "$S3PORT" ] || start_s3s
  mkdir -p "$work/gen/chunk" "$work/s3/src"
  for b in dst-stream dst-server dst-rclone dst-rclone1 dst-aws restored restored-rclone restored-rclone1 restored-server; do mkdir -p "$work/s3/$b"; done
  # Chunk-like objects: sizes log-uniform in 1 KiB-20 MiB (most small, a few large, as
  # Pachyderm's chunks), random bytes, COPY_MIB MiB in all, named and indexed as live
  # chunks 1, 2... (the fixture's 100 rows included: the run copies what the index names).
  python3 - "$work/gen/chunk" "${COPY_MIB:-1100}" > "$work/copy-objects" <<'PY2'
import hashlib, math, os, random, sys
root, budget = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
rng, total, i = random.Random(11), 0, 0
while total < budget:
    i += 1
    size = int(math.exp(rng.uniform(math.log(1024), math.log(20 * 1024 * 1024))))
    h = hashlib.sha256(f"chunk-{i}".encode()).hexdigest()
    with open(os.path.join(root, f"{h}.{i:016x}"), "wb") as f:
        f.write(os.urandom(size))
    print(i, size)
    total += size
PY2
  count=$(wc -l < "$work/copy-objects"); mib=$(awk '{s+=$2} END {printf "%.0f", s/1048576}' "$work/copy-objects")
  while read -r i size; do echo "$i,$size"; done < "$work/copy-objects" > "$work/copy-index.csv"
  "$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -d pachyderm -v ON_ERROR_STOP=1 \
    -c "CREATE TEMP TABLE sizes (i int, size bigint)" -c "\\copy sizes FROM '$work/copy-index.csv' CSV" \
    -c "INSERT INTO storage.chunk_objects (chunk_id, gen, uploaded, tombstone, size) SELECT sha256(convert_to('chunk-' || i, 'UTF8')), i, true, false, size FROM sizes ON CONFLICT DO NOTHING" >/dev/null
  [ "$(wc -l < "$work/copy-objects")" -ge 100 ] || { echo "COPY_MIB too small: the fixture indexes chunks 1-100" >&2; exit 1; }
  echo "== copy: $count chunk-like objects (1 KiB-20 MiB, $mib MiB) between two buckets of one s3s-fs (plain HTTP), $TRANSFERS transfers, $(nproc) cores"
  MOTOPORT=$(free_port)
  moto_server -H 127.0.0.1 -p "$MOTOPORT" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$MOTOPORT) 2>/dev/null && break; sleep 0.2; done
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
[m]
type = s3
provider = Other
endpoint = http://127.0.0.1:$MOTOPORT
access_key_id = test
secret_access_key = test
force_path_style = true
EOF
  # Uploaded through S3 (single PUTs: MD5 ETags), as Pachyderm's chunks are: a store
  # keeps its metadata then (s3s-fs hashes a file written behind its back on every GET).
  for b in src dst-server dst-rclone1 dst-aws; do env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" mkdir "m:$b"; done
  env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" copy --transfers "$TRANSFERS" "$work/gen" a:src
  env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" copy --transfers "$TRANSFERS" "$work/gen" m:src
  rm -rf "$work/gen"
  # One row: a command timed with its peak RSS (/usr/bin/time -v).
  row() {
    local name="$1"; shift
    local start; start=$(date +%s.%N)
    if ! /usr/bin/time -v "$@" >/dev/null 2>"$work/row.log"; then echo "   $name FAILED:"; grep -E '"(ERROR|WARN)"|rror' "$work/row.log" | tail -5; exit 1; fi
    local wall rss cpu
    wall=$(python3 -c "import time;print(f'{time.time()-$start:.1f}')")
    rss=$(grep 'Maximum resident set size' "$work/row.log" | awk '{print $6}')
    cpu=$(awk -F': ' '/User time|System time/ {s+=$2} END {printf "%.1f", s}' "$work/row.log")
    printf "   %-58s %6ss  %5s MiB  CPU %ss\n" "$name" "$wall" "$((rss / 1024))" "$cpu"
    cp "$work/row.log" "$work/row-$(echo "$name" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9' '-').log"
  }
  ours_env=(env -i PATH="$PATH" "${common_env[@]}" SOURCE_URL=s3://src AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest
    AWS_REGION=us-east-1 AWS_ENDPOINT="http://127.0.0.1:$S3PORT" AWS_ALLOW_HTTP=true COPY_CONCURRENCY="$TRANSFERS" PRECOPY=false)
  rclone_=(env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf")
  moto_env=(env -i PATH="$PATH" "${common_env[@]}" SOURCE_URL=s3://src AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    AWS_REGION=us-east-1 AWS_ENDPOINT="http://127.0.0.1:$MOTOPORT" AWS_ALLOW_HTTP=true COPY_CONCURRENCY="$TRANSFERS" PRECOPY=false)
  aws_=(env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "http://127.0.0.1:$MOTOPORT")
  row "GET ceiling: rclone copy of every object to tmpfs" "${rclone_[@]}" copy --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) a:src "$shm"
  rm -rf "$shm"
  echo "   -- streamed through the process (two endpoints' worth: COPY_MODE=stream / two remotes)"
  row "pachyderm-backup run, COPY_MODE=stream (whole run)" "${ours_env[@]}" TARGET_URL=s3://dst-stream COPY_MODE=stream "$BIN" run
  row "rclone copy, two remotes (streamed)" "${rclone_[@]}" copy --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) a:src b:dst-rclone
  echo "   -- copied by the store (one account: COPY_MODE=auto / one remote) on s3s-fs, whose copies carry no SHA-256: records pending until verify --deep"
  row "pachyderm-backup run, COPY_MODE=auto (s3s-fs, whole run)" "${ours_env[@]}" TARGET_URL=s3://dst-server "$BIN" run
  row "rclone copy, one remote (server-side, s3s-fs)" "${rclone_[@]}" copy --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) a:src a:dst-rclone1
  echo "   -- the same on moto, which gives each copy's SHA-256 when asked (as S3 does)"
  row "pachyderm-backup run, COPY_MODE=auto (moto, whole run)" "${moto_env[@]}" TARGET_URL=s3://dst-server "$BIN" run
  row "rclone copy, one remote (server-side)" "${rclone_[@]}" copy --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) m:src m:dst-rclone1
  row "aws s3 sync, defaults (server-side between buckets)" "${aws_[@]}" s3 sync --only-show-errors s3://src s3://dst-aws
  echo "   -- restore of the streamed backup on s3s-fs (both databases, --clean over the originals, + every object into a new bucket)"
  folder=$(ls "$work/s3/dst-stream/backups" | grep -v lock | sort | tail -1)
  restore_env=(env -i PATH="$PATH" "${common_env[@]}" TARGET_URL=s3://dst-stream RESTORE_URL=s3://restored AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest
    AWS_REGION=us-east-1 AWS_ENDPOINT="http://127.0.0.1:$S3PORT" AWS_ALLOW_HTTP=true COPY_CONCURRENCY="$TRANSFERS"
    RESTORE_PGHOST=127.0.0.1 RESTORE_PGPORT="$PGPORT_BENCH" RESTORE_PGUSER=postgres RESTORE_PGSSLMODE=disable)
  row "pachyderm-backup restore (s3s-fs, streamed)" "${restore_env[@]}" COPY_MODE=stream "$BIN" restore --backup "$folder" --clean
  "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -Fc -f "$work/pachyderm.dump" pachyderm
  "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -Fc -f "$work/dex.dump" dex
  cat > "$work/manual-restore.sh" <<EOF
set -e
"$PGBIN/pg_restore" -h 127.0.0.1 -p $PGPORT_BENCH -U postgres --clean --if-exists -d pachyderm "$work/pachyderm.dump"
"$PGBIN/pg_restore" -h 127.0.0.1 -p $PGPORT_BENCH -U postgres --clean --if-exists -d dex "$work/dex.dump"
env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" copy --transfers $TRANSFERS --checkers $((TRANSFERS * 2)) a:dst-rclone b:restored-rclone
EOF
  row "pg_restore of both dumps + rclone copy back, two remotes (s3s-fs)" bash "$work/manual-restore.sh"
  echo "   -- restore of the server-side backup on s3s-fs (pending records: copied back by the store, each checked by its ETag)"
  server_folder=$(ls "$work/s3/dst-server/backups" | grep -v lock | sort | tail -1)
  row "pachyderm-backup restore (s3s-fs, COPY_MODE=auto: server-side)" "${restore_env[@]}" TARGET_URL=s3://dst-server RESTORE_URL=s3://restored-server "$BIN" restore --backup "$server_folder" --clean
  row "pg_restore of both dumps + rclone copy back, one remote (s3s-fs)" bash -c "sed 's/a:dst-rclone b:restored-rclone/a:dst-rclone1 a:restored-rclone1/' '$work/manual-restore.sh' | bash"
  row "pachyderm-backup verify --deep of it (records the pending SHA-256s)" "${ours_env[@]}" TARGET_URL=s3://dst-server "$BIN" verify --backup "$server_folder" --deep
  echo "   -- restore of the server-side backup on moto"
  for b in restored restored-rclone1; do env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" mkdir "m:$b"; done
  moto_folder=$(env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" lsf m:dst-server/backups/ | grep -v lock | sort | tail -1 | tr -d /)
  row "pachyderm-backup restore (moto, COPY_MODE=auto: server-side)" "${moto_env[@]}" TARGET_URL=s3://dst-server RESTORE_URL=s3://restored \
    RESTORE_PGHOST=127.0.0.1 RESTORE_PGPORT="$PGPORT_BENCH" RESTORE_PGUSER=postgres RESTORE_PGSSLMODE=disable "$BIN" restore --backup "$moto_folder" --clean
  row "pg_restore of both dumps + rclone copy back, one remote (moto)" bash -c "sed 's/a:dst-rclone b:restored-rclone/m:dst-rclone1 m:restored-rclone1/' '$work/manual-restore.sh' | bash"
  grep -h '"backup complete"' "$work"/row-pachyderm-backup-run*copy-mode-auto--moto*.log | python3 -c 'import json,sys;l=json.loads(sys.stdin.readline());print("   (moto, COPY_MODE=auto: %s objects, %s copied, %s bytes)" % (l["objects"], l["objects_copied"], l["object_bytes"]))' || true
  grep -h "objects are" "$work"/row-pachyderm-backup-run*copy-mode-auto--moto*.log | head -2 | python3 -c 'import json,sys;[print("   (moto run: " + json.loads(l)["message"] + ")") for l in sys.stdin]' || true
  env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" cat "m:dst-server/backups/$moto_folder/manifest.json" > "$work/moto-manifest.json"
  mkdir -p "$work/moto/backups/$moto_folder" && mv "$work/moto-manifest.json" "$work/moto/backups/$moto_folder/manifest.json"
  for b in s3/dst-stream s3/dst-server moto; do
    python3 - "$work/$b/backups" <<'PY2'
import glob, json, sys
m = json.load(open(sorted(glob.glob(sys.argv[1] + "/*/manifest.json"))[-1]))
c = m["objects"]
phases = ", ".join(f"{k} {v:.1f}" for k, v in m["phases"].items())
print(f"   ({sys.argv[1].split('/')[-2]}: {c['count']} objects, {c['copied']} copied, {c['bytes']} bytes; phases (s): {phases})")
PY2
  done
fi

if [ "$what" = downtime ] || [ "$what" = all ]; then
  command -v rclone >/dev/null || { apt-get install -y -qq rclone >/dev/null; }
  psql_b() { "$PGBIN/psql" -q -X -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -v ON_ERROR_STOP=1 "$@"; }
  secs() { python3 -c "import time;print(f'{time.time()-$1:.2f}')"; }
  # The objects and rows of chunks $2..$3 (64 bytes each) under $1, as Pachyderm names them.
  chunks() {
    python3 - "$1" "$2" "$3" <<'PY'
import hashlib, os, sys
root, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root, exist_ok=True)
for i in range(a, b + 1):
    h = hashlib.sha256(f"chunk-{i}".encode()).hexdigest()
    with open(os.path.join(root, f"{h}.{i:016x}"), "wb") as f:
        f.write(hashlib.sha512(str(i).encode()).digest())
PY
    psql_b -d pachyderm -c "INSERT INTO storage.chunk_objects (chunk_id, gen, uploaded, tombstone, size) SELECT sha256(convert_to('chunk-' || i, 'UTF8')), i, true, false, 64 FROM generate_series($2, $3) i" >/dev/null
  }
  capture_of() { python3 -c "import glob,json,sys;m=json.load(open(sorted(glob.glob(sys.argv[1]+'/backups/*/manifest.json'))[-1]));print(f\"{m['phases']['capture']:.2f} {m['objects']['index']} {m['objects']['copied']} {m['phases'].get('dump', 0):.2f}\")" "$1"; }
  echo "== downtime: the paused interval of a nightly run (100 chunks new since the last backup), local directories, $TRANSFERS transfers"
  printf '   %-10s | %-22s | %-22s | %-18s | %-14s | %-20s | %s\n' "chunks" "ours, database index" "ours, bucket listing" "manual: dump+sync" "bare pg_dump×2" "our dumps (resumed)" "peak RSS (db index)"
  for n in ${DOWNTIME_SIZES:-10000 100000 1000000}; do
    d="$work/dt-$n"; src="$d/src"; rm -rf "$d"; mkdir -p "$d"
    psql_b -d postgres -c 'DROP DATABASE IF EXISTS pachyderm' -c 'CREATE DATABASE pachyderm' >/dev/null
    sed 's/{{CHUNKS}}/0/' src/demo/pachyderm.sql | psql_b -d pachyderm >/dev/null
    chunks "$src/chunk" 1 "$n"
    run_env=(env -i PATH="$PATH" "${common_env[@]}" SOURCE_URL="file://$src" COPY_CONCURRENCY="$TRANSFERS" KEEP_LAST=100)
    # The first backup, and the manual procedure's first sync: not timed.
    "${run_env[@]}" TARGET_URL="file://$d/ours" "$BIN" run 2>"$d/first.log" >/dev/null || { echo "first run FAILED"; tail -5 "$d/first.log"; exit 1; }
    rclone sync --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) "$src" "$d/manual" >/dev/null 2>&1
    chunks "$src/chunk" $((n + 1)) $((n + 100))
    "${run_env[@]}" TARGET_URL="file://$d/ours" /usr/bin/time -v "$BIN" run 2>"$d/db.log" >/dev/null || { echo "run FAILED"; tail -5 "$d/db.log"; exit 1; }
    db=$(capture_of "$d/ours"); rss=$(grep 'Maximum resident set size' "$d/db.log" | awk '{print $6}')
    # The same nightly run with the table renamed away: the whole bucket listed while paused.
    chunks "$src/chunk" $((n + 101)) $((n + 200))
    psql_b -d pachyderm -c 'ALTER TABLE storage.chunk_objects RENAME COLUMN gen TO generation' >/dev/null
    "${run_env[@]}" TARGET_URL="file://$d/ours" "$BIN" run 2>"$d/list.log" >/dev/null || { echo "listing run FAILED"; tail -5 "$d/list.log"; exit 1; }
    psql_b -d pachyderm -c 'ALTER TABLE storage.chunk_objects RENAME COLUMN generation TO gen' >/dev/null
    listing=$(capture_of "$d/ours")
    # The seeds' procedure on the same delta: dump both databases, then sync the bucket.
    chunks "$src/chunk" $((n + 201)) $((n + 300))
    start=$(date +%s.%N)
    "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -Fc -f "$d/pachyderm.dump" pachyderm
    "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -Fc -f "$d/dex.dump" dex
    rclone sync --transfers "$TRANSFERS" --checkers $((TRANSFERS * 2)) "$src" "$d/manual" >/dev/null 2>&1
    manual=$(secs "$start")
    start=$(date +%s.%N)
    "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -Fc -Z1 -f "$d/p2.dump" pachyderm &
    "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PGPORT_BENCH" -U postgres -Fc -Z1 -f "$d/d2.dump" dex; wait
    bare=$(secs "$start")
    printf '   %-10s | %-22s | %-22s | %-18s | %-14s | %-20s | %s MiB\n' "$n" "$(echo "$db" | awk '{print $1"s ("$3" copied)"}')" "$(echo "$listing" | awk '{print $1"s ("$3" copied)"}')" "${manual}s" "${bare}s" "$(echo "$db" | awk '{print $4"s"}')" "$((rss / 1024))"
    rm -rf "$d"
  done
fi

if [ "$what" = scale ] || [ "$what" = all ]; then
  cargo build --release --locked --example scale >/dev/null 2>&1 || { echo "cargo build --release --example scale FAILED" >&2; exit 1; }
  echo "== scale: a nightly run's object pipeline (everything reused), synthetic source"
  for n in ${SCALE_SIZES:-1000000 10000000}; do
    /usr/bin/time -v "$root/target/release/examples/scale" "$n" >"$work/scale.out" 2>"$work/scale.err" || { echo "scale $n FAILED"; cat "$work/scale.err"; exit 1; }
    sed 's/^/   /' "$work/scale.out"
    echo "   $n objects: peak RSS $(( $(grep 'Maximum resident set size' "$work/scale.err" | awk '{print $6}') / 1024 )) MiB, $(grep 'Elapsed' "$work/scale.err" | awk '{print $8}') wall"
  done
fi

if [ "$what" = shards ] || [ "$what" = all ]; then
  [ -n "$S3PORT" ] || start_s3s
  mib="${SHARD_MIB:-1024}"
  count=$(python3 - "$work/s3/shard-src/chunk" "$mib" <<'PY'
import hashlib, os, random, sys
root, total = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
os.makedirs(root, exist_ok=True)
rng, i, written = random.Random(7), 0, 0
block = os.urandom(4 * 1024 * 1024)
while written < total:
    i += 1
    size = min(rng.choice([64, 256, 1024, 4096]) * 1024, total - written)
    h = hashlib.sha256(f"chunk-{i}".encode()).hexdigest()
    with open(os.path.join(root, f"{h}.{i:016x}"), "wb") as f:
        f.write(hashlib.sha256(str(i).encode()).digest() + block[: size - 32])
    written += size
print(i)
PY
)
  echo "== shards: first copy of $mib MiB ($count objects, 64 KiB-4 MiB) between two buckets of s3s-fs, COPY_CONCURRENCY=$TRANSFERS per shard, $(nproc) cores"
  printf '   %-7s | %-9s | %-10s | %-22s | %s\n' "shards" "wall" "MiB/s" "slowest shard" "peak RSS per shard"
  for n in ${SHARD_COUNTS:-1 2 4}; do
    mkdir -p "$work/s3/shard-dst-$n"
    shard_env=(env -i PATH="$PATH" "${common_env[@]}" "${s3_env[@]}" SOURCE_URL=s3://shard-src TARGET_URL="s3://shard-dst-$n" COPY_CONCURRENCY="$TRANSFERS" COPY_MODE=stream)
    start=$(date +%s.%N)
    spids=()
    for i in $(seq 0 $((n - 1))); do
      "${shard_env[@]}" /usr/bin/time -v "$BIN" copy-shard --backup "20261204T000000Z" --shards "$n" --index "$i" >/dev/null 2>"$work/shard-$n-$i.log" &
      spids+=($!)
    done
    for p in "${spids[@]}"; do wait "$p" || { echo "   a shard FAILED:"; tail -5 "$work"/shard-"$n"-*.log; exit 1; }; done
    wall=$(python3 -c "import time;print(f'{time.time()-$start:.1f}')")
    slowest=$(python3 -c "import glob,json;print(max(json.load(open(f))['seconds'] for f in glob.glob('$work/s3/shard-dst-$n/backups/*/shards/*.json')))")
    rss=$(for i in $(seq 0 $((n - 1))); do grep 'Maximum resident set size' "$work/shard-$n-$i.log" | awk '{print int($6/1024)}'; done | sort -n | tail -1)
    copied=$(python3 -c "import glob,json;print(sum(json.load(open(f))['objects']['copied'] for f in glob.glob('$work/s3/shard-dst-$n/backups/*/shards/*.json')))")
    cpu=$(cat "$work"/shard-"$n"-*.log | awk -F': ' '/User time|System time/ {s += $2} END {printf "%.1f", s}')
    printf '   %-7s | %-9s | %-10s | %-22s | %s MiB (%s objects copied); our CPU, all shards: %ss\n' "$n" "${wall}s" "$(python3 -c "print(f'{$mib/$wall:.0f}')")" "$(printf '%.1f' "$slowest")s" "$rss" "$copied" "$cpu"
    rm -rf "$work/s3/shard-dst-$n"
  done
fi
