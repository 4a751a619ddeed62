"""``onnx-trt`` (W2): torch -> ONNX -> TensorRT builder, on an NVIDIA GPU.

The ONNX carries the precision (TensorRT 10/11, strongly typed networks): the FP32 export, the
FP16 conversion (``onnx_export.convert_fp16``), or explicit Q/DQ INT8 with symmetric activations
from ONNX Runtime's static quantizer, calibrated on the calibration split (implicit-calibration
``IInt8Calibrator`` is deprecated / removed, and not used). BF16 has no ONNX converter here: it
uses the weakly typed ``BuilderFlag.BF16`` where the TensorRT version still has it.

The engine has one optimization profile per batch size of the run (min = opt = max, so each
timed size runs kernels tuned for it and nothing rebuilds mid-measurement) plus a catch-all
profile for the parity and evaluation batches. It is serialized into the artefact cache, keyed
by model, precision, profiles, workspace, calibration, GPU and package versions, next to the
builder's timing cache (also shared across engines of the same GPU). Which precision each layer
runs in comes from TensorRT's engine inspector.

Nothing here imports tensorrt at module level: without it (or without a GPU) ``check`` returns
the reason and the case is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .base import BaseWorkflow, BuildContext, BuildCost, Engine, register_workflow, unsupported
from .onnx_export import precision_onnx
from .tensorrt import (
    Profile,
    engaged_from_inspector,
    engine_cache_inputs,
    engine_facts,
    gpu_name,
    missing_for_tensorrt,
    optimization_profiles,
    profile_index,
    timing_cache_path,
    workspace_mb,
)


# ---- GPU-only code below: runs where tensorrt and a GPU exist -------------------------------
def build_engine(onnx_path: Path, precision: str, profiles: Sequence[Profile],
                 workspace_mb: int, timing_cache: bytes = b"") -> tuple[bytes, bytes]:
    """Serialized engine and the updated timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: the ONNX's types (FP16 weights, Q/DQ) decide precision, not builder flags.
    strongly_typed = precision != "bf16"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if precision == "bf16":
        if not hasattr(trt.BuilderFlag, "BF16"):
            raise RuntimeError(f"TensorRT {trt.__version__} has no weakly typed BF16 flag; "
                               "onnx-trt bf16 needs TensorRT 10")
        config.set_flag(trt.BuilderFlag.BF16)
    config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False)
    input_name = network.get_input(0).name
    for lo, opt, hi in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from "
                           f"{onnx_path.name} (see the TensorRT log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


class TensorRTRunner:
    """numpy float32 in -> numpy float32 out through one execution context per profile."""

    def __init__(self, engine_bytes: bytes, profiles: Sequence[Profile], device: str) -> None:
        import tensorrt as trt
        import torch

        self.torch, self.device, self.profiles = torch, device, list(profiles)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names
                               if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if n != self.input_name)
        stream = torch.cuda.current_stream(device).cuda_stream
        self.contexts = []
        for i in range(len(self.profiles)):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(i, stream)
            self.contexts.append(context)
        torch.cuda.synchronize(device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        context = self.contexts[profile_index(self.profiles, len(batch))]
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(context.get_tensor_shape(self.output_name)),
                          dtype=torch.float32, device=self.device)
        context.set_tensor_address(self.input_name, x.data_ptr())
        context.set_tensor_address(self.output_name, out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return out.cpu().numpy()  # .cpu() waits for the stream: the call is synchronised

    def engine_information(self) -> str:
        import tensorrt as trt

        context = self.contexts[0]  # an exact profile: shapes are concrete, formats are shown
        lo = self.profiles[0][0]
        context.set_input_shape(self.input_name, lo)
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = context
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


class OnnxTensorRT(BaseWorkflow):
    name = "onnx-trt"
    precisions = frozenset({"fp32", "fp16", "bf16", "int8"})
    cost = BuildCost(build_s=120.0, export_s=6.0, calibrate_s={"int8": 4.0})

    def check(self, precision: str, device: str) -> str | None:
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        return missing_for_tensorrt(device, [("tensorrt", "tensorrt")])

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        from ..cache import atomic_write_bytes

        onnx_path, meta = precision_onnx(model, "fp32" if precision == "bf16" else precision,
                                         calibration, example, ctx, symmetric=True)
        profiles = optimization_profiles(ctx.batch_sizes, example.shape[1:])
        workspace = workspace_mb(ctx.options)
        gpu = gpu_name(ctx.device)
        shared_cache = timing_cache_path(ctx.cache.root, gpu, ".timing")

        def build(tmp: Path) -> dict[str, Any]:
            started = time.perf_counter()
            previous = shared_cache.read_bytes() if shared_cache.is_file() else b""
            engine, timing = build_engine(onnx_path, precision, profiles, workspace, previous)
            atomic_write_bytes(tmp / "engine.plan", engine)
            atomic_write_bytes(tmp / "timing.cache", timing)
            atomic_write_bytes(shared_cache, timing)
            return {"engine_build_seconds": time.perf_counter() - started}

        inputs = engine_cache_inputs(ctx.model_key, precision, profiles, workspace,
                                     ctx.options.get("calibration_key"),
                                     ctx.options.get("calibration_method"), gpu)
        entry = ctx.cache.get_or_build("trt-engine", ctx.cache.key("trt-engine", inputs), build)
        plan = entry.file("engine.plan")
        started = time.perf_counter()
        runner = TensorRTRunner(plan.read_bytes(), profiles, ctx.device)
        engaged = engaged_from_inspector(runner.engine_information(), precision)
        facts = {**engine_facts(f"tensorrt-{gpu}", plan, entry.meta, entry.hit, started,
                                profiles, workspace), **meta, **engaged}
        return Engine(runner, facts)


register_workflow(OnnxTensorRT())
