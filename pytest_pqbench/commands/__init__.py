"""``pqbench`` subcommands: one module each, with ``add_parser(subcommands)`` and
``run(args) -> int`` (``pytest_pqbench.cli`` loads them by name)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Protocol

from ..outputs import check_outputs


class Subcommands(Protocol):
    """What ``add_parser`` is given: ``ArgumentParser.add_subparsers()``'s result."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def check_output_file(path: Path | None, option: str, example: str = "out.json") -> None:
    """An output path that can be written (``outputs.check_outputs``, which every subcommand
    uses with its inputs: checked before any work)."""
    check_outputs({option: path}, example=example)
