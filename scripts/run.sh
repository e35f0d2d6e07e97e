#!/usr/bin/env bash
# Run the default site (deploy/site.toml) under supervisord in the foreground; Ctrl-C stops it.
#
# Processes: see deploy/actors.conf. Logs: var/log/. While it runs, from another terminal:
#   .venv/bin/supervisorctl -c deploy/actors.conf status      (or: restart router, shutdown)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
mkdir -p var/log

echo "run: supervisord -n -c deploy/actors.conf (logs in var/log/, Ctrl-C to stop)"
exec .venv/bin/supervisord -n -c deploy/actors.conf
