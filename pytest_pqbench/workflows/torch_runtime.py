"""What the torch-based workflows (``torch``, ``inductor``, ``torch-trt``) share: the dtype of
each precision, a synchronised numpy -> numpy call of a module, and whether this CPU computes
BF16 natively."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..environment import native_bf16

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "int8": torch.int8}


def torch_runner(module: nn.Module, dtype: torch.dtype,
                 device: str) -> Callable[[np.ndarray], np.ndarray]:
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
    if not native_bf16():
        return "this CPU has no native BF16 (AVX-512 BF16 or AMX): BF16 would only be emulated"
    return None
