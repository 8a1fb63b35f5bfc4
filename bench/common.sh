# Shared by bench/vacuum.sh and bench/reindex.sh: a throwaway cluster loaded with
# bench/fixture.sql, fresh copies of it, timing and the median ratio. Source it; it needs
# ROWS and sets PSQL, PORT, WORK, RUNBOOK; the cluster is stopped and removed on exit.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNBOOK=${RUNBOOK:-$ROOT/target/release/runbook}
PAIRS=${PAIRS:-5}
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
[ -x "$RUNBOOK" ] || { echo "build first: cargo build --release" >&2; exit 2; }

WORK=$(mktemp -d /tmp/runbook-bench-XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# LOG_STATEMENTS=1: the server logs every statement with its duration and the log is kept as
# /tmp/runbook-bench-server.log (to see where the time goes).
LOG_STATEMENTS=${LOG_STATEMENTS:-0}
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
  [ "$LOG_STATEMENTS" = 1 ] && cp "$WORK/server.log" /tmp/runbook-bench-server.log
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
autovacuum = off            # nothing but the tool under test touches the tables
shared_buffers = '256MB'
max_wal_size = '4GB'
logging_collector = off
CONF
[ "$LOG_STATEMENTS" = 1 ] && cat >> "$WORK/data/postgresql.conf" <<CONF
log_min_duration_statement = 0
log_line_prefix = '%m [%p] %a '
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 120 start >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
CONN=(-h 127.0.0.1 -p "$PORT" -U postgres)

echo "loading bench/fixture.sql with rows=$ROWS ..." >&2
"${PSQL[@]}" -d postgres -c "CREATE DATABASE fixture"
"${PSQL[@]}" -d fixture -v rows="$ROWS" -f "$HERE/fixture.sql" >/dev/null

# copy TEMPLATE NAME: a fresh copy of database TEMPLATE called NAME.
copy() {
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $2" -c "CREATE DATABASE $2 TEMPLATE $1 STRATEGY FILE_COPY" -c "CHECKPOINT"
}

# cold_cache: restarts the server and drops the OS page cache (root only), so that the next run
# reads the tables from disk, as on a database larger than RAM.
cold_cache() {
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
  sync
  echo 3 2>/dev/null > /proc/sys/vm/drop_caches || { echo "cannot drop the page cache (/proc/sys/vm/drop_caches)" >&2; exit 1; }
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 120 start >/dev/null
}

# timed CMD...: runs CMD, prints its wall time in seconds.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$WORK/last.out" 2>&1 || { echo "FAILED: $*" >&2; cat "$WORK/last.out" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

# jobs_toml DB ITEM_TOML: writes $WORK/jobs.toml with one job `bench` holding ITEM_TOML.
jobs_toml() {
  cat > "$WORK/jobs.toml" <<TOML
[runbook]
state_dir = "$WORK/state"
[targets.bench]
url = "postgres://postgres@127.0.0.1:$PORT/$1"
sslmode = "disable"
[jobs.bench]
timeout = "2h"
[[jobs.bench.items]]
name = "under test"
$2
TOML
}

runbook_job() { "$RUNBOOK" --config "$WORK/jobs.toml" run-job bench --no-notify --format json; }

# median_ratio "ours..." "theirs...": median of ours[i]/theirs[i].
median_ratio() {
  python3 - "$1" "$2" <<'PY'
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
ratios = [o / t for o, t in zip(ours, theirs)]
print(f"runbook {statistics.median(ours):.2f}s  reference {statistics.median(theirs):.2f}s  median ratio {statistics.median(ratios):.3f}  (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
PY
}
