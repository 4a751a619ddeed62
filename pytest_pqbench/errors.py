"""Every error pytest-pqbench raises on purpose, in one place, imported downward only (this
module imports nothing of the package).

- ``UsageError``: a bad setting or name; names the bad value and the valid choices. pytest turns
  it into a usage error (exit 4), ``pqbench`` into exit status 2.
- ``InputError``: an unusable input file (not a run, damaged, no case in common): ``pqbench``
  exit status 2, never 1 (1 means "regressed").
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad user input: names the bad value and the valid choices."""


class InputError(Exception):
    """Unusable input (a file that is not a run, no case in common): exit status 2."""
