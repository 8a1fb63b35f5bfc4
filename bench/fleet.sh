#!/usr/bin/env bash
# Many databases per item (SPEC 9.5, docs/database.md "Many databases").
#   PAIRS=3 N=50 bench/fleet.sh           (build first: cargo build --release)
# Two throwaway clusters: A with N databases (default 50), B with 10; each database holds a
# small table (10k rows). Cases (runbook's wall time against the baseline's, alternating which
# goes first, PAIRS pairs; median ratio):
# - checks: the shipped daily database checks (jobs.toml: the four `sql` items, `slow_queries`
#   with max_running = 5m) plus `wal_archive` (required = false) and `replication`, each an item
#   with target = "a-*" over A's N databases, max_parallel_targets = 4; against a shell loop
#   running the same queries with `psql` once per database (one psql process per database,
#   all the queries in it). runbook's checks share one connection per database (docs/database.md).
# - floor: the same queries over one connection per database, 4 at once, with pgbench -C: the
#   server's cost of the work alone, without any process per database.
# - vacuum: a `vacuum` item (parallel = 1) over A's N databases, max_parallel_targets = 2
#   (two connections, as vacuumdb -j 2), against `vacuumdb --all --analyze -j 2` (which also
#   does `postgres` and `template1`: two more databases than ours).
# Then, once each: the checks over both clusters (N + 10 targets) with the peak RSS of runbook
# (/usr/bin/time -v) and the peak number of runbook's connections to each cluster, sampled from
# pg_stat_activity (application_name = 'runbook') every few milliseconds during the run.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNBOOK=${RUNBOOK:-$ROOT/target/release/runbook}
PAIRS=${PAIRS:-3}
N=${N:-50}
PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
[ -x "$RUNBOOK" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/runbook-fleet-XXXXXX")
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT_A=$(free_port)
PORT_B=$(free_port)
cleanup() {
  for c in a b; do as_pg "$PGBIN/pg_ctl" -D "$WORK/$c" -m immediate -w stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

start_cluster() { # DIR PORT
  as_pg "$PGBIN/initdb" -D "$WORK/$1" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
  cat >> "$WORK/$1/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$WORK'
autovacuum = off
max_connections = 200
logging_collector = off
CONF
  as_pg "$PGBIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w -t 120 start >/dev/null
}
psql_at() { local port=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"; }

# fill PORT PREFIX COUNT: databases PREFIX_01.. from a template holding a 10k-row table.
fill() {
  psql_at "$1" -d postgres -c "CREATE DATABASE tmpl" >/dev/null
  psql_at "$1" -d tmpl -c "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g" >/dev/null
  for i in $(seq -w 1 "$3"); do
    psql_at "$1" -d postgres -c "CREATE DATABASE ${2}_$i TEMPLATE tmpl" >/dev/null
  done
}
echo "starting two clusters, $N + 10 databases ..." >&2
start_cluster a "$PORT_A"
start_cluster b "$PORT_B"
fill "$PORT_A" a "$N"
fill "$PORT_B" b 10

# The shipped checks' queries (jobs.toml, job daily) and what wal_archive/replication read.
Q_CONNECTIONS="SELECT round(100.0 * count(*) FILTER (WHERE backend_type = 'client backend') / current_setting('max_connections')::int, 1)::float8 FROM pg_stat_activity"
Q_SIZE="SELECT round(pg_database_size(current_database()) / 1e9, 3)::float8"
Q_XID="SELECT max(age(datfrozenxid))::float8 FROM pg_database"
Q_MXID="SELECT max(mxid_age(datminmxid))::float8 FROM pg_database"

targets() { # PREFIX PORT COUNT
  for i in $(seq -w 1 "$3"); do
    printf '[targets.%s-%s]\nurl = "postgres://postgres@127.0.0.1:%s/%s_%s"\nsslmode = "disable"\n\n' "$1" "$i" "$2" "$1" "$i"
  done
}

# config FILE PARALLEL_TARGETS GLOB ITEMS
config() {
  {
    printf '[runbook]\nstate_dir = "%s/state"\nmax_parallel_targets = %s\nmax_parallel_items = 4\n\n' "$WORK" "$2"
    targets a "$PORT_A" "$N"
    targets b "$PORT_B" 10
    printf '[jobs.bench]\ntimeout = "1h"\n\n'
    echo "${4//@GLOB@/$3}"
  } > "$1"
}
CHECKS='[[jobs.bench.items]]
name = "Long-running queries (over 5 minutes)"
kind = "slow_queries"
target = "@GLOB@"
top = 0
max_running = "5m"

[[jobs.bench.items]]
name = "Database connections in use"
kind = "sql"
target = "@GLOB@"
query = "'"$Q_CONNECTIONS"'"
warn_max = 70
max = 90

[[jobs.bench.items]]
name = "Database size (GB)"
kind = "sql"
target = "@GLOB@"
query = "'"$Q_SIZE"'"

[[jobs.bench.items]]
name = "Transaction ID wraparound age"
kind = "sql"
target = "@GLOB@"
query = "'"$Q_XID"'"
warn_max = 500000000
max = 1500000000

[[jobs.bench.items]]
name = "Multixact ID wraparound age"
kind = "sql"
target = "@GLOB@"
query = "'"$Q_MXID"'"
warn_max = 500000000
max = 1500000000

[[jobs.bench.items]]
name = "WAL archiving"
kind = "wal_archive"
target = "@GLOB@"
required = false

[[jobs.bench.items]]
name = "Replication"
kind = "replication"
target = "@GLOB@"
'
VACUUM='[[jobs.bench.items]]
name = "Vacuum"
kind = "vacuum"
target = "@GLOB@"
parallel = 1
'
config "$WORK/checks.toml" 4 'a-*' "$CHECKS"
config "$WORK/checks-all.toml" 4 '*' "$CHECKS"
config "$WORK/vacuum.toml" 2 'a-*' "$VACUUM"

# The baseline: one psql per database with the same queries (slow_queries, wal_archive and
# replication as the SQL they run).
cat > "$WORK/checks.sql" <<SQL
SELECT pid, now() - query_start, left(query, 200) FROM pg_stat_activity WHERE state <> 'idle' AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND now() - query_start > interval '5 minutes';
$Q_CONNECTIONS;
$Q_SIZE;
$Q_XID;
$Q_MXID;
SELECT current_setting('archive_mode'), archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver;
SELECT pg_is_in_recovery();
SELECT application_name, state, sync_state, write_lag, flush_lag, replay_lag FROM pg_stat_replication;
SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots;
SQL
psql_loop() {
  for i in $(seq -w 1 "$N"); do
    psql -X -q -At -h 127.0.0.1 -p "$PORT_A" -U postgres -d "a_$i" -f "$WORK/checks.sql" >/dev/null || return 1
  done
}
ours() { "$RUNBOOK" --config "$1" run-job bench --no-notify --format json >"$WORK/last.json"; }
check_ok() { # the run's items each counted N targets, none failed
  python3 - "$WORK/last.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2])
for i in r["items"]:
    assert len(i["targets"]) == n, (i["name"], len(i["targets"]))
    assert i["status"] != "fail", (i["name"], i["summary"], i["details"][:3])
PY
}

timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$WORK/last.err" || { echo "FAILED: $*" >&2; cat "$WORK/last.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
median_ratio() {
  python3 - "$1" "$2" <<'PY'
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
ratios = [o / t for o, t in zip(ours, theirs)]
print(f"runbook {statistics.median(ours):.2f}s  reference {statistics.median(theirs):.2f}s  median ratio {statistics.median(ratios):.3f}  (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
PY
}

pairs() { # NAME OURS_CONFIG BASELINE...
  local name=$1 cfg=$2; shift 2
  local o="" t=""
  for i in $(seq 1 "$PAIRS"); do
    for who in $( [ $((i % 2)) = 1 ] && echo "ours theirs" || echo "theirs ours"); do
      if [ "$who" = ours ]; then o="$o $(timed ours "$cfg")"; check_ok "$N"; else t="$t $(timed "$@")"; fi
    done
  done
  echo "fleet/$name ($N databases): $(median_ratio "$o" "$t")"
}

ours "$WORK/checks.toml" && check_ok "$N"   # warm-up (and a check that every target passes)
pairs checks "$WORK/checks.toml" psql_loop
# The floor of runbook's way (one connection per database, the checks' queries on it, 4
# databases at once): the same queries over as many connections (ceil(N/4) per client, 4
# clients), with pgbench -C (a new connection per script run), no process started per database.
PER_CLIENT=$(( (N + 3) / 4 ))
floor_conn() { "$PGBIN/pgbench" -n -C -c 4 -j 2 -t "$PER_CLIENT" -f "$WORK/checks.sql" -h 127.0.0.1 -p "$PORT_A" -U postgres a_01 >/dev/null; }
f="" l=""
for i in $(seq 1 "$PAIRS"); do f="$f $(timed floor_conn)"; l="$l $(timed psql_loop)"; done
echo "fleet/floor: $((PER_CLIENT * 4)) connections running the checks' queries, 4 at once (pgbench -C) against the psql loop: $(median_ratio "$f" "$l")"
pairs vacuum "$WORK/vacuum.toml" "$PGBIN/vacuumdb" -h 127.0.0.1 -p "$PORT_A" -U postgres --all --analyze -j 2 -q

# Peak connections per cluster, sampled while the checks run over both clusters.
sample() { # PORT OUT
  local max=0 n
  while [ ! -e "$WORK/stop" ]; do
    n=$(psql -X -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runbook'")
    [ "$n" -gt "$max" ] && max=$n
    echo "$max" > "$2"
  done
}
rm -f "$WORK/stop"
sample "$PORT_A" "$WORK/peak-a" & SA=$!
sample "$PORT_B" "$WORK/peak-b" & SB=$!
/usr/bin/time -v "$RUNBOOK" --config "$WORK/checks-all.toml" run-job bench --no-notify --format json >"$WORK/last.json" 2>"$WORK/time.txt"
touch "$WORK/stop"; wait "$SA" "$SB"
check_ok $((N + 10))
rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time.txt")
echo "fleet/checks over both clusters ($N + 10 databases, 7 items): wall $wall, peak RSS $((rss / 1024)) MB, peak runbook connections: cluster A $(cat "$WORK/peak-a"), cluster B $(cat "$WORK/peak-b") (limit max_parallel_targets = 4)"
# The same run on an empty state folder (no stored history to read).
sed "s#$WORK/state#$WORK/state-fresh#" "$WORK/checks-all.toml" > "$WORK/checks-fresh.toml"
/usr/bin/time -v "$RUNBOOK" --config "$WORK/checks-fresh.toml" run-job bench --no-notify --format json >"$WORK/last.json" 2>"$WORK/time-fresh.txt"
check_ok $((N + 10))
rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time-fresh.txt")
echo "fleet/checks over both clusters, empty state folder: peak RSS $((rss / 1024)) MB"
