"""``pqbench`` subcommands: one module each, with ``add_parser(subcommands)`` and
``run(args) -> int`` (``pytest_pqbench.cli`` loads them by name)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError


class Subcommands(Protocol):
    """What ``add_parser`` is given: ``ArgumentParser.add_subparsers()``'s result."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def check_output_file(path: Path | None, option: str, example: str = "out.json") -> None:
    """An output path that can be written: a file name in an existing folder (checked before
    any work, so a long report never ends in an error about where to put it)."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory; give a file name, e.g. "
                         f"{path / example}")
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: directory {str(path.parent)!r} does not exist")
