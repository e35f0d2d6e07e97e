#!/usr/bin/env bash
# Run the default site (deploy/site.toml) under supervisord in the foreground; Ctrl-C stops it.
#
# First: scripts/setup.sh run (.venv with sctl), then the site file is checked (every problem
# is listed and nothing starts) and deploy/actors.conf rendered again if the site file changed
# since. Processes: see deploy/actors.conf. Logs: var/log/. While it runs, from another terminal:
#   .venv/bin/supervisorctl -c deploy/actors.conf status      (or: restart router, shutdown)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh run

rc=0
.venv/bin/sctl -c deploy/site.toml deploy render --check >/dev/null || rc=$?
case "$rc" in
    0) ;;
    1) .venv/bin/sctl -c deploy/site.toml deploy render ;;   # the site file changed: render
    *) echo "run: deploy/site.toml has problems (above); nothing was started" >&2; exit "$rc" ;;
esac

echo "run: supervisord -n -c deploy/actors.conf (logs in var/log/, Ctrl-C to stop)"
exec .venv/bin/supervisord -n -c deploy/actors.conf
