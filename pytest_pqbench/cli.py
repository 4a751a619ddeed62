"""``pqbench`` console script. One module per subcommand under ``pytest_pqbench.commands``, each
with ``add_parser(subparsers)`` and ``run(args) -> int``.

Exit status: 0 success, 1 a gate failed (e.g. ``compare`` found a regression), 2 unusable input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .registry import UsageError

COMMANDS = ["list_cases", "report", "compare", "history", "merge"]


class InputError(Exception):
    """Unusable input (a file that is not a run, no case in common): exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # subcommand not written yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (InputError, UsageError) as exc:
        print(f"pqbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
