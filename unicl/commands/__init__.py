"""Subcommands of the `unicl` CLI, one module each (see unicl/cli.py)."""
