"""``torch-trt`` (W0): Torch-TensorRT, dynamo frontend (``torch.export`` -> TensorRT engines inside
a GraphModule), on an NVIDIA GPU. FP32 / FP16 / BF16 through ``enabled_precisions``; INT8 through
NVIDIA ModelOpt post-training quantization (``mtq.quantize`` with ``INT8_DEFAULT_CFG`` and a
calibration loop over the calibration split), which inserts explicit Q/DQ that TensorRT honours.

The input spec covers the run's batch sizes (min 1, opt the largest run size, max also covering
the parity batch), so no size rebuilds mid-measurement. The compiled program is saved into the
artefact cache (``torch_tensorrt.save``, ExportedProgram format) and loaded back from there.

Without torch_tensorrt / modelopt / a GPU, ``check`` names what is missing and the case skips.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import BaseWorkflow, BuildContext, BuildCost, Engine, register_workflow, unsupported
from .tensorrt import (
    engaged_from_inspector,
    engine_cache_inputs,
    engine_facts,
    gpu_name,
    missing_for_tensorrt,
    optimization_profiles,
    timing_cache_path,
    workspace_mb,
)
from .torch_runtime import DTYPES, torch_runner

REQUIRED = [("torch_tensorrt", "torch-tensorrt")]
REQUIRED_INT8 = [*REQUIRED, ("modelopt", "nvidia-modelopt (ModelOpt PTQ for INT8)")]


def modelopt_int8(module: nn.Module, calibration: Sequence[np.ndarray], device: str) -> nn.Module:
    """Insert calibrated INT8 Q/DQ (per-channel weights, per-tensor activations) with ModelOpt."""
    import modelopt.torch.quantization as mtq

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for images in calibration:
                model(torch.from_numpy(np.ascontiguousarray(images)).to(device))

    return mtq.quantize(module, mtq.INT8_DEFAULT_CFG, forward_loop)


def compile_trt(module: nn.Module, precision: str, example: np.ndarray,
                batch_sizes: Sequence[int], workspace_mb: int, timing_cache: Path,
                device: str) -> nn.Module:
    import torch_tensorrt

    (lo, opt, hi) = optimization_profiles(batch_sizes, example.shape[1:])[-1]  # the catch-all
    x = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32)).to(device)
    batch = torch.export.Dim("batch", min=lo[0], max=hi[0])
    export_mode: Any = contextlib.nullcontext()
    if precision == "int8":  # ModelOpt's quantizers export as Q/DQ only inside this mode
        from modelopt.torch.quantization.utils import export_torch_mode

        export_mode = export_torch_mode()
    with torch.no_grad(), export_mode:
        program = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}},
                                      strict=False)
        return torch_tensorrt.dynamo.compile(
            program, inputs=[torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi,
                                                  dtype=torch.float32)],
            enabled_precisions={DTYPES[precision]}, workspace_size=workspace_mb << 20,
            min_block_size=1, timing_cache_path=str(timing_cache))


def layer_information(module: nn.Module) -> dict[str, Any]:
    """Engine-inspector layers of every TensorRT submodule, merged."""
    import json

    layers: list[Any] = []
    for sub in module.modules():
        info = getattr(sub, "get_layer_info", None)
        if callable(info):
            text = info()
            layers.extend((json.loads(text) if isinstance(text, str) else text).get("Layers", []))
    return {"Layers": layers}


class TorchTensorRT(BaseWorkflow):
    name = "torch-trt"
    precisions = frozenset({"fp32", "fp16", "bf16", "int8"})
    cost = BuildCost(build_s=180.0, calibrate_s={"int8": 4.0})

    def check(self, precision: str, device: str) -> str | None:
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        return missing_for_tensorrt(device, REQUIRED_INT8 if precision == "int8" else REQUIRED)

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        import torch_tensorrt

        workspace = workspace_mb(ctx.options)
        gpu = gpu_name(ctx.device)
        timing_cache = timing_cache_path(ctx.cache.root, gpu, ".torch-trt.timing")
        x = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32)).to(ctx.device)

        def build(tmp: Path) -> dict[str, Any]:
            started = time.perf_counter()
            module = copy.deepcopy(model).float().eval().to(ctx.device)
            if precision == "int8":
                module = modelopt_int8(module, calibration, ctx.device)
            compiled = compile_trt(module, precision, example, ctx.batch_sizes, workspace,
                                   timing_cache, ctx.device)
            torch_tensorrt.save(compiled, str(tmp / "model.ep"), output_format="exported_program",
                                arg_inputs=[x])
            return {"engine_build_seconds": time.perf_counter() - started}

        profiles = optimization_profiles(ctx.batch_sizes, example.shape[1:])[-1:]
        inputs = engine_cache_inputs(ctx.model_key, precision, profiles, workspace,
                                     ctx.options.get("calibration_key"), "modelopt-max", gpu)
        entry = ctx.cache.get_or_build("torch-trt", ctx.cache.key("torch-trt", inputs), build)
        path = entry.file("model.ep")
        started = time.perf_counter()
        compiled = torch_tensorrt.load(str(path)).module()
        info = layer_information(compiled)
        engaged = (engaged_from_inspector(info, precision) if info["Layers"] else
                   {"precision_engaged": None, "precision_by_op": {},
                    "precision_engaged_basis": "unavailable"})
        facts = {**engine_facts(f"torch-tensorrt-{gpu}", path, entry.meta, entry.hit, started,
                                profiles, workspace), **engaged}
        if precision == "int8":
            facts["calibration_method"] = "modelopt-max"  # INT8_DEFAULT_CFG: max calibration
        return Engine(torch_runner(compiled, torch.float32, ctx.device), facts)


register_workflow(TorchTensorRT())
