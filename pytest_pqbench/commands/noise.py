"""``pqbench noise RUN RUN [RUN...]``: A/A calibration from several runs of one commit.

Prints per case the between-session spread and the latency threshold that keeps A/A false
alarms under ``--rate``; ``--write FILE`` saves the spreads for ``pqbench compare --noise FILE``
and ``--pqbench-noise FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cache import atomic_write_bytes
from ..errors import UsageError
from ..outputs import check_outputs
from ..results.load import DEFAULT_STORAGE, load_runs
from ..results.noise import MIN_RUNS, analyse, noise_file
from . import Subcommands


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("noise", help="A/A calibration: latency noise between runs of one commit")
    p.add_argument("runs", metavar="RUN", nargs="+",
                   help="two or more runs of the same commit (files, saved run numbers, globs)")
    p.add_argument("--rate", default="0.01", metavar="R",
                   help="target A/A false-alarm rate per comparison (default: 0.01)")
    p.add_argument("--write", type=Path, metavar="FILE",
                   help="save the per-case noise for compare --noise / --pqbench-noise")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        rate = float(args.rate)
    except ValueError:
        rate = -1.0
    if not 0.0 < rate < 1.0:
        raise UsageError(f"--rate {args.rate!r}: must be a number in (0, 1), e.g. 0.01")
    runs = load_runs(args.runs, args.storage)
    check_outputs({"--write": args.write}, [("RUN", r.path) for r in runs], "noise.json")
    cases = analyse(runs, rate)
    if len(runs) < MIN_RUNS:
        print(f"warning: {len(runs)} runs; the between-session spread of fewer than {MIN_RUNS} "
              "runs is itself uncertain (give 5 or more)", file=sys.stderr)
    print(f"A/A noise over {len(runs)} runs; threshold = smallest latency change that two "
          f"sessions of one commit exceed with probability {rate:g}")
    print(f"{'case':<44} {'p50 ms (per run)':<26} {'session sd':>10} {'block sd':>9} "
          f"{'threshold':>9}  A/A pairs beyond")
    for c in cases:
        p50 = " ".join(f"{x:.2f}" for x in c.p50_ms)
        if len(p50) > 25:
            p50 = f"{min(c.p50_ms):.2f}..{max(c.p50_ms):.2f}"
        print(f"{c.case_id:<44} {p50:<26} {c.session_sd:>10.1%} {c.block_sd:>9.1%} "
              f"{c.threshold:>9.1%}  {c.pairs_beyond}/{c.pairs}")
    worst = max(cases, key=lambda c: c.threshold)
    print(f"largest threshold needed: {worst.threshold:.1%} ({worst.case_id}); with --noise the "
          "gate's test uses each case's session sd")
    if args.write:
        data = json.dumps(noise_file(cases, runs), indent=2).encode()
        atomic_write_bytes(args.write, data)
        print(f"wrote {args.write}")
    return 0
