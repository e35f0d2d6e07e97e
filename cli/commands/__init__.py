"""The `sctl` commands, one module per family; `cli.main` registers them on the root group."""
