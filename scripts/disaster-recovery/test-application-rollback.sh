#!/bin/sh
# Placeholder for the deployment's own DR rollback test (runbook: Monthly Maintenance →
# Disaster recovery test). Replace with the real script; runbook runs it as
# `test-application-rollback.sh full --dry-run` and fails the item on a non-zero exit.
echo "test-application-rollback.sh: this is the placeholder shipped with runbook" >&2
echo "install the deployment's real script at scripts/disaster-recovery/test-application-rollback.sh" >&2
exit 1
