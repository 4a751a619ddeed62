"""A pytest plugin for the gate's calibration (``gate_calibration.py``): it plants a *real*
slowdown in one case's engine, never a rescaled figure.

``PQBENCH_SLOW_CASE=<case id> PQBENCH_SLOW_FACTOR=1.05 pytest benchmarks -p slowdown_plugin``:
the named case's engine, after its build, also runs itself on the first ``k`` images of every
batch it is given, with ``k`` chosen once (by timing the engine on slices, in interleaved
blocks) so that the extra work costs about ``FACTOR - 1`` of a call. The extra call is the same
model on a few more images: what a model variant with a few percent more work does. The planted
factor that was actually reached is measured by the calibration script, not assumed.
"""

from __future__ import annotations

import os

import numpy as np

from pytest_pqbench.stages.timing import time_calls

TARGET = os.environ.get("PQBENCH_SLOW_CASE", "")
FACTOR = float(os.environ.get("PQBENCH_SLOW_FACTOR", "1.0"))


def slice_for(engine, batch: np.ndarray, extra: float) -> int:
    """The number of leading images whose extra call costs closest to ``extra`` of a call."""
    full = float(np.median([np.median(time_calls(engine, batch, 15)) for _ in range(3)]))
    best, best_gap = 1, float("inf")
    for k in range(1, len(batch)):
        cost = float(np.median(time_calls(engine, batch[:k], 15))) / full
        if abs(cost - extra) < best_gap:
            best, best_gap = k, abs(cost - extra)
        if cost > extra:
            break
    return best


def pytest_configure(config) -> None:
    if not TARGET or FACTOR <= 1.0:
        return
    from pytest_pqbench.stages.build import Builder

    original = Builder.engine

    def engine(self, case):
        built = original(self, case)
        if case.id != TARGET or getattr(built, "slowed", False):
            return built
        batch = self.prep.dataset(case).batch(case.batch_size)
        k = slice_for(built, batch, FACTOR - 1.0)
        run = built._run

        def slower(x: np.ndarray) -> np.ndarray:
            out = run(x)
            run(x[:k])  # real extra work: the same model on k more images
            return out

        built._run = slower
        built.slowed = True
        built.facts["planted_slowdown"] = {"factor": FACTOR, "extra_images": k}
        return built

    Builder.engine = engine
