#!/usr/bin/env bash
# Renders a realistic HTML report (the e-mail body) in headless Chromium and saves a PNG, so a
# person can check that the state of a run is grasped in three seconds.
#
#   bench/render-html.sh [OUT.png]     (default: docs/report-screenshot.png)
#
# Needs: cargo, chromium (Debian: apt-get install chromium). The report comes from real runs of
# a small job (command, key_rotation and manual items): the first run fails one item that the
# second run recovers, so the "recovered" and "new failure" markers show.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/report-screenshot.png}
# shellcheck source=bench/chromium.sh
. "$root/bench/chromium.sh"
need_chromium render-html

cargo build --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/debug/runbook
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

soon=$(date -d '-80 days' +%F)     # a 90-day key rotated 80 days ago: due in 10 days (warn)
late=$(date -d '-200 days' +%F)    # a 180-day key rotated 200 days ago: overdue (fail)
fine=$(date -d '-5 days' +%F)
cat > "$work/jobs.toml" <<TOML
[runbook]
timezone = "Asia/Kolkata"
state_dir = "state"
hostname = "ops-1"

[notify.archive]
type = "file"
dir = "sent"

[jobs.daily]
description = "Morning checklist (10:00 IST)"

[[jobs.daily.items]]
name = "Replication lag"
kind = "command"
argv = ["sh", "-c", "echo 'standby-1: replay lag 412s (limit 60s)'; echo 'standby-2: replay lag 3s'; exit 1"]
read_only = true

[[jobs.daily.items]]
name = "Key rotation"
kind = "key_rotation"
keys = [
  { name = "payments-api signing key", rotated = $late, max_age = "180d", owner = "sec-team" },
  { name = "kafka client TLS key", rotated = $soon, max_age = "90d", owner = "platform" },
  { name = "grafana admin password", rotated = $fine, max_age = "90d" },
]

[[jobs.daily.items]]
name = "Backups completed"
kind = "command"
argv = ["sh", "-c", "echo 'full-20261124.dump 2.1G 3h old'"]
read_only = true

[[jobs.daily.items]]
name = "Order API health"
kind = "command"
argv = ["sh", "-c", "test ! -e flaky"]
read_only = true

[[jobs.daily.items]]
name = "Kafka consumer lag"
kind = "command"
argv = ["true"]
read_only = true

[[jobs.daily.items]]
name = "Review Grafana trading dashboard"
kind = "manual"
link = "https://grafana.example/d/trading"

[[jobs.daily.items]]
name = "Check incident channel for overnight pages"
kind = "manual"
TOML
cd "$work"
touch flaky
"$bin" --config jobs.toml run-job daily >/dev/null 2>&1 || true
rm flaky
"$bin" --config jobs.toml run-job daily >/dev/null 2>&1 || true
"$bin" --config jobs.toml report last --format html > report.html

screenshot "file://$work/report.html" "$out" 820,1100
cp report.html "${out%.png}.html"
echo "render-html: wrote $out (and ${out%.png}.html)"
