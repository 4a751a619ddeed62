"""``torch`` (W_default): PyTorch eager inference in FP32, BF16 (CPU and CUDA) or FP16 (CUDA)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..models.base import state_dict_bytes
from .base import BuildContext, Engine, register_workflow, unsupported
from .precision import engaged_summary, layer_macs, module_ops

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


def cpu_bf16_reason() -> str | None:
    """None when this CPU computes BF16 natively (AVX-512 BF16 / AMX through oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return "BF16 on CPU needs oneDNN (mkldnn), which this torch build lacks"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no native BF16 (AVX-512 BF16 or AMX): BF16 would only be emulated"
    return None


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
        if precision == "bf16" and device == "cpu":
            return cpu_bf16_reason()
        return None

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        torch.set_num_threads(ctx.threads)
        started = time.perf_counter()
        # .to() converts in place: work on a copy so the caller's model keeps its dtype.
        module = copy.deepcopy(model).to(device=ctx.device, dtype=DTYPES[precision]).eval()
        engaged = engaged_summary(module_ops(module, layer_macs(model, example)), precision,
                                  "macs")
        facts = {"provider": f"torch-eager-{ctx.device}",
                 "model_bytes": len(state_dict_bytes(module)),
                 "build_seconds": time.perf_counter() - started, **engaged,
                 "int8_mac_share": 0.0, "int8_coverage_basis": "macs", "qdq_pairs": 0}
        return Engine(torch_runner(module, DTYPES[precision], ctx.device), facts)


register_workflow(TorchEager())
