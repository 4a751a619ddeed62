"""``pqbench merge RUN... -o MERGED.json``: a sharded run's groups as one pytest-benchmark run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cache import atomic_write_text
from ..outputs import check_outputs
from . import Subcommands


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "merge", help="merge the JSON of pytest-split groups into one pytest-benchmark run",
        description="Merge runs (files, or saved run numbers / globs) of one commit and "
                    "configuration, e.g. the --splits N --group K runs of a matrix.")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MERGED.json",
                   help="file to write (atomically); never one of the inputs")
    p.add_argument("--force", action="store_true",
                   help="merge runs from different commits or configurations, or with a case "
                        "in several runs (the last run's wins)")
    p.add_argument("--storage", type=Path, default=Path(".benchmarks"),
                   help="pytest-benchmark storage for saved-run arguments (default: .benchmarks)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..results.load import read_run, resolve
    from ..results.merge import merge_runs

    paths = [path for spec in args.runs for path in resolve(spec, args.storage)]
    output = args.output.resolve()
    # a run is never overwritten (symlinks and hard links resolved)
    check_outputs({"-o/--output": args.output}, [("RUN", p) for p in paths], "merged.json")
    merged, warnings = merge_runs([read_run(p) for p in paths], force=args.force)
    for line in warnings:
        print(f"pqbench merge: warning: {line}", file=sys.stderr)
    atomic_write_text(output, json.dumps(merged, indent=4))
    groups = [m["group"] for m in merged["pqbench"]["merged_from"] if m["group"] is not None]
    detail = f" (split groups {', '.join(map(str, groups))})" if groups else ""
    print(f"merged {len(merged['benchmarks'])} cases from {len(paths)} runs{detail} into "
          f"{args.output}")
    return 0
