#!/usr/bin/env bash
# Benchmark of `kind = "log_scan"` against `grep -c ERROR` on the same 1 GiB application log
# (1 % ERROR lines), page cache warm: a first run of the item (no remembered offset: the whole
# file) through `runbook run-job`, whole process, against grep counting the same lines.
# Pairs are interleaved (the order alternates), so a busy machine slows both sides alike; the
# script prints the medians, the median of the per-pair ratios runbook/grep, and the peak RSS
# of each side (/usr/bin/time).
#
#   bench/log_scan.sh            (PAIRS=7 by default; SIZE_MB=1024)
#
# Needs a release build (cargo build --release), python3 and /usr/bin/time. The log is
# generated once as $TMPDIR/runbook-bench-app-<SIZE_MB>m.log and kept for later runs (delete
# it when done); TMPDIR=/dev/shm keeps it off a small disk.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNBOOK=${RUNBOOK:-$ROOT/target/release/runbook}
PAIRS=${PAIRS:-7}
SIZE_MB=${SIZE_MB:-1024}
[ -x "$RUNBOOK" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

TMP=${TMPDIR:-/tmp}
LOG=$TMP/runbook-bench-app-${SIZE_MB}m.log
WORK=$(mktemp -d "$TMP/runbook-bench-logscan-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ ! -s "$LOG" ]; then
  echo "generating $LOG (${SIZE_MB} MiB, 1 % ERROR lines) ..." >&2
  # A 64 MiB block of Spring-Boot-style lines (seeded, so every run gets the same file), repeated.
  python3 - "$LOG.part" "$SIZE_MB" <<'PY'
import random, sys, uuid
out, size_mb = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
threads = ["http-nio-8080-exec-%d" % i for i in range(1, 21)] + ["kafka-consumer-%d" % i for i in range(1, 5)] + ["scheduling-1", "main"]
infos = [
    "c.e.t.OrderController - Order {n} accepted for user {u} in {ms} ms",
    "c.e.t.MarketDataService - Tick {sym} bid={p} ask={p} seq={n}",
    "c.e.t.PositionService - Position {n} updated: qty={q} avg={p}",
    "o.h.e.j.s.SqlExceptionHelper - batch of {q} rows flushed in {ms} ms",
    "c.e.t.RiskEngine - margin check for account {n} passed ({ms} ms)",
]
errors = [
    "c.e.t.OrderService - Order {n} rejected for user {u}: insufficient margin",
    "c.e.t.KafkaListener - Failed to deserialize event {u} at offset {n}",
    "c.e.t.BrokerClient - Broker timeout after {ms} ms (request 0x{h})",
    "c.e.t.PriceFeed - Stale price for {sym}: last tick {ms} ms ago",
    "o.a.k.c.NetworkClient - Connection to node {q} (broker-{q}.internal/10.0.{q}.{q}:9092) could not be established",
]
syms = ["RELIANCE", "TCS", "INFY", "HDFCBANK", "ICICIBANK", "SBIN", "ITC", "LT"]
def fill(t):
    return t.format(n=rnd.randint(10000, 999999), u=uuid.UUID(int=rnd.getrandbits(128)), ms=rnd.randint(1, 5000),
                    sym=rnd.choice(syms), p="%.2f" % rnd.uniform(100, 4000), q=rnd.randint(1, 500), h="%x" % rnd.getrandbits(32))
block, size, i = [], 0, 0
while size < 64 * 1024 * 1024:
    i += 1
    level = "ERROR" if rnd.random() < 0.01 else rnd.choice(["INFO ", "INFO ", "INFO ", "DEBUG", "WARN "])
    msg = fill(rnd.choice(errors if level == "ERROR" else infos))
    line = "2026-01-05 %02d:%02d:%02d.%03d %s [%s] %s\n" % (i // 3600000 % 24, i // 60000 % 60, i // 1000 % 60, i % 1000, level, rnd.choice(threads), msg)
    block.append(line)
    size += len(line)
data = "".join(block).encode()
with open(out, "wb") as f:
    for _ in range(max(1, size_mb // 64)):
        f.write(data)
PY
  mv "$LOG.part" "$LOG"
fi

cat > "$WORK/jobs.toml" <<TOML
[runbook]
state_dir = "$WORK/state"
[jobs.bench]
timeout = "1h"
[[jobs.bench.items]]
name = "under test"
kind = "log_scan"
files = ["$LOG"]
pattern = "ERROR"
warn_count = 0
TOML

# Warm the page cache, and check that both sides count the same lines.
cat "$LOG" > /dev/null
cat "$LOG" > /dev/null
want=$(grep -c ERROR "$LOG")
got=$("$RUNBOOK" --config "$WORK/jobs.toml" run-job bench --no-notify --format json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["data"]["matches"])')
rm -rf "$WORK/state"
[ "$want" = "$got" ] || { echo "runbook counted $got lines, grep $want" >&2; exit 1; }
echo "$LOG: $(du -m "$LOG" | cut -f1) MiB, $want ERROR lines of $(wc -l < "$LOG")" >&2

# measure NAME CMD...: runs CMD, appends its wall time (s) to $NAME.t and peak RSS (KiB) to $NAME.rss.
measure() {
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  # Not > /dev/null: GNU grep sees /dev/null as its output and stops at the first match.
  /usr/bin/time -f %M -o "$WORK/rss" "$@" > "$WORK/out"
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')" >> "$WORK/$name.t"
  cat "$WORK/rss" >> "$WORK/$name.rss"
}
ours() {
  rm -rf "$WORK/state"   # a first run each time: no remembered offset, the whole file
  measure runbook "$RUNBOOK" --config "$WORK/jobs.toml" run-job bench --no-notify --format json
}
theirs() { measure grep grep -c ERROR "$LOG"; }

for i in $(seq "$PAIRS"); do
  if [ $((i % 2)) = 1 ]; then ours; theirs; else theirs; ours; fi
done

python3 - "$WORK" <<'PY'
import statistics, sys
w = sys.argv[1]
ours = [float(x) for x in open(f"{w}/runbook.t")]
theirs = [float(x) for x in open(f"{w}/grep.t")]
rss = lambda n: max(int(x) for x in open(f"{w}/{n}.rss")) / 1024
ratios = [o / t for o, t in zip(ours, theirs)]
print(f"runbook log_scan {statistics.median(ours):.3f}s  grep -c {statistics.median(theirs):.3f}s  "
      f"median ratio {statistics.median(ratios):.3f}  (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")
print(f"peak RSS: runbook {rss('runbook'):.1f} MiB, grep {rss('grep'):.1f} MiB")
PY
