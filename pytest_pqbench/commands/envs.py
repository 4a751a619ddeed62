"""``pqbench envs RUN --python-b PYTHON``: gate a dependency upgrade (a new onnxruntime).

Times each ONNX Runtime case of RUN, from its recorded ONNX file, in alternating short worker
processes of two Python environments (``--python-a``, default this one, and ``--python-b``), and
gives a paired verdict per case with the gate's statistics (``results.envs``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import UsageError
from ..results import stats
from ..results.compare import parse_relative
from ..results.envs import time_pairs
from ..results.load import DEFAULT_STORAGE, load_one
from ..results.paired import input_shape
from ..results.sequential import DEFAULT_ALPHA_RUN, per_test_alpha
from . import Subcommands


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("envs", help="gate a dependency upgrade: a run's ONNX files timed in two "
                                    "Python environments, process against process")
    p.add_argument("run_spec", metavar="RUN", help="run file, or saved run number / glob")
    p.add_argument("--python-b", required=True, metavar="PYTHON",
                   help="the other environment's interpreter (needs numpy and onnxruntime)")
    p.add_argument("--python-a", default=sys.executable, metavar="PYTHON",
                   help="this side's interpreter (default: the one running pqbench)")
    p.add_argument("--processes", type=int, default=20, metavar="N",
                   help="worker processes a side (default 20)")
    p.add_argument("--seconds", type=float, default=2.0, metavar="S",
                   help="seconds each worker times (default 2)")
    p.add_argument("--latency", default="1.10", metavar="FACTOR",
                   help="the change that counts (default 1.10: 10%%, what 20 processes a side "
                        "can decide on the 2-vCPU VM)")
    p.add_argument("-k", dest="select", default="", metavar="TEXT",
                   help="only the cases whose id contains TEXT")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--storage", type=Path, default=DEFAULT_STORAGE)
    p.set_defaults(run=run)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.processes < 2:
        raise UsageError(f"--processes {args.processes}: at least 2 a side (20 decide 10%)")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds {args.seconds}: a positive number of seconds, e.g. 2")
    try:  # the gate's own parser: a factor (1.10) or a percentage (10%)
        threshold = parse_relative(args.latency)
    except UsageError as exc:
        raise UsageError(f"--latency {args.latency!r}: {exc}") from None
    if threshold <= 0:
        raise UsageError(f"--latency {args.latency!r}: a factor above 1, e.g. 1.10 for 10%")
    for option in ("python_a", "python_b"):
        if not Path(getattr(args, option)).is_file():
            raise UsageError(f"--{option.replace('_', '-')} {getattr(args, option)!r}: no such "
                             "interpreter (give the path of the environment's python)")
    source = load_one(args.run_spec, args.storage)
    cases = {case_id: rec for case_id, rec in source.cases.items()
             if args.select in case_id and isinstance(rec.fact("artefact"), dict)
             and rec.fact("artefact").get("format") == "onnx"}
    if not cases:
        raise UsageError(f"{source.path}: no ONNX Runtime case with a recorded ONNX file"
                         + (f" matches -k {args.select!r}" if args.select else ""))
    alpha = per_test_alpha(DEFAULT_ALPHA_RUN, len(cases))
    rows, regressed = [], False
    for case_id, rec in cases.items():
        artefact = rec.fact("artefact")
        onnx = Path(str(artefact.get("path", "")))
        if not onnx.is_file():
            rows.append({"case_id": case_id, "verdict": "not timed",
                         "detail": f"{onnx} is not in the artefact cache any more"})
            continue
        say(f"pqbench envs: {case_id}: {args.processes} processes a side of {args.seconds:g} s")
        threads = int(rec.fact("threads") or 1)
        pairs = time_pairs(onnx, args.python_a, args.python_b, args.processes, args.seconds,
                           threads, input_shape(artefact, rec.batch_size), say)
        estimate = pairs.estimate(alpha)
        verdict = stats.decide(estimate, threshold) if estimate is not None else "cannot decide"
        regressed |= verdict == "regressed"
        rows.append({"case_id": case_id, "verdict": verdict,
                     "change": estimate.ratio if estimate is not None else None,
                     "detail": estimate.describe(threshold) if estimate is not None else
                     "too few processes for an interval",
                     "versions": pairs.versions, "spreads": pairs.spreads(),
                     "a_ms": pairs.a_ms, "b_ms": pairs.b_ms})
    if args.format == "json":
        print(json.dumps({"run": str(source.path), "alpha": alpha, "threshold": threshold,
                          "rows": rows}, indent=1))
    else:
        print(f"environments A {args.python_a} and B {args.python_b}; each test at alpha "
              f"{alpha:.2g} (run budget {DEFAULT_ALPHA_RUN:g} over {len(cases)} case(s)), "
              f"threshold {threshold:.0%}")
        for r in rows:
            versions = r.get("versions") or {}
            change = f" x{r['change']:.3f}" if r.get("change") else ""
            print(f"{r['case_id']}: {r['verdict']}{change} (onnxruntime A "
                  f"{versions.get('a', '?')}, B {versions.get('b', '?')}; {r['detail']})")
    return 1 if regressed else 0
