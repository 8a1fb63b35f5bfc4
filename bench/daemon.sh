#!/usr/bin/env bash
# Footprint and punctuality of `runbook daemon` (issue 7). Not a test: prints numbers.
#
#   bench/daemon.sh            # idle 60 s with the shipped jobs.toml, then 100 slots of */2 s
#   IDLE_SECS=30 SLOTS=20 bench/daemon.sh   # quicker
#
# Targets: idle RSS < 20 MB, idle CPU < 0.1 s per minute, lateness p99 < 1 s
# (lateness = started_at - scheduled_for, read from the stored reports).
# There is no reference tool to compare with: the targets are absolute.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_SECS=${IDLE_SECS:-60}
SLOTS=${SLOTS:-100}
BIN=${BIN:-target/release/runbook}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
TICK=$(getconf CLK_TCK)

# --- 1. idle: the shipped jobs.toml (+ the metrics server), dummy secrets -------------------
mkdir -p "$WORK/creds" "$WORK/state"
echo dummy-smtp-password > "$WORK/creds/smtp"
cp jobs.toml "$WORK/jobs.toml"
printf '\n[server]\nlisten = "127.0.0.1:0"\n' >> "$WORK/jobs.toml"
sed -i "s|^dir = \"/var/lib/runbook/sent\"|dir = \"$WORK/sent\"|" "$WORK/jobs.toml"
export TRADING_DB_PASSWORD=dummy SLACK_WEBHOOK_URL=https://hooks.slack.invalid/x
export CREDENTIALS_DIRECTORY="$WORK/creds" STATE_DIRECTORY="$WORK/state" RUNBOOK_LOG=warn
"$BIN" --config "$WORK/jobs.toml" daemon 2>"$WORK/idle.log" &
PID=$!
sleep 3
kill -0 "$PID" || { cat "$WORK/idle.log"; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
c0=$(cpu); sleep "$IDLE_SECS"; c1=$(cpu)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
kill -TERM "$PID"; wait "$PID" || true; PID=
cpu_per_min=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v s="$IDLE_SECS" 'BEGIN {printf "%.3f", (b - a) / t * 60 / s}')
echo "idle: RSS $((rss_kb / 1024)) MB (peak $((hwm_kb / 1024)) MB), CPU ${cpu_per_min} s per minute over ${IDLE_SECS} s (targets: < 20 MB, < 0.1 s)"

# --- 2. lateness over $SLOTS slots of a 2-second schedule -----------------------------------
cat > "$WORK/tick.toml" <<TOML
[runbook]
state_dir = "$WORK/tick-state"
[jobs.tick]
schedule = "*/2 * * * * *"
[[jobs.tick.items]]
name = "check"
kind = "manual"
TOML
"$BIN" --config "$WORK/tick.toml" daemon 2>"$WORK/tick.log" &
PID=$!
sleep $((SLOTS * 2 + 3))
kill -TERM "$PID"; wait "$PID" || true; PID=
"$BIN" --config "$WORK/tick.toml" history tick -n $((SLOTS + 10)) --format json > "$WORK/history.json"
python3 - "$WORK/history.json" "$SLOTS" <<'PY'
import json, sys
from datetime import datetime
runs = [r for r in json.load(open(sys.argv[1])) if r["trigger"] == "schedule"][: int(sys.argv[2])]
late = sorted((datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")) - datetime.fromisoformat(r["scheduled_for"])).total_seconds() * 1000 for r in runs)
pct = lambda p: late[min(len(late) - 1, int(round(p / 100 * (len(late) - 1))))]
print(f"lateness over {len(late)} slots: p50 {pct(50):.1f} ms, p99 {pct(99):.1f} ms, max {late[-1]:.1f} ms (target p99 < 1000 ms)")
PY
