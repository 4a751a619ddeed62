"""What running a build stage in a killable worker process costs (``pytest_pqbench.isolation``).

    python benchmarks/scripts/worker_cost.py --repeats 5

Under ``--pqbench-build-timeout`` the ONNX export, the FP16 conversion, the INT8 calibration and
torch.export of every case, and the first forward of every model, run in a forked child that the
limit kills. This script times, for the embedded ``shapes_resnet`` (trained model from the
artefact cache), the same ONNX export and parity check in this process and in a worker (under a
limit long enough never to fire), and a single forward both ways: the worker's extra cost is the
fork, the child's torch on one thread (GNU OpenMP's pool does not survive a fork) and the exit.
Medians of ``--repeats`` runs, in seconds. Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pytest_pqbench.config import Settings
from pytest_pqbench.isolation import isolated
from pytest_pqbench.stages.build import Builder
from pytest_pqbench.stages.limits import time_limit
from pytest_pqbench.workflows.onnx_export import check_export_parity, export_onnx


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", default=os.environ.get("PQBENCH_CACHE_DIR",
                                                               ".pqbench-cache"))
    args = parser.parse_args()
    settings = Settings.resolve({"pruners": "none", "workflows": "ort",
                                 "precisions": "fp32"}, {}, {})
    case = settings.cases()[0]
    builder = Builder.open(settings, args.cache_dir)
    model = builder.prep.trained(case).model
    example = builder.prep.example(case)
    folder = Path(tempfile.mkdtemp())

    def export() -> float:
        export_onnx(model, example, folder / "model.onnx")
        return check_export_parity(model, folder / "model.onnx",
                                   np.ascontiguousarray(example[:8]))

    def forward() -> None:
        with torch.inference_mode():
            model(torch.from_numpy(example))

    rows = []
    for name, fn in (("ONNX export + parity check", export), ("one forward", forward)):
        here = timed(fn, args.repeats)
        with time_limit(3600, "worker cost"):  # a limit makes isolated() fork
            there = timed(isolated(fn, name), args.repeats)
        rows.append((name, here, there))
    print(f"{'stage':<28} {'in-process s':>13} {'worker s':>9} {'extra s':>8}")
    for name, here, there in rows:
        print(f"{name:<28} {here:>13.3f} {there:>9.3f} {there - here:>8.3f}")
    print(f"torch threads in this process: {torch.get_num_threads()} (the worker: 1)")


if __name__ == "__main__":
    main()
