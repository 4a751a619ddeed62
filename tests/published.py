"""State dicts in the published layouts, built here (no weights can be downloaded): the key,
shape and dtype lists of ``tests/data/published_layouts.json`` (written by
``tests/data/make_published_layouts.py`` from torchvision's, Ultralytics' and YOLOv5's own
model definitions), filled with deterministic values; and the published models' outputs for
those values on a fixed input, to compare the zoo's outputs against."""

from __future__ import annotations

import json
import math
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import torch

LAYOUTS = Path(__file__).parent / "data" / "published_layouts.json"
SIZE = 64  # pixels of the reference input


@cache
def layouts() -> dict[str, Any]:
    return json.loads(LAYOUTS.read_text())


def fill(key: str, shape: list[int], dtype: str) -> torch.Tensor:
    """A value for ``key`` that depends on its name only: BatchNorm statistics and scales near
    1, weights of variance 1 / fan-in (activations stay finite through 50+ layers)."""
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.long)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if leaf in ("running_mean", "bias"):
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "weight" and len(shape) == 1:  # BatchNorm scale
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if leaf == "weight":
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    raise KeyError(f"no rule for {key}: give it as a fixed value")


def published_state(name: str) -> dict[str, torch.Tensor]:
    """The published state dict of ``name`` (its keys, shapes, dtypes, in its order) filled by
    :func:`fill`; fixed buffers (YOLOv5's anchors, YOLOv8's DFL bins) as published."""
    layout = {**layouts()["models"], **layouts()["others"]}[name]
    fixed = layout.get("fixed", {})
    return {key: (torch.tensor(fixed[key], dtype=torch.float32) if key in fixed
                  else fill(key, shape, dtype))
            for key, shape, dtype in layout["keys"]}


def reference_input() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def sample_rows(rows: int, count: int = 12) -> list[int]:
    """Evenly spread row indices (the same in the generator and the tests)."""
    return sorted({round(i * (rows - 1) / (count - 1)) for i in range(count)})
