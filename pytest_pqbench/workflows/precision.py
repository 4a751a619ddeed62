"""Which precision an engine actually runs in: one summary shared by every workflow.

Each workflow lists its compute ops (convolutions, matrix products) as ``ComputeOp`` values read
from what really executes (ONNX Runtime's optimized graph, the code torch.compile generated, a
TensorRT engine's inspector, torch parameter dtypes) and ``engaged_summary`` turns them into:

- ``precision_engaged``: share of compute that runs in the requested precision (0..1);
- ``precision_by_op``: ``"<op type>@<precision it runs in>" -> share of compute``, summing to 1;
- ``precision_engaged_basis``: what "compute" is weighted by (``macs``, ``weight_elements`` when
  the executed graph has no shapes, ``nodes`` when only kernel calls can be counted).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

BASES = ("macs", "weight_elements", "nodes")
# ONNX TensorProto element types -> precision names (uint8 / int8 both run integer kernels).
ONNX_PRECISIONS = {1: "fp32", 10: "fp16", 16: "bf16", 3: "int8", 2: "int8", 11: "fp64",
                   17: "fp8", 18: "fp8", 19: "fp8", 20: "fp8"}
TORCH_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                    torch.int8: "int8", torch.uint8: "int8", torch.float64: "fp64"}


@dataclass(frozen=True)
class ComputeOp:
    op_type: str
    runs_in: str  # the precision the op's kernel computes in
    weight: float  # MACs, weight elements or 1, per the summary's basis


def engaged_summary(ops: Iterable[ComputeOp], requested: str, basis: str) -> dict[str, Any]:
    assert basis in BASES, basis
    ops = list(ops)
    total = float(sum(op.weight for op in ops))
    by_op: dict[str, float] = {}
    for op in ops:
        key = f"{op.op_type}@{op.runs_in}"
        by_op[key] = by_op.get(key, 0.0) + op.weight / total if total else 0.0
    engaged = sum(op.weight for op in ops if op.runs_in == requested) / total if total else 0.0
    return {"precision_engaged": engaged, "precision_by_op": dict(sorted(by_op.items())),
            "precision_engaged_basis": basis}


def layer_macs(model: nn.Module, example: np.ndarray) -> dict[str, int]:
    """MACs per conv / linear layer (by module name) for one image, measured with forward hooks
    on a float32 copy (shapes, not dtypes, decide MACs)."""
    import copy

    model = copy.deepcopy(model).float().eval().cpu()
    macs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            def hook(m: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                per_output = m.weight[0].numel()  # cin/groups * kh * kw, or in_features
                macs[name] = int(out[0].numel()) * per_output
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(example[:1], dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return macs


def module_ops(module: nn.Module, macs: dict[str, int]) -> Sequence[ComputeOp]:
    """Conv / linear layers of an eager module, each running in its weight's dtype (eager torch
    computes a conv in the dtype of its operands, which the engine casts to the weight's)."""
    return [ComputeOp(type(m).__name__, TORCH_PRECISIONS.get(m.weight.dtype, str(m.weight.dtype)),
                      macs.get(name, m.weight.numel()))
            for name, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
