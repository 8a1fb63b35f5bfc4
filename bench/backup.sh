#!/usr/bin/env bash
# Benchmark of `kind = "backup"` against the reference tools, on the same data:
#   1. a 2 GB file with a .sha256 sidecar: the backup item vs `sha256sum -c` (target ratio <= 1.1)
#      and the item's peak memory (target < 64 MB);
#   2. a gzip'd plain dump: the backup item (gzip, all members, completion marker) vs `gzip -t`
#      (target ratio <= 0.5).
# Both sides read from the page cache (each file is read once before timing), best of 3 runs.
# Usage: bench/backup.sh [SIZE_MB]   (default 2048). Needs a release build: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-2048}
BIN=target/release/runbook
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
WORK=$(mktemp -d /var/tmp/runbook-bench-backup.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/raw" "$WORK/gz"

best() { # best wall time of 3 runs of "$@" (seconds, 3 decimals)
  local best=999999 s e t
  for _ in 1 2 3; do
    s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l); if (( $(echo "$t < $best" | bc -l) )); then best=$t; fi
  done
  printf '%.3f' "$best"
}

config() { # config for one backup item over folder $1 with extra options $2
  cat > "$WORK/jobs-$3.toml" <<TOML
[runbook]
state_dir = "$WORK/state-$3"
[jobs.b]
timeout = "1h"
[[jobs.b.items]]
name = "backup"
kind = "backup"
dir = "$1"
max_age = "1000d"
$2
TOML
  echo "$WORK/jobs-$3.toml"
}

echo "== 1. ${SIZE_MB} MB file with a .sha256 sidecar"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$WORK/raw/base.bin"
(cd "$WORK/raw" && sha256sum base.bin > base.bin.sha256)
touch -d '-2 hours' "$WORK/raw/base.bin"
CFG=$(config "$WORK/raw" "" raw)
cat "$WORK/raw/base.bin" > /dev/null
"$BIN" --config "$CFG" run-job b --no-notify --format json | grep -E '"(status|summary)"' | head -3
T_REF=$(best bash -c "cd '$WORK/raw' && sha256sum -c base.bin.sha256")
T_OURS=$(best "$BIN" --config "$CFG" run-job b --no-notify --format json)
RSS=$(/usr/bin/time -v "$BIN" --config "$CFG" run-job b --no-notify --format json 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}')
echo "sha256sum -c: ${T_REF}s   runbook backup: ${T_OURS}s   ratio: $(echo "scale=3; $T_OURS / $T_REF" | bc -l) (target <= 1.1)"
echo "runbook peak RSS: $((RSS / 1024)) MB (target < 64 MB)"

echo "== 2. gzip'd plain dump"
# A plain dump's shape: a header, COPY blocks of trading rows, the completion marker.
{
  printf -- '--\n-- PostgreSQL database dump\n--\n\nCREATE TABLE public.orders (id bigint, symbol text, qty integer, price numeric, created_at timestamptz);\n\nCOPY public.orders (id, symbol, qty, price, created_at) FROM stdin;\n'
  awk -v n="$((SIZE_MB * 9000))" 'BEGIN { srand(42); for (i = 1; i <= n; i++) printf "%d\tSYM%03d\t%d\t%.2f\t2026-11-%02d %02d:%02d:%02d+05:30\n", i, int(rand()*500), int(rand()*1000), rand()*5000, 1+int(rand()*28), int(rand()*24), int(rand()*60), int(rand()*60) }'
  printf '\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n'
} | gzip -6 > "$WORK/gz/trading.sql.gz"
touch -d '-2 hours' "$WORK/gz/trading.sql.gz"
ls -lh "$WORK/gz/trading.sql.gz" | awk '{print "gzip file: " $5}'
CFG=$(config "$WORK/gz" "" gz)
cat "$WORK/gz/trading.sql.gz" > /dev/null
"$BIN" --config "$CFG" run-job b --no-notify --format json | grep -E '"(status|summary)"' | head -3
T_REF=$(best gzip -t "$WORK/gz/trading.sql.gz")
T_OURS=$(best "$BIN" --config "$CFG" run-job b --no-notify --format json)
echo "gzip -t: ${T_REF}s   runbook backup: ${T_OURS}s   ratio: $(echo "scale=3; $T_OURS / $T_REF" | bc -l) (target <= 0.5)"
