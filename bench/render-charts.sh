#!/usr/bin/env bash
# The HTML report's charts (SPEC 9.3, issue 19 part 5):
#   1. the cost: a 15-item report rendered with and without 30-point charts, in-process
#      (examples/render_charts.rs, release build; target: charts add < 5 ms);
#   2. a screenshot in headless Chromium of a daily report whose items have 24 earlier runs,
#      saved as docs/report-charts-screenshot.png (and .html), to look at.
# The runs are real `run-job` runs of a small job; python3's sqlite3 then copies the first
# run's row 23 times in the store's own schema (a day apart, varying values), so the stored
# reports are the shape runbook writes, and a last real run is charted against them.
#
#   bench/render-charts.sh [ROUNDS] [OUT.png]   (default 2000 renders,
#                                                docs/report-charts-screenshot.png)
#   ONLY=timing|screenshot bench/render-charts.sh   one of the two
# Needs: cargo, python3, chromium (Debian: apt-get install chromium).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-2000}
out=${2:-$root/docs/report-charts-screenshot.png}
# shellcheck source=bench/chromium.sh
. "$root/bench/chromium.sh"
need_chromium render-charts

if [ "${ONLY:-}" != screenshot ]; then
  cargo run --quiet --release --manifest-path "$root/Cargo.toml" --example render_charts -- "$rounds"
fi
[ "${ONLY:-}" != timing ] || exit 0

cargo build --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/debug/runbook
work=$(mktemp -d "${TMPDIR:-/tmp}/runbook-bench-charts.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/jobs.toml" <<TOML
[runbook]
timezone = "Asia/Kolkata"
state_dir = "state"
hostname = "ops-1"

[jobs.daily]
description = "Morning checklist (10:00 IST)"

[[jobs.daily.items]]
name = "Replication lag (s)"
kind = "command"
argv = ["sh", "-c", "echo 'standby-1: replay lag 412s (limit 300s)'; exit 1"]
read_only = true

[[jobs.daily.items]]
name = "System resources (CPU, memory, disk)"
kind = "system"
paths = ["/"]
disk_warn = "100%"
disk_fail = "100%"
memory_warn = "100%"
memory_fail = "100%"
load_warn_per_core = 1000.0

[[jobs.daily.items]]
name = "Database connections in use"
kind = "command"
argv = ["true"]
read_only = true

[[jobs.daily.items]]
name = "Database size (GB)"
kind = "command"
argv = ["true"]
read_only = true

[[jobs.daily.items]]
name = "Backup completed"
kind = "command"
argv = ["sh", "-c", "echo 'full-20261205.dump 2.1G 3h old'"]
read_only = true

[[jobs.daily.items]]
name = "Review Grafana dashboards for overnight activity"
kind = "manual"
TOML
cd "$work"
"$bin" --config jobs.toml run-job daily --no-notify >/dev/null 2>&1 || true
python3 - state/state.db <<'PY'
import json, sqlite3, sys, datetime, math
c = sqlite3.connect(sys.argv[1])
cols = [r[1] for r in c.execute("PRAGMA table_info(runs)")]
row = dict(zip(cols, c.execute("SELECT * FROM runs").fetchone()))
report = json.loads(row["report"])
first = datetime.datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
disk = next(it["data"]["value"] for it in report["items"] if it["kind"] == "system")
def values(i):  # day i of 24: lag climbing lately, disk filling, connections wobbling
    return {"Replication lag (s)": 40 + (i - 16) ** 2 * 5 if i > 16 else 40 + i % 3 * 4,
            "System resources (CPU, memory, disk)": disk - (24 - i) * 0.35 + (i % 4) * 0.2,
            "Database connections in use": 35 + 8 * math.sin(i / 2.5),
            "Database size (GB)": 212.4 + i * 1.7}
rows = []
for i in range(1, 24):
    t = first - datetime.timedelta(days=24 - i)
    rid = f"bench-{i:04d}"
    report["run_id"] = rid
    report["started_at"] = report["finished_at"] = t.isoformat()
    for it in report["items"]:
        v = values(i).get(it["name"])
        if v is not None:
            it["data"]["value"] = round(v, 1)
    r = dict(row, run_id=rid, started_at=t.strftime("%Y-%m-%dT%H:%M:%S.000Z"), report=json.dumps(report))
    rows.append(tuple(r[k] for k in cols))
c.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
c.commit()
PY
# The last run measures what the command items stand in for through data.value: set by a real
# run is not possible for them, so the newest stored report is given its values the same way.
"$bin" --config jobs.toml run-job daily --no-notify >/dev/null 2>&1 || true
python3 - state/state.db <<'PY'
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rid, rep = c.execute("SELECT run_id, report FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
rep = json.loads(rep)
for it in rep["items"]:
    v = {"Replication lag (s)": 412, "Database connections in use": 41.2,
         "Database size (GB)": 253.9}.get(it["name"])
    if v is not None:
        it["data"]["value"] = v
c.execute("UPDATE runs SET report = ? WHERE run_id = ?", (json.dumps(rep), rid))
c.commit()
PY
"$bin" --config jobs.toml report last --format html > report.html
screenshot "file://$work/report.html" "$out" 820,1000
cp report.html "${out%.png}.html"
echo "render-charts: wrote $out (and ${out%.png}.html)"
