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
The worker needs only numpy and onnxruntime in its environment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
inp = session.get_inputs()[0]
shape = [d if isinstance(d, int) and d > 0 else 8 for d in inp.shape]
batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(10):
    session.run(None, {inp.name: batch})
fastest, end = [], time.perf_counter() + seconds
while time.perf_counter() < end:  # blocks of >= 50 ms, each one's fastest call kept
    block, started = [], time.perf_counter()
    while time.perf_counter() - started < 0.05:
        t0 = time.perf_counter()
        session.run(None, {inp.name: batch})
        block.append(time.perf_counter() - t0)
    fastest.append(min(block) * 1e3)
print(json.dumps({"version": ort.__version__, "fastest_ms": fastest}))
"""


def worker(python: str, onnx: Path, seconds: float, threads: int) -> dict:
    done = subprocess.run([python, "-c", WORKER, str(onnx), str(seconds), str(threads)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{python}: worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    from pytest_pqbench.results import stats

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
    centres: dict[str, list[float]] = {"a": [], "b": []}
    versions = {}
    for i in range(args.processes):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")  # ABBA: neither side always first
        for side in order:
            python = args.python_a if side == "a" else args.python_b
            out = worker(python, args.onnx, args.seconds, args.threads)
            versions[side] = out["version"]
            centres[side].append(float(np.median(out["fastest_ms"])))
        print(f"  pair {i + 1}: A {centres['a'][-1]:.3f} ms, B {centres['b'][-1]:.3f} ms",
              flush=True)
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
