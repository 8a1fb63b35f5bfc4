#!/usr/bin/env bash
# What `escalate` costs an idle daemon (issue 19 part 4). Not a test: prints numbers.
#
#   bench/escalation.sh                 # 20 jobs with escalate steps, a failing run each, 60 s idle
#   IDLE_SECS=30 JOBS=5 bench/escalation.sh
#
# Half of the jobs' failures are acknowledged, the other half wait for a deadline hours ahead,
# so the daemon has escalation work pending and must sleep until it. Targets: idle CPU < 0.1 s
# per minute, RSS < 20 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_SECS=${IDLE_SECS:-60}
JOBS=${JOBS:-20}
BIN=${BIN:-target/release/runbook}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
TICK=$(getconf CLK_TCK)

{
  printf '[runbook]\nstate_dir = "%s/state"\n\n[server]\nlisten = "127.0.0.1:0"\n\n' "$WORK"
  printf '[notify.pager]\ntype = "file"\ndir = "%s/paged"\n\n' "$WORK"
  for i in $(seq 1 "$JOBS"); do
    printf '[jobs.j%s]\nschedule = "0 10 * * *"\nnotify = []\n' "$i"
    printf 'escalate = [{ after = "6h", notify = ["pager"] }, { after = "12h", notify = ["pager"] }]\n'
    printf '[[jobs.j%s.items]]\nname = "broken"\nkind = "command"\nargv = ["false"]\n' "$i"
    printf '[[jobs.j%s.items]]\nname = "sign-off"\nkind = "manual"\n\n' "$i"
  done
} > "$WORK/jobs.toml"
for i in $(seq 1 "$JOBS"); do
  "$BIN" --config "$WORK/jobs.toml" run-job "j$i" --no-notify >/dev/null 2>&1 || true
  if [ $((i % 2)) -eq 0 ]; then
    "$BIN" --config "$WORK/jobs.toml" ack last --job "j$i" --item broken --by bench >/dev/null
  fi
done
RUNBOOK_LOG=info "$BIN" --config "$WORK/jobs.toml" daemon 2>"$WORK/daemon.log" &
PID=$!
sleep 3
kill -0 "$PID" || { cat "$WORK/daemon.log"; exit 1; }
grep -o 'escalation: watching.*' "$WORK/daemon.log" || true
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
c0=$(cpu); sleep "$IDLE_SECS"; c1=$(cpu)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
kill -TERM "$PID"; wait "$PID" || true; PID=
cpu_per_min=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v s="$IDLE_SECS" 'BEGIN {printf "%.3f", (b - a) / t * 60 / s}')
echo "idle with $JOBS escalating jobs: RSS $((rss_kb / 1024)) MB (peak $((hwm_kb / 1024)) MB), CPU ${cpu_per_min} s per minute over ${IDLE_SECS} s (targets: < 20 MB, < 0.1 s)"
