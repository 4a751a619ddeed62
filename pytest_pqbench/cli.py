"""``pqbench`` console script. One module per subcommand under ``pytest_pqbench.commands``, each
with ``add_parser(subparsers)`` and ``run(args) -> int``.

Exit status: 0 success, 1 a gate failed (e.g. ``compare`` found a regression), 2 unusable input
(a bad file, option or output path: one message naming it, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import InputError, UsageError

COMMANDS = ["list_cases", "report", "compare", "history", "envs", "merge", "noise"]
# what --help prints (the module docstring is for developers and was cut mid-sentence there)
DESCRIPTION = ("Read pytest-pqbench runs: list the cases a configuration would run, report a "
               "run as a table and charts, compare two runs with a verdict per case, show a "
               "case's history, gate a dependency upgrade (two Python environments), merge split "
               "runs, measure the noise of A/A runs.")
EPILOG = ("Exit status: 0 success; 1 a gate failed (compare found a regression); 2 unusable "
          "input (a bad file, option or output path). 'pqbench COMMAND --help' for a command.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqbench", description=DESCRIPTION, epilog=EPILOG)
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
    except OSError as exc:  # a path that cannot be read or written (permissions, full disk)
        print(f"pqbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pqbench {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # ``python -m pytest_pqbench.cli``: run the package's module, not this __main__ copy, whose
    # InputError is another class than the one the subcommands raise
    from pytest_pqbench.cli import main as package_main

    sys.exit(package_main())
