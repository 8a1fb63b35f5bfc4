#!/usr/bin/env bash
# runbook's `vacuum` item (parallel = 2) against `vacuumdb --analyze -j 2` over the same tables
# (schema `trading` of bench/fixture.sql), on fresh copies of one loaded database, alternating
# which tool goes first, PAIRS pairs per case; prints the median time ratio runbook/vacuumdb.
#   ROWS=2000000 PAIRS=5 bench/vacuum.sh      (build first: cargo build --release)
#   CASES="fresh stale_relpages" ... runs only those cases (default: all of them).
# Cases:
# - fresh: the fixture as loaded.
# - stale_relpages: the live-database picture after a bulk load into the biggest table: every
#   other table analyzed (relpages right, as autovacuum keeps them), trading.orders never analyzed
#   since (relpages = 0, reltuples = -1). vacuumdb orders by relpages, so it starts orders last.
# - only_needed: steady state, everything vacuumed and analyzed, then a modest churn in one big
#   table (the most recent 12% of orders updated: past autovacuum's analyze threshold, 10%, not
#   its vacuum threshold, 20%). runbook with only_needed = true; vacuumdb does every table.
# - only_needed_small: the same modest churn (12% updated) in the smallest of the three big
#   tables (positions, 500k rows): ANALYZE of that one table against vacuumdb's full pass.
# - only_needed_vacuum: the same with a heavier churn spread over a whole big table (25% of
#   transactions updated: past the vacuum threshold), for comparison (no target).
# - only_needed_cold, only_needed_small_cold: only_needed and only_needed_small with the server
#   restarted and the OS page cache dropped before each timed run (root only): nothing in
#   memory, as on a database larger than RAM.
ROWS=${ROWS:-2000000}
source "$(dirname "$0")/common.sh"

# vacuumdb before 16 has no --schema: name every table of the schema with -t.
TABLE_ARGS=()
while read -r t; do TABLE_ARGS+=(-t "$t"); done < <("${PSQL[@]}" -d fixture -At -c "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables WHERE schemaname = 'trading'")
VACUUMDB=("$PGBIN/vacuumdb" "${CONN[@]}" --analyze -j 2 -q "${TABLE_ARGS[@]}")

CASES=${CASES:-fresh stale_relpages only_needed only_needed_small only_needed_vacuum only_needed_cold only_needed_small_cold}
wanted() { [[ " $CASES " == *" $1 "* ]]; }

run_case() { # NAME TEMPLATE ITEM_TOML [PREPARE_FUNCTION] [cold]
  local name=$1 template=$2 item=$3 prep=${4:-} cold=${5:-}
  wanted "$name" || return 0
  if [ -n "$cold" ] && [ "$(id -u)" != 0 ]; then
    echo "vacuum/$name: not run (dropping the page cache needs root)"
    return 0
  fi
  local ours="" theirs=""
  for i in $(seq 1 "$PAIRS"); do
    for who in $( [ $((i % 2)) = 1 ] && echo "ours theirs" || echo "theirs ours"); do
      copy "$template" run
      [ -n "$prep" ] && $prep run
      # Writes still in the page cache (the previous run's, the set-up's) would otherwise be
      # written back during the timed run.
      sync
      [ -n "$cold" ] && cold_cache
      if [ "$who" = ours ]; then
        jobs_toml run "$item"
        ours="$ours $(timed runbook_job)"
      else
        theirs="$theirs $(timed "${VACUUMDB[@]}" run)"
      fi
    done
  done
  echo "vacuum/$name: $(median_ratio "$ours" "$theirs")"
}

ITEM='kind = "vacuum"
target = "bench"
schemas = ["trading"]
parallel = 2'

run_case fresh fixture "$ITEM"

if wanted stale_relpages; then
copy fixture stale_t
"${PSQL[@]}" -d stale_t -At -c "SELECT format('ANALYZE %I.%I;', schemaname, relname) FROM pg_stat_user_tables WHERE schemaname = 'trading' AND relname <> 'orders'" -o "$WORK/analyze.sql"
"${PSQL[@]}" -d stale_t -f "$WORK/analyze.sql"
"${PSQL[@]}" -d stale_t -c "UPDATE pg_class SET relpages = 0, reltuples = -1 WHERE oid = 'trading.orders'::regclass"
run_case stale_relpages stale_t "$ITEM"
fi

# Steady state: everything vacuumed and analyzed, then churn. Statistics are per database and
# start empty in a copy, so this is set up (untimed) in each copy.
steady_modest() {
  "${VACUUMDB[@]}" "$1"
  "${PSQL[@]}" -d "$1" -c "UPDATE trading.orders SET status = 'FILLED' WHERE id > (SELECT max(id) * 0.88 FROM trading.orders)" -c "CHECKPOINT" >/dev/null
}
steady_small() {
  "${VACUUMDB[@]}" "$1"
  "${PSQL[@]}" -d "$1" -c "UPDATE trading.positions SET qty = qty + 1 WHERE id > (SELECT max(id) * 0.88 FROM trading.positions)" -c "CHECKPOINT" >/dev/null
}
steady_heavy() {
  "${VACUUMDB[@]}" "$1"
  "${PSQL[@]}" -d "$1" -c "UPDATE trading.transactions SET amount = amount + 1 WHERE id % 4 = 0" -c "CHECKPOINT" >/dev/null
}
run_case only_needed fixture "$ITEM
only_needed = true" steady_modest
run_case only_needed_small fixture "$ITEM
only_needed = true" steady_small
run_case only_needed_vacuum fixture "$ITEM
only_needed = true" steady_heavy
run_case only_needed_cold fixture "$ITEM
only_needed = true" steady_modest cold
run_case only_needed_small_cold fixture "$ITEM
only_needed = true" steady_small cold
