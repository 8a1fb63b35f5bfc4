#!/usr/bin/env bash
# Benchmark of `restore_drill` with `mode = "pitr"`: the drill's RTO (from its start to a
# promoted, queryable server: extract the base backup, start a scratch server, replay the WAL
# archive) against the same done by hand on the same data in the same run: `tar -x` the base
# backup as the postgres user, start `postgres` with the same restore_command and settings,
# poll `pg_is_in_recovery()` every 0.1 s until false. Target ratio <= 1.1. Rounds alternate
# (drill first); the medians are compared.
# Usage: bench/pitr.sh [WAL_MB]   (default 1024: ~1 GB of WAL written after the base backup)
# Env: PAIRS (3), RUNBOOK (target/release/runbook). Needs the PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
WAL_MB=${1:-1024}
PAIRS=${PAIRS:-3}
BIN=${RUNBOOK:-$PWD/target/release/runbook}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/runbook-bench-pitr.XXXXXX")
chmod 711 "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
mkdir -p "$WORK/primary" "$WORK/archive" "$WORK/backups" "$WORK/hand"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/primary" "$WORK/archive" "$WORK/backups" "$WORK/hand"
HAND_PID=
cleanup() {
  [ -f "$WORK/hand/data/postmaster.pid" ] && kill -QUIT "$(head -1 "$WORK/hand/data/postmaster.pid")" 2>/dev/null || true
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The primary: archiving into $WORK/archive.
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/primary/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
cat >> "$WORK/primary/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK/primary'
archive_mode = on
archive_command = 'test ! -f $WORK/archive/%f && cp %p $WORK/archive/%f'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
synchronous_commit = off
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary/data" -l "$WORK/primary/server.log" -w start >/dev/null
PSQL=("$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE trading"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -q -s 10 trading 2>/dev/null
"${AS[@]}" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/backups/base" -Ft -X stream -c fast
ls -l "$WORK/backups/base" | awk 'NR > 1 {printf "base backup: %s %s\n", $9, $5}'

# ~WAL_MB of WAL after the base backup: batches of inserts and updates, each its own commit.
START=$("${PSQL[@]}" -d trading -c "SELECT pg_current_wal_lsn()")
"${PSQL[@]}" -d trading -c "CREATE TABLE fills (id bigint, account int, note text)"
while :; do
  "${PSQL[@]}" -d trading -c "INSERT INTO fills SELECT g, g % 1000, md5(g::text) || repeat('x', 200) FROM generate_series(1, 200000) g" \
    -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 20 = (extract(epoch FROM now())::int % 20)"
  DONE=$("${PSQL[@]}" -d trading -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$START') / 1048576 >= $WAL_MB")
  [ "$DONE" = t ] && break
done
"${PSQL[@]}" -d trading -c "SELECT count(*) FROM fills" > "$WORK/expected"
WAL=$("${PSQL[@]}" -d trading -c "SELECT pg_walfile_name(pg_switch_wal())")
until [ "$("${PSQL[@]}" -d postgres -c "SELECT last_archived_wal >= '$WAL' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done
"${PSQL[@]}" -d trading -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$START') / 1048576) || ' MB of WAL after the base backup'"
echo "archive: $(ls "$WORK/archive" | wc -l) files, $(du -sm "$WORK/archive" | cut -f1) MB"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary/data" -m fast -w stop >/dev/null

cat > "$WORK/jobs.toml" <<TOML
[runbook]
state_dir = "$WORK/state"
[targets.trading]
url = "postgres://postgres@127.0.0.1:$PORT/trading"
sslmode = "disable"
[jobs.dr]
timeout = "1h"
[[jobs.dr.items]]
name = "pitr"
kind = "restore_drill"
mode = "pitr"
target = "trading"
base_backup_dir = "$WORK/backups"
wal_archive_dir = "$WORK/archive"
checks = [{ name = "fills", query = "SELECT count(*) FROM fills", min = $(cat "$WORK/expected"), max = $(cat "$WORK/expected") }]
TOML

# The drill: its own RTO (data.rto_ms) and the wall time of the whole run-job.
drill() {
  local s e out
  s=$(date +%s.%N)
  out=$("$BIN" --config "$WORK/jobs.toml" run-job dr --format json --no-notify)
  e=$(date +%s.%N)
  python3 - "$out" "$s" "$e" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); it = r["items"][0]
assert it["status"] == "pass", it
print(f'{it["data"]["rto_ms"] / 1000:.2f} {float(sys.argv[3]) - float(sys.argv[2]):.2f} {it["data"]["rpo_seconds"]} {it["data"]["restore_files_ms"] / 1000:.2f}')
PY
}

# The same by hand: tar -x as postgres, the same settings, poll until promoted.
hand() {
  local d=$WORK/hand/data s e port
  rm -rf "$d"
  s=$(date +%s.%N)
  "${AS[@]}" mkdir -m 700 "$d"
  "${AS[@]}" tar -x -C "$d" -f "$WORK/backups/base/base.tar"
  "${AS[@]}" tar -x -C "$d/pg_wal" -f "$WORK/backups/base/pg_wal.tar"
  "${AS[@]}" touch "$d/recovery.signal"
  printf 'local all all trust\n' | "${AS[@]}" tee "$WORK/hand/pg_hba.conf" >/dev/null
  port=$(free_port)
  "${AS[@]}" "$PGBIN/postgres" -D "$d" -c port="$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$WORK/hand" -c hba_file="$WORK/hand/pg_hba.conf" \
    -c "restore_command=cp '$WORK/archive'/%f %p" -c recovery_target_timeline=latest \
    -c recovery_target_action=promote -c archive_mode=off -c hot_standby=on \
    -c logging_collector=off -c fsync=off -c synchronous_commit=off >"$WORK/hand/server.log" 2>&1 &
  HAND_PID=$!
  until [ "$("$PGBIN/psql" -X -At -h "$WORK/hand" -p "$port" -U postgres -d trading -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    sleep 0.1
  done
  e=$(date +%s.%N)
  [ "$("$PGBIN/psql" -X -At -h "$WORK/hand" -p "$port" -U postgres -d trading -c 'SELECT count(*) FROM fills')" = "$(cat "$WORK/expected")" ]
  # The postmaster itself (runuser, its parent, ignores SIGQUIT).
  kill -QUIT "$(head -1 "$d/postmaster.pid")"; wait "$HAND_PID" 2>/dev/null || true; HAND_PID=
  rm -rf "$d"
  python3 -c "print(f'{$e - $s:.2f}')"
}

DRILL=(); WALL=(); HAND=()
for i in $(seq "$PAIRS"); do
  sync; read -r rto wall rpo files < <(drill)
  sync; h=$(hand)
  echo "round $i: drill RTO ${rto}s (files ${files}s; whole run-job ${wall}s; RPO ${rpo}s), by hand ${h}s, ratio $(python3 -c "print(f'{$rto / $h:.2f}')")"
  DRILL+=("$rto"); WALL+=("$wall"); HAND+=("$h")
done
python3 - "${DRILL[*]}" "${WALL[*]}" "${HAND[*]}" <<'PY'
import statistics, sys
d, w, h = (statistics.median(map(float, a.split())) for a in sys.argv[1:4])
print(f"median: drill RTO {d:.2f}s, whole run-job {w:.2f}s, by hand {h:.2f}s")
pairs = [float(a) / float(b) for a, b in zip(sys.argv[1].split(), sys.argv[3].split())]
print(f"ratio of the medians, drill RTO / by hand: {d / h:.2f} (target <= 1.1); median of the per-round ratios: {statistics.median(pairs):.2f}; whole run-job / by hand: {w / h:.2f}")
PY
