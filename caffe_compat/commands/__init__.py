"""Subcommands of the ``caffekt`` console script, one module each."""
