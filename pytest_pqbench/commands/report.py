"""``pqbench report``: the matrix of one or more runs as a table, and a Pareto chart."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cache import atomic_write_bytes
from ..errors import InputError
from ..outputs import check_outputs
from ..results.chart import pareto_png
from ..results.html import render_page
from ..results.load import DEFAULT_STORAGE, load_runs, resolve
from ..results.report import FORMATS, render_report
from . import Subcommands


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("report", help="the matrix of runs as a markdown / HTML / CSV table")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="pytest-benchmark JSON file, or a saved run's number or name glob")
    p.add_argument("--format", choices=FORMATS, default="markdown")
    p.add_argument("-o", "--output", type=Path, help="write the table here (default: stdout)")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="write a latency-vs-accuracy Pareto chart (PNG)")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                   help="pytest-benchmark storage for saved runs (default: .benchmarks)")
    p.add_argument("--baseline", metavar="RUN",
                   help="compare the run with this one (default thresholds of pqbench compare) "
                        "and add every verdict with its reason (markdown and html)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    runs = load_runs(args.runs, args.storage)  # validates every input before writing anything
    # reports never modify what they read: the runs, the baseline
    inputs = [("RUN", r.path) for r in runs]
    if args.baseline is not None:
        inputs += [("--baseline", p) for p in resolve(args.baseline, args.storage)]
    suffix = {"markdown": "md"}.get(args.format, args.format)
    check_outputs({"-o/--output": args.output, "--plot": args.plot}, inputs,
                  example=f"report.{suffix}")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"{args.plot}: --plot writes a PNG; give a file name ending in .png")
    comparison = None
    if args.baseline is not None:
        if args.format == "csv" or len(runs) != 1:
            raise InputError(f"--baseline {args.baseline}: compares one run (merge split runs "
                             "with pqbench merge first) in --format markdown or html")
        from ..results.compare import compare_runs
        from ..results.load import load_one, same_run

        base = load_one(args.baseline, args.storage)
        if (why := same_run(base, runs[0])) is not None:
            print(f"pqbench report: warning: {why}", file=sys.stderr)
        comparison = compare_runs(base, runs[0])
    text = (render_page(runs, comparison) if args.format == "html"
            else render_report(runs, args.format, comparison))
    chart = pareto_png(runs) if args.plot is not None else None
    if args.output is not None:
        atomic_write_bytes(args.output, text.encode())
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if chart is not None:
        atomic_write_bytes(args.plot, chart)
        print(f"Pareto chart written to {args.plot}")
    return 0
