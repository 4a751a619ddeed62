"""``torch`` (W_default): PyTorch eager inference in FP32, BF16 (CPU and CUDA) or FP16 (CUDA)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.base import state_dict_bytes
from .base import BuildContext, Engine, register_workflow, unsupported

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_runner(module: nn.Module, dtype: torch.dtype, device: str):
    """A synchronised numpy -> numpy call of ``module`` under inference mode."""
    cuda = device.startswith("cuda")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device=device, dtype=dtype, non_blocking=cuda)
            out = module(x)
            out = out.float().cpu() if cuda or out.dtype != torch.float32 else out
            return out.numpy()

    return run


def dtype_shares(module: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    """Share of conv / linear parameters held in ``dtype``, with a per-op-type breakdown."""
    per_type: dict[str, list[int]] = {}
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            n = m.weight.numel()
            hit, total = per_type.setdefault(type(m).__name__, [0, 0])
            per_type[type(m).__name__] = [hit + (n if m.weight.dtype == dtype else 0), total + n]
    hit = sum(h for h, _ in per_type.values())
    total = sum(t for _, t in per_type.values())
    return {"precision_engaged": hit / total if total else 0.0,
            "precision_by_op": {k: h / t for k, (h, t) in per_type.items() if t}}


class TorchEager:
    name = "torch"
    precisions = frozenset({"fp32", "fp16", "bf16"})

    def check(self, precision: str, device: str) -> str | None:
        if precision == "int8":
            return ("workflow 'torch' (eager) has no INT8 kernels for conv nets; "
                    "use 'inductor' (torchao PT2E) or 'ort' for INT8")
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        if precision == "fp16" and not device.startswith("cuda"):
            return "FP16 eager convolutions need CUDA; this run is on CPU"
        if precision == "bf16" and device == "cpu" and not torch.backends.mkldnn.is_available():
            return "BF16 on CPU needs oneDNN (mkldnn), which this torch build lacks"
        return None

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        torch.set_num_threads(ctx.threads)
        # .to() converts in place: work on a copy so the caller's model keeps its dtype.
        module = copy.deepcopy(model).to(device=ctx.device, dtype=DTYPES[precision]).eval()
        facts = {"provider": f"torch-eager-{ctx.device}", "model_bytes": len(state_dict_bytes(module)),
                 "build_seconds": 0.0, **dtype_shares(module, DTYPES[precision])}
        return Engine(torch_runner(module, DTYPES[precision], ctx.device), facts)


register_workflow(TorchEager())
