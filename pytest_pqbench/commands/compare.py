"""``pqbench compare``: per case and metric, baseline vs candidate with a verdict; exit 1 on a
regression, 2 on unusable input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..results.compare import (
    DEFAULT_ALPHA,
    NORMALISE,
    Thresholds,
    compare_runs,
    parse_alpha,
    parse_points,
    parse_relative,
)
from ..results.load import DEFAULT_STORAGE, load_one, same_run
from ..results.noise import NoiseModel
from ..results.report import render_comparison
from . import Subcommands

DEFAULTS = Thresholds.default()


def factor(relative: float | None) -> str:
    return f"{1.0 + (relative or 0.0):.2f}"


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("compare", help="compare two runs; exit 1 when a metric regressed")
    p.add_argument("baseline", metavar="BASELINE", help="run file, or saved run number / glob")
    p.add_argument("candidate", metavar="CANDIDATE", help="run file, or saved run number / glob")
    p.add_argument("--latency", default=factor(DEFAULTS.latency), metavar="FACTOR",
                   help="p50 slower than this factor (or percentage, 3%%) and significant "
                        f"regresses (default: {factor(DEFAULTS.latency)})")
    p.add_argument("--p99", default=factor(DEFAULTS.p99), metavar="FACTOR",
                   help=f"same for p99, with a tail test (default: {factor(DEFAULTS.p99)})")
    p.add_argument("--accuracy-drop", default=f"{DEFAULTS.accuracy:g}", metavar="PP",
                   help="accuracy drop in percentage points that regresses (default: 0.5)")
    p.add_argument("--size", default="1.0", metavar="FACTOR",
                   help="model size growth factor that regresses (default: 1.0, any growth)")
    p.add_argument("--macs", default="1.0", metavar="FACTOR",
                   help="MACs growth factor that regresses (default: 1.0, any growth)")
    p.add_argument("--alpha", default=str(DEFAULT_ALPHA), metavar="A",
                   help="significance level of the latency tests (default: 0.002, as asv)")
    p.add_argument("--normalise", choices=NORMALISE, default="auto",
                   help="scale candidate times by the ratio of the runs' control measurements: "
                        "auto = only when the runs come from different machines")
    p.add_argument("--noise", type=Path, metavar="FILE",
                   help="per-case session noise from pqbench noise --write (default: the "
                        "built-in between-session sd measured on a 2-core VM)")
    p.add_argument("--paired", choices=("auto", "never"), default="auto",
                   help="auto: where both runs' engine artefacts still exist (same artefact "
                        "cache), re-time baseline and candidate here in alternating blocks and "
                        "decide on the paired ratios; never: compare the saved figures only")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                   help="pytest-benchmark storage for saved runs (default: .benchmarks)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    thresholds = Thresholds(latency=parse_relative(args.latency), p99=parse_relative(args.p99),
                            accuracy=parse_points(args.accuracy_drop),
                            size=parse_relative(args.size), macs=parse_relative(args.macs),
                            alpha=parse_alpha(args.alpha))
    baseline = load_one(args.baseline, args.storage)
    candidate = load_one(args.candidate, args.storage)
    if (why := same_run(baseline, candidate)) is not None:
        print(f"pqbench compare: warning: {why}", file=sys.stderr)
    noise = NoiseModel.load(args.noise) if args.noise else None
    paired, notes = {}, {}
    if args.paired == "auto" and thresholds.latency is not None:
        from ..results.paired import pair_runs

        paired, notes = pair_runs(baseline, candidate, thresholds=thresholds,
                                  say=lambda line: print(line, file=sys.stderr))
    comparison = compare_runs(baseline, candidate, thresholds, args.normalise, noise, paired,
                              notes)
    print(render_comparison(comparison, args.format))
    return 1 if comparison.regressions else 0
