"""A pytest plugin for the gate's calibration: a *real* slowdown planted in one case's model, so
that every artefact built from it (ONNX file, torch.export program, inductor compile) carries the
extra work. ``slowdown_plugin`` slows the built engine in memory, which an engine re-built from
its artefact (inductor and eager torch pair both sides from their artefacts) never sees.

``PQBENCH_PLANT_CASE=<case id> PQBENCH_PLANT_FACTOR=1.05 pytest benchmarks -p plant_model_plugin``:
the named case is built from ``Slowed(model, k)``, whose forward also runs the model on the
first ``k`` images of the batch and adds ``1e-12`` times the mean of that result (used, so no
compiler removes it; the outputs move by far less than any parity tolerance). ``k`` is chosen
once by timing the eager model on slices, so that the extra work costs about ``FACTOR - 1`` of a
call; the factor really reached is what the gate measures, never assumed.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

TARGET = os.environ.get("PQBENCH_PLANT_CASE", "")
FACTOR = float(os.environ.get("PQBENCH_PLANT_FACTOR", "1.0"))


class Slowed(nn.Module):
    """``model`` plus the same model on the first ``k`` images: a model with more work."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def extra_repr(self) -> str:  # part of the model's content hash: a new cache key
        return f"k={self.k}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out + 1e-12 * self.model(x[: self.k]).mean()


def choose_k(model: nn.Module, batch: np.ndarray, extra: float) -> int:
    """The number of leading images whose extra forward costs closest to ``extra`` of a call
    (eager timing, as ``slowdown_plugin`` chooses for an engine; the engine's own ratio is then
    measured by the gate)."""
    from slowdown_plugin import slice_for

    def run(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    return slice_for(run, batch, extra)


def pytest_configure(config) -> None:
    if not TARGET or FACTOR <= 1.0:
        return
    from pytest_pqbench.models.base import model_key
    from pytest_pqbench.stages.build import Builder
    from pytest_pqbench.stages.prepare import Pruned

    original = Builder._build

    def build(self, case):
        if case.id != TARGET:
            return original(self, case)
        pruned = self.prep.pruned(case)
        batch = self.prep.dataset(case).batch(case.batch_size)
        slow = Slowed(pruned.model, choose_k(pruned.model.eval(), batch, FACTOR - 1.0)).eval()
        planted = Pruned(slow, pruned.report, model_key(slow), pruned.recovery)
        real = self.prep.pruned
        self.prep.pruned = lambda c: planted if c.id == case.id else real(c)
        try:
            engine = original(self, case)
        finally:
            del self.prep.pruned  # the class's method again
        engine.facts["planted_slowdown"] = {"factor": FACTOR, "extra_images": slow.k,
                                            "where": "model"}
        return engine

    Builder._build = build
