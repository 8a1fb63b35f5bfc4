#!/usr/bin/env bash
# Serves the daemon's status page with a few real runs and saves a screenshot of it taken by
# headless Chromium, so a person can check that it reads like a page a team keeps open.
#
#   bench/render-status.sh [OUT.png]     (default: docs/status-screenshot.png)
#
# Needs: cargo, chromium (Debian: apt-get install chromium). Three jobs in three zones
# (Asia/Kolkata, Europe/London, America/New_York) with command, key_rotation and manual items
# are run by hand a few times (a flaky check fails once, a script fails every time), then
# `runbook daemon` serves the page on a free loopback port. Nothing leaves this host. The page
# lists the open TODO (a manual item) and the unacknowledged failure, each with its ack form.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/status-screenshot.png}
# shellcheck source=bench/chromium.sh
. "$root/bench/chromium.sh"
need_chromium render-status

cargo build --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/debug/runbook
work=$(mktemp -d)
daemon=
cleanup() {
  [ -z "$daemon" ] || { kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
soon=$(date -d '-80 days' +%F)     # a 90-day key rotated 80 days ago: due in 10 days (warn)
fine=$(date -d '-5 days' +%F)
cat > "$work/jobs.toml" <<TOML
[runbook]
timezone = "Asia/Kolkata"
state_dir = "state"
hostname = "ops-1"

[server]
listen = "127.0.0.1:$port"

[jobs.daily]
description = "Morning checklist: replication, backups, order API"
schedule = "0 10 * * *"

[[jobs.daily.items]]
name = "Replication lag"
kind = "command"
argv = ["sh", "-c", "echo 'standby-1: replay lag 2s'"]
read_only = true

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
name = "Review Grafana trading dashboard"
kind = "manual"

[jobs.eu-settlement]
description = "Settlement file checks before the London open"
schedule = "30 7 * * MON-FRI"
timezone = "Europe/London"

[[jobs.eu-settlement.items]]
name = "Settlement file arrived"
kind = "command"
argv = ["sh", "-c", "echo 'settle-20261124.csv: 18 211 rows'"]
read_only = true

[[jobs.eu-settlement.items]]
name = "Signing keys"
kind = "key_rotation"
keys = [
  { name = "sftp host key", rotated = $soon, max_age = "90d", owner = "platform" },
  { name = "pgp signing key", rotated = $fine, max_age = "365d" },
]

[jobs.us-reconcile]
description = "Reconcile positions with the US broker after the close"
schedule = "15 17 * * MON-FRI"
timezone = "America/New_York"

[[jobs.us-reconcile.items]]
name = "Positions match the broker"
kind = "command"
argv = ["sh", "-c", "echo 'AAPL: ours 1200, broker 1150'; exit 1"]
read_only = true

[[jobs.us-reconcile.items]]
name = "Cash balance"
kind = "command"
argv = ["true"]
read_only = true

[jobs.dr-drill]
description = "Quarterly disaster-recovery walk-through (by hand)"

[[jobs.dr-drill.items]]
name = "Walk through the failover runbook"
kind = "manual"
TOML
cd "$work"
run() { "$bin" --config jobs.toml run-job "$1" >/dev/null 2>&1 || true; }
touch flaky
run daily
rm flaky
for _ in 1 2 3; do run daily; done
for _ in 1 2 3; do run eu-settlement; done
run us-reconcile
run us-reconcile

"$bin" --config jobs.toml daemon >daemon.log 2>&1 &
daemon=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/" > status.html

screenshot "http://127.0.0.1:$port/" "$out" 1140,1350
cp status.html "${out%.png}.html"
echo "render-status: wrote $out (and ${out%.png}.html)"
