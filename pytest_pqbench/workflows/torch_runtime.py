"""What the torch-based workflows (``torch``, ``inductor``, ``torch-trt``) share: the dtype of
each precision, a synchronised numpy -> numpy call of a module, and whether this CPU computes
BF16 natively."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..cache import file_sha256
from ..environment import native_bf16

if TYPE_CHECKING:
    from .base import BuildContext

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


def exported_artefact(module: nn.Module, precision: str, example: np.ndarray,
                      ctx: BuildContext, **key: Any) -> dict[str, Any] | None:
    """The module as a ``torch.export`` program with a dynamic batch dimension, in the artefact
    cache: what a later session loads to pair its engine with this one (``key``: what else the
    module depends on, e.g. its INT8 calibration). None when the model does not export (the
    comparison is then unpaired, and says so)."""
    dtype = DTYPES["fp32" if precision == "int8" else precision]

    def build(tmp: Path) -> dict[str, Any]:
        x = torch.from_numpy(example[:2]).to(device=ctx.device, dtype=dtype)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(tmp / "program.pt2"))
        return {}

    try:
        entry = ctx.cache.get_or_build(
            "torch-export", ctx.cache.key("torch-export", {"model": ctx.model_key,
                                                           "precision": precision,
                                                           "device": ctx.device, **key}), build)
    except Exception:  # a model torch.export cannot trace stays unpaired, not failed
        return None
    path = entry.file("program.pt2")
    return {"format": "torch.export", "path": str(path.resolve()), "sha256": file_sha256(path),
            "precision": precision}


def load_program(artefact: dict[str, Any], threads: int) -> nn.Module:
    """The module of a recorded ``torch.export`` program, checked against its sha256."""
    path = Path(str(artefact.get("path", "")))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the artefact cache any more")
    if file_sha256(path) != artefact.get("sha256"):
        raise ValueError(f"{path} no longer holds the run's program (sha256 differs)")
    if artefact.get("precision") == "int8":  # the PT2E quantize ops are torchao's
        import torchao.quantization.pt2e  # noqa: F401
    torch.set_num_threads(threads)
    return torch.export.load(str(path)).module()
