"""The `sctl` command line; the only place that configures logging.

`main` holds the root group; `commands/` one module per command family; `ops/` the operations
tooling (supervisord file, watchdog, status, top, heartbeats); `runner` the actor process entry.
"""
