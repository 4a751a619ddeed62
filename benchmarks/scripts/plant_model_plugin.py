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

``PQBENCH_PLANT_KIND=matmul``: a finer plant for compiled programs, where one more image of a
batch of 32 already costs 12-18% (inductor runs that batch in about 4.5 ms). The case is built
from ``Widened(model, width)``, whose forward also multiplies the flattened batch by a fixed
``features x width`` matrix and adds ``1e-12`` times the mean (used, so no compiler removes it).
``width`` is continuous: the plugin first builds the case's real engine, times it, then times
the extra product in eager torch (one GEMM, the extern kernel inductor calls too) at growing
widths and takes the one costing ``FACTOR - 1`` of the engine's call.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

TARGET = os.environ.get("PQBENCH_PLANT_CASE", "")
FACTOR = float(os.environ.get("PQBENCH_PLANT_FACTOR", "1.0"))
KIND = os.environ.get("PQBENCH_PLANT_KIND", "model")


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


class Widened(nn.Module):
    """``model`` plus one ``features x width`` product of the flattened batch: a model with a
    continuously adjustable amount of extra work."""

    def __init__(self, model: nn.Module, features: int, width: int) -> None:
        super().__init__()
        self.model, self.width = model, width
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("extra", torch.randn(features, width, generator=generator))

    def extra_repr(self) -> str:  # part of the model's content hash: a new cache key
        return f"width={self.width}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out + 1e-12 * (x.flatten(1) @ self.extra).mean()


def choose_width(engine, batch: np.ndarray, extra: float) -> int:
    """The width whose extra product costs closest to ``extra`` of one call of ``engine``,
    both timed in interleaved blocks (medians of 15 calls, 3 blocks each)."""
    from pytest_pqbench.stages.timing import time_calls

    x = torch.from_numpy(batch).flatten(1)
    engine(batch)  # the first call compiles
    target = extra * float(np.median([np.median(time_calls(engine, batch, 15))
                                      for _ in range(3)]))

    def cost(width: int) -> float:
        w = torch.randn(x.shape[1], width)
        with torch.inference_mode():
            return float(np.median([np.median(time_calls(lambda _: x @ w, batch, 15))
                                    for _ in range(3)]))

    width, best, best_gap = 8, 8, float("inf")
    while width <= 1 << 16:
        gap = abs(cost(width) - target)
        if gap < best_gap:
            best, best_gap = width, gap
        elif gap > best_gap:
            break
        width = int(width * 1.25) + 1
    return best


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
        if KIND == "matmul":
            width = choose_width(original(self, case), batch, FACTOR - 1.0)
            slow = Widened(pruned.model, int(np.prod(batch.shape[1:])), width).eval()
        else:
            slow = Slowed(pruned.model, choose_k(pruned.model.eval(), batch, FACTOR - 1.0)).eval()
        planted = Pruned(slow, pruned.report, model_key(slow), pruned.recovery)
        real = self.prep.pruned
        self.prep.pruned = lambda c: planted if c.id == case.id else real(c)
        try:
            engine = original(self, case)
        finally:
            del self.prep.pruned  # the class's method again
        engine.facts["planted_slowdown"] = {
            "factor": FACTOR, "where": "model",
            **({"extra_width": slow.width} if KIND == "matmul" else {"extra_images": slow.k})}
        return engine

    Builder._build = build
