"""The `sctl` command line; the only place that configures logging."""
