"""Subcommands of the ``pqbench`` console script."""
