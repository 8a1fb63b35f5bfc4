#!/usr/bin/env bash
# runbook's `reindex` item (concurrently, parallel = 2) against `reindexdb -j 2 --concurrently`
# over the same schema (`trading` of bench/fixture.sql), on fresh copies of one loaded database,
# alternating which tool goes first, PAIRS pairs; prints the median time ratio runbook/reindexdb.
#   ROWS=2000000 PAIRS=5 bench/reindex.sh      (build first: cargo build --release)
ROWS=${ROWS:-2000000}
source "$(dirname "$0")/common.sh"

ours="" theirs=""
for i in $(seq 1 "$PAIRS"); do
  for who in $( [ $((i % 2)) = 1 ] && echo "ours theirs" || echo "theirs ours"); do
    copy fixture run
    sync  # the previous run's writes, still in the page cache, are not this run's cost
    if [ "$who" = ours ]; then
      jobs_toml run 'kind = "reindex"
target = "bench"
schemas = ["trading"]
parallel = 2'
      ours="$ours $(timed runbook_job)"
    else
      theirs="$theirs $(timed "$PGBIN/reindexdb" "${CONN[@]}" -j 2 --concurrently -S trading -q run)"
    fi
  done
done
echo "reindex: $(median_ratio "$ours" "$theirs")"
