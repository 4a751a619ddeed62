"""``torch`` (W_default): PyTorch eager inference in FP32, BF16 (CPU and CUDA) or FP16 (CUDA)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.base import state_dict_bytes
from .base import BaseWorkflow, BuildContext, BuildCost, Engine, register_workflow, unsupported
from .precision import engaged_summary, layer_macs, module_ops
from .torch_runtime import DTYPES, cpu_bf16_reason, exported_artefact, load_program, torch_runner


class TorchEager(BaseWorkflow):
    name = "torch"
    portable = True
    precisions = frozenset({"fp32", "fp16", "bf16"})
    cost = BuildCost(build_s=0.2)  # a copy and a dtype cast; no calibration (no INT8)

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
        facts["artefact"] = exported_artefact(module, precision, example, ctx)
        return Engine(torch_runner(module, DTYPES[precision], ctx.device), facts)

    # Pairing (``phase``): eager code is not portable, so both sides of an A/B are timed as
    # exported programs (the baseline's and this run's), the same way: a fair pair.
    pair_both_from_artefacts = True
    runtime_packages = ("torch",)

    def load_portable(self, artefact: dict[str, Any], threads: int, device: str) -> Engine:
        """A run's recorded exported program (torch.export), loaded without its source code."""
        module = load_program(artefact, threads)
        dtype = DTYPES[str(artefact.get("precision", "fp32"))]
        return Engine(torch_runner(module, dtype, device), {"artefact": artefact})


register_workflow(TorchEager())
