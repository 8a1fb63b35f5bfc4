#!/usr/bin/env bash
# Benchmark of `kind = "restore_drill"`: the whole drill (CREATE DATABASE, pg_restore -j 2,
# DROP DATABASE, report) against a plain `pg_restore -j 2` of the same dump into an empty
# database (target ratio <= 1.1), and against what a person would type for the same drill
# (createdb + pg_restore -j 2 + dropdb). All use --no-owner --no-privileges. Best of 3 runs.
# Usage: bench/restore.sh [PGBENCH_SCALE]   (default 100: 10M rows, ~1.5 GB of tables).
# Needs the PostgreSQL server binaries and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-100}
BIN=$PWD/target/release/runbook
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
WORK=$(mktemp -d /var/tmp/runbook-bench-restore.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; AS=(runuser -u postgres --); fi
cleanup() { "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

"${AS[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PG=(-h 127.0.0.1 -p "$PORT" -U postgres)
"$PGBIN/createdb" "${PG[@]}" trading
"$PGBIN/pgbench" "${PG[@]}" -i -q -s "$SCALE" trading 2>/dev/null
mkdir -p "$WORK/backups"
"$PGBIN/pg_dump" "${PG[@]}" -Fc -f "$WORK/backups/trading.dump" trading
touch -d '-2 hours' "$WORK/backups/trading.dump"
ls -lh "$WORK/backups/trading.dump" | awk '{print "dump: " $5}'

cat > "$WORK/jobs.toml" <<TOML
[runbook]
state_dir = "$WORK/state"
[targets.bench]
url = "postgres://postgres@127.0.0.1:$PORT/postgres"
sslmode = "disable"
[jobs.dr]
timeout = "1h"
[[jobs.dr.items]]
name = "drill"
kind = "restore_drill"
target = "bench"
dir = "$WORK/backups"
parallel = 2
checks = [{ name = "branches", query = "SELECT count(*) FROM pgbench_branches", min = 1 }]
TOML

plain() {
  "$PGBIN/dropdb" "${PG[@]}" --if-exists plain_restore 2>/dev/null
  "$PGBIN/createdb" "${PG[@]}" plain_restore
  local s e; s=$(date +%s.%N)
  "$PGBIN/pg_restore" "${PG[@]}" --no-owner --no-privileges -j 2 -d plain_restore "$WORK/backups/trading.dump"
  e=$(date +%s.%N); echo "$e - $s" | bc -l
}
by_hand() {
  local s e; s=$(date +%s.%N)
  "$PGBIN/createdb" "${PG[@]}" hand_restore
  "$PGBIN/pg_restore" "${PG[@]}" --no-owner --no-privileges -j 2 -d hand_restore "$WORK/backups/trading.dump"
  "$PGBIN/dropdb" "${PG[@]}" --force hand_restore
  e=$(date +%s.%N); echo "$e - $s" | bc -l
}
drill() {
  local s e; s=$(date +%s.%N)
  "$BIN" --config "$WORK/jobs.toml" run-job dr --no-notify --format json > "$WORK/drill.json"
  e=$(date +%s.%N); echo "$e - $s" | bc -l
}
cat "$WORK/backups/trading.dump" > /dev/null
T_REF=999999; T_OURS=999999; T_HAND=999999
for _ in 1 2 3; do
  # The drill goes first in each round, so no side profits from the others' leftover I/O.
  t=$(drill); if (( $(echo "$t < $T_OURS" | bc -l) )); then T_OURS=$t; fi
  t=$(plain); if (( $(echo "$t < $T_REF" | bc -l) )); then T_REF=$t; fi
  "$PGBIN/dropdb" "${PG[@]}" --if-exists plain_restore
  t=$(by_hand); if (( $(echo "$t < $T_HAND" | bc -l) )); then T_HAND=$t; fi
done
"$PGBIN/dropdb" "${PG[@]}" --if-exists plain_restore
if [ -n "${DEBUG_DRILL:-}" ]; then
  /usr/bin/time -v "$BIN" --config "$WORK/jobs.toml" run-job dr --no-notify --format json 2>&1 >/dev/null | grep -E "Elapsed|User time|System time|Maximum resident"
  grep rto_ms "$WORK/drill.json"
fi
grep -E '"(status|summary)"' "$WORK/drill.json" | head -3
printf 'pg_restore -j 2: %.3fs   runbook restore drill (create + restore + check + drop): %.3fs   ratio: %s (target <= 1.1)\n' \
  "$T_REF" "$T_OURS" "$(echo "scale=3; $T_OURS / $T_REF" | bc -l)"
printf 'createdb + pg_restore -j 2 + dropdb: %.3fs   ratio of the drill to it: %s\n' "$T_HAND" "$(echo "scale=3; $T_OURS / $T_HAND" | bc -l)"
