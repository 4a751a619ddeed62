"""``pqbench compare``: per case and metric, baseline vs candidate with a verdict; exit 1 on a
regression, 2 on unusable input."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import UsageError
from ..results.compare import (
    DEFAULT_ALPHA,
    NORMALISE,
    UNDECIDED_POLICIES,
    Thresholds,
    compare_runs,
    parse_alpha,
    parse_points,
    parse_relative,
    run_thresholds,
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
                   help="the comparison's false-alarm budget: the chance that two runs of one "
                        "commit raise any regressed / improved verdict, split over the timing "
                        f"tests (default: {DEFAULT_ALPHA:g})")
    p.add_argument("--undecided", choices=UNDECIDED_POLICIES, default="warn",
                   help="what a gated metric the data cannot decide does: fail (exit 1), warn "
                        "(listed with what would decide it, exit 0) or pass (default: warn)")
    p.add_argument("--timing-profile", choices=("full", "smoke"), default="full",
                   help="paired re-timing: full (looks every 10 cycles from 20 to 100, blocks "
                        "adding up to 200 rounds and 1 s) or smoke (one look of 16 cycles, 20 "
                        "rounds, 0.2 s: a quick check, few verdicts decided; default: full)")
    p.add_argument("--pair-budget", type=float, default=300.0, metavar="SECONDS",
                   help="paired re-timing: seconds after the first look at most; the pairs "
                        "still undecided keep their last look (0: no limit; default: 300)")
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
    if not math.isfinite(args.pair_budget) or args.pair_budget < 0:
        raise UsageError(f"--pair-budget {args.pair_budget!r}: must be a number of seconds >= 0")
    common = sum(case_id in candidate.cases for case_id in baseline.cases)
    thresholds = run_thresholds(thresholds, common)
    paired, notes = {}, {}
    if args.paired == "auto" and thresholds.latency is not None:
        from ..config import OPTIONS, TIMING_PROFILES
        from ..results.paired import pair_runs
        from ..stages.timing import schedule_for


        policy = {**{k: OPTIONS[k][1] for k in ("min_time", "min_rounds")},
                  **TIMING_PROFILES[args.timing_profile]}
        paired, notes = pair_runs(baseline, candidate, min_time=policy["min_time"],
                                  min_rounds=policy["min_rounds"],
                                  schedule=schedule_for(args.timing_profile),
                                  thresholds=thresholds, budget_s=args.pair_budget,
                                  say=lambda line: print(line, file=sys.stderr))
    comparison = compare_runs(baseline, candidate, thresholds, args.normalise, noise, paired,
                              notes)
    print(render_comparison(comparison, args.format, args.undecided))
    undecided = comparison.undecided
    if undecided and args.undecided == "warn":
        print(f"pqbench compare: {len(undecided)} gated metric(s) undecided (listed above with "
              "what would decide them); --undecided fail makes them fail", file=sys.stderr)
    return 1 if comparison.failing(args.undecided) else 0
