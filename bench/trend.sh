#!/usr/bin/env bash
# Benchmark of `runbook trend` (SPEC 9.3) over 10,000 stored runs (target < 50 ms).
# A real `run-job` makes the state folder and one stored report; python3's sqlite3 then copies
# that row 9,999 times in the store's own schema (new run ids, one day apart, a varying
# data.value), so the reports are the shape runbook writes. Timed, best and median of 9:
#   1. `trend JOB "Disk"` (data.value, the newest 30 points: the usual case);
#   2. `trend JOB "Disk" -n 10000` (every run);
#   3. `trend JOB "Queue" ` (a command item: no data.value, so all 10,000 reports are read and
#      skipped: the worst case);
#   4. `trend fleet Rows --target shard-07` (one target of an item over 10 databases, SPEC 9.5:
#      the newest 30 of that target's values) and 5. the same with `-n 10000`; 6. `trend fleet
#      Rows` (the item's own value, the largest of its targets') beside them. Job `fleet` runs
#      once for real with its 10 targets on a closed port (no PostgreSQL needed: each target
#      fails to connect, which gives its `targets[]` entry the shape runbook writes); the copies
#      get a varying data.value per target and the largest as the item's.
# Usage: bench/trend.sh [RUNS] (default 10000). BIN=target/release/runbook by default, else
# target/debug/runbook (say which in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10000}
BIN=${BIN:-target/release/runbook}
[ -x "$BIN" ] || BIN=target/debug/runbook
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/runbook-bench-trend.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CLOSED_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SHARDS=""
for i in $(seq -w 1 10); do
  SHARDS+="[targets.shard-$i]
url = \"postgres://runbook@127.0.0.1:$CLOSED_PORT/shard_$i\"
sslmode = \"disable\"
"
done
cat > "$WORK/jobs.toml" <<TOML
[runbook]
timezone = "Europe/Berlin"
state_dir = "$WORK/state"
$SHARDS
[jobs.fleet]
schedule = "0 10 * * *"
[[jobs.fleet.items]]
name = "Rows"
kind = "sql"
target = "shard-*"
query = "SELECT count(*) FROM t"
[jobs.daily]
schedule = "0 10 * * *"
[[jobs.daily.items]]
name = "Queue"
kind = "command"
argv = ["true"]
[[jobs.daily.items]]
name = "Disk"
kind = "system"
paths = ["/"]
disk_warn = "100%"
disk_fail = "100%"
memory_warn = "100%"
memory_fail = "100%"
load_warn_per_core = 1000.0
TOML
export RUNBOOK_STATE_DIR="$WORK/state"
"$BIN" --config "$WORK/jobs.toml" run-job daily --no-notify >/dev/null
# Exit 1: every target fails to connect; the report (and its targets[]) is stored all the same.
"$BIN" --config "$WORK/jobs.toml" run-job fleet --no-notify >/dev/null || true
python3 - "$WORK/state/state.db" "$RUNS" <<'PY'
import json, sqlite3, sys, datetime
db, runs = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
cols = [r[1] for r in c.execute("PRAGMA table_info(runs)")]
t0 = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
for job in ("daily", "fleet"):
    row = dict(zip(cols, c.execute("SELECT * FROM runs WHERE job = ?", (job,)).fetchone()))
    report = json.loads(row["report"])
    rows = []
    for i in range(1, runs):
        t = t0 + datetime.timedelta(days=i)
        rid = f"bench-{job}-{i:06d}"
        report["run_id"] = rid
        report["started_at"] = t.isoformat()
        for it in report["items"]:
            if it["name"] == "Disk":
                it["data"]["value"] = 50 + (i % 40) / 2
            if it["name"] == "Rows":
                for k, tr in enumerate(it["targets"]):
                    tr["data"] = {"value": 1000 * k + (i % 40)}
                it["data"]["value"] = max(tr["data"]["value"] for tr in it["targets"])
        r = dict(row, run_id=rid, started_at=t.strftime("%Y-%m-%dT%H:%M:%S.000Z"), report=json.dumps(report))
        rows.append(tuple(r[k] for k in cols))
    c.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
    c.commit()
    print(f"job {job}: {c.execute('SELECT count(*) FROM runs WHERE job = ?', (job,)).fetchone()[0]} stored runs, "
          f"{c.execute('SELECT avg(length(report)) FROM runs WHERE job = ?', (job,)).fetchone()[0]:.0f} bytes of report each",
          file=sys.stderr)
PY
time9() { # best and median wall time of 9 runs of "$@", in ms
  local ts=() s e
  for _ in 1 2 3 4 5 6 7 8 9; do
    s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N)
    ts+=($(( (e - s) / 1000 )))
  done
  printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END {printf "best %.1f ms, median %.1f ms\n", a[1]/1000, a[5]/1000}'
}
T=("$BIN" --config "$WORK/jobs.toml" trend daily)
"${T[@]}" Disk | tail -2
echo "binary: $BIN"
echo "trend daily Disk (30 points):          $(time9 "${T[@]}" Disk --format json)"
echo "trend daily Disk -n $RUNS (all):       $(time9 "${T[@]}" Disk -n "$RUNS" --format json)"
echo "trend daily Queue (no value, all read): $(time9 "${T[@]}" Queue --format json)"
F=("$BIN" --config "$WORK/jobs.toml" trend fleet Rows)
"${F[@]}" --target shard-07 | tail -2
echo "trend fleet Rows --target shard-07 (30 points):    $(time9 "${F[@]}" --target shard-07 --format json)"
echo "trend fleet Rows --target shard-07 -n $RUNS (all): $(time9 "${F[@]}" --target shard-07 -n "$RUNS" --format json)"
echo "trend fleet Rows (the item's value, 30 points):    $(time9 "${F[@]}" --format json)"
echo "runbook --version (start-up alone):     $(time9 "$BIN" --version)"
