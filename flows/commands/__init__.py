"""Subcommands of the `beit3` CLI, one module each (see `flows.cli`)."""
