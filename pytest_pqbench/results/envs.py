"""A dependency upgrade (a new onnxruntime) gated by process pairs.

Two versions of a runtime cannot load in one process, so the paired gate cannot time them side by
side. The next best unit is the process (pyperf's): short worker processes of the two Python
environments, started alternately (A B, then B A, ...), each timing the same ONNX file in
blocks of >= 50 ms and reporting the median of its blocks' fastest calls; the verdict is the
gate's own paired test (``stats.paired``: Wilcoxon signed-rank, Hodges-Lehmann, exact interval)
on the per-process figures, pair by pair.

Measured on the 2-vCPU development VM (docs/explanation/gate-calibration.md, "Dependency
upgrades"): 20 processes a side of 2 s (87 s) gave a per-pair log-ratio sd of 1.0% and an
interval about ±1-2% wide, onnxruntime 1.31.1 against 1.20.1.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import stats

# runs in the other environment: it needs only numpy and onnxruntime there
WORKER = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
shape = [int(d) for d in sys.argv[4].split(",")]
so = ort.SessionOptions()
so.intra_op_num_threads = threads
session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(10):
    session.run(None, {name: batch})
fastest, end = [], time.perf_counter() + seconds
while time.perf_counter() < end:
    block, started = [], time.perf_counter()
    while time.perf_counter() - started < 0.05:
        t0 = time.perf_counter()
        session.run(None, {name: batch})
        block.append(time.perf_counter() - t0)
    fastest.append(min(block) * 1e3)
print(json.dumps({"version": ort.__version__, "fastest_ms": fastest}))
"""


@dataclass
class ProcessPairs:
    """The per-process figures of one ONNX file in two environments, and their verdict."""

    onnx: Path
    a_ms: list[float] = field(default_factory=list)
    b_ms: list[float] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def estimate(self, alpha: float) -> stats.Estimate | None:
        return stats.paired(self.a_ms, self.b_ms, alpha)

    def spreads(self) -> dict[str, float]:
        """Between-process sd of each side and of the per-pair log ratio (fractions)."""
        a, b = np.log(self.a_ms), np.log(self.b_ms)
        return {"a": _sd(a), "b": _sd(b), "pair": _sd(b - a)}


def _sd(logs: np.ndarray) -> float:
    return float(np.std(logs, ddof=1)) if len(logs) > 1 else float("nan")


def worker(python: str, onnx: Path, seconds: float, threads: int,
           shape: tuple[int, ...]) -> dict:
    """One worker process of ``python`` timing ``onnx``; an environment that cannot run it is
    an ``InputError`` naming the interpreter and its last error line."""
    try:
        done = subprocess.run([python, "-c", WORKER, str(onnx), str(seconds), str(threads),
                               ",".join(map(str, shape))],
                              capture_output=True, text=True, timeout=max(120.0, 20 * seconds))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"{python}: the worker could not run ({exc})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputError(f"{python}: the worker failed timing {onnx.name}: {last} (it needs "
                         "numpy and onnxruntime in that environment)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_pairs(onnx: Path, python_a: str, python_b: str, processes: int, seconds: float,
               threads: int, shape: tuple[int, ...],
               say: Callable[[str], None] | None = None) -> ProcessPairs:
    """``processes`` workers a side, alternately (ABBA: neither side always first)."""
    out = ProcessPairs(onnx)
    for i in range(processes):
        for side in (("a", "b") if i % 2 == 0 else ("b", "a")):
            got = worker(python_a if side == "a" else python_b, onnx, seconds, threads, shape)
            out.versions[side] = str(got["version"])
            (out.a_ms if side == "a" else out.b_ms).append(float(np.median(got["fastest_ms"])))
        if say is not None:
            say(f"  pair {i + 1} of {processes}: A {out.a_ms[-1]:.3f} ms, "
                f"B {out.b_ms[-1]:.3f} ms")
    return out
