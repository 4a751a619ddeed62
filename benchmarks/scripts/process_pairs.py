"""Can a dependency upgrade (a new onnxruntime, a new torch) be gated? Both versions cannot load
in one process, so the paired gate cannot time them side by side. This measures the next best
thing (pyperf's unit is the process): short worker processes of the two environments started
alternately (A B B A ...), each timing the same ONNX file in blocks, the verdict on the paired
per-process figures with the gate's own statistics (Wilcoxon signed-rank, Hodges-Lehmann).

    # A/A: the same environment on both sides, 20 processes a side
    python benchmarks/scripts/process_pairs.py --onnx MODEL.onnx --processes 20
    # an upgrade: another environment's interpreter as side B
    python benchmarks/scripts/process_pairs.py --onnx MODEL.onnx --python-b /tmp/ort-old/bin/python

It prints each side's between-process spread, the paired estimate with its interval and the
change that design could detect (the verdict's MDE at a 10% gate), and the wall time it took.
The worker needs only numpy and onnxruntime in its environment. The product's command is
``pqbench envs RUN --python-b PYTHON`` (every ONNX Runtime case of a run); this script times
one ONNX file and prints the spreads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    import numpy as np

    from pytest_pqbench.results import stats
    from pytest_pqbench.results.envs import time_pairs
    from pytest_pqbench.results.paired import input_shape

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file both sides time")
    parser.add_argument("--python-a", default=sys.executable)
    parser.add_argument("--python-b", default=sys.executable)
    parser.add_argument("--processes", type=int, default=20, help="per side")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.01 / 24,
                        help="the test's alpha (default: the run budget 0.01 over 24 tests)")
    parser.add_argument("--threshold", type=float, default=0.10)
    args = parser.parse_args()
    started = time.perf_counter()
    shape = input_shape({"format": "onnx", "path": str(args.onnx)}, 8)
    pairs = time_pairs(args.onnx, args.python_a, args.python_b, args.processes, args.seconds,
                       args.threads, shape, say=lambda line: print(line, flush=True))
    centres, versions = {"a": pairs.a_ms, "b": pairs.b_ms}, pairs.versions
    a, b = np.asarray(centres["a"]), np.asarray(centres["b"])
    estimate = stats.paired(list(a), list(b), args.alpha)
    print(f"onnxruntime A {versions['a']}, B {versions['b']}; {args.processes} processes a side "
          f"of {args.seconds:g} s, {time.perf_counter() - started:.0f} s in all")
    for name, x in (("A", a), ("B", b)):
        print(f"  {name}: median {np.median(x):.3f} ms, between-process sd "
              f"{np.std(np.log(x), ddof=1):.1%}")
    print(f"  paired per-pair log ratio sd {np.std(np.log(b / a), ddof=1):.1%}")
    if estimate is not None:
        print(f"  paired estimate x{estimate.ratio:.3f}, {estimate.describe(args.threshold)}; "
              f"verdict at {args.threshold:.0%}: {stats.decide(estimate, args.threshold)}")


if __name__ == "__main__":
    main()
