"""The `sctl` command line; the only place that configures logging.

`main` holds the root group; `commands/` one module per command family (`common` their shared
helpers: exit codes, output, the site file, logging set-up); `ops/` the operations
tooling (supervisord file, watchdog, status, top, heartbeats); `runner` the actor process entry.
"""
