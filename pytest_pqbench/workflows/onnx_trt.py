"""``onnx-trt`` (W2): torch -> ONNX -> TensorRT builder, on an NVIDIA GPU.

The ONNX carries the precision (TensorRT 10/11, strongly typed networks): the FP32 export, the
FP16 conversion (``ort.convert_fp16``), or explicit Q/DQ INT8 with symmetric activations from
ONNX Runtime's static quantizer, calibrated on the calibration split (implicit-calibration
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

import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .base import BuildContext, Engine, cuda_available, register_workflow, unsupported
from .precision import ComputeOp, engaged_summary

PARITY_BATCH = 16  # Bench.check_parity's batch size: the catch-all profile must cover it
DEFAULT_WORKSPACE_MB = 1024
Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # (min, opt, max) input shapes
# Engine-inspector layer kinds that do the compute, and datatype words -> precision names.
COMPUTE_PARAMETER_TYPES = {"Convolution", "Deconvolution", "FullyConnected", "MatrixMultiply",
                           "Gemm"}
DATATYPE_WORDS = (("int8", "int8"), ("fp8", "fp8"), ("bf16", "bf16"), ("fp16", "fp16"),
                  ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"))


def missing_for_tensorrt(device: str, modules: Sequence[tuple[str, str]]) -> str | None:
    """Why a TensorRT workflow cannot run here, naming every missing piece, or None.
    ``modules``: (import name, what to install) pairs."""
    missing = [f"{what} (`import {name}` fails)" for name, what in modules
               if importlib.util.find_spec(name.split(".")[0]) is None]
    if not cuda_available():
        missing.append("an NVIDIA GPU (torch sees no CUDA device)")
    elif not device.startswith("cuda"):
        missing.append(f"--pqbench-device cuda (this run is on {device!r})")
    if not missing:
        return None
    return "needs " + " and ".join(missing) + "; install with: pip install .[tensorrt]"


def optimization_profiles(batch_sizes: Sequence[int], image_shape: Sequence[int],
                          parity_batch: int = PARITY_BATCH) -> list[Profile]:
    """One exact profile per run batch size, then a catch-all 1..max profile (optimised for the
    largest run size) for parity, evaluation tails and any other size."""
    image = tuple(int(d) for d in image_shape)
    sizes = sorted({int(b) for b in batch_sizes})
    exact = [((b, *image),) * 3 for b in sizes]
    largest = max([*sizes, parity_batch])
    catch_all = ((1, *image), (max(sizes, default=1), *image), (largest, *image))
    return [*exact, catch_all]  # type: ignore[list-item]


def profile_index(profiles: Sequence[Profile], batch: int) -> int:
    """The exact profile for ``batch`` if there is one, else the first profile that covers it."""
    for i, (lo, _, hi) in enumerate(profiles):
        if lo[0] == hi[0] == batch:
            return i
    for i, (lo, _, hi) in enumerate(profiles):
        if lo[0] <= batch <= hi[0]:
            return i
    raise ValueError(f"batch size {batch} is outside every optimization profile "
                     f"({[(lo[0], hi[0]) for lo, _, hi in profiles]})")


def engine_cache_inputs(model_key: str, precision: str, profiles: Sequence[Profile],
                        workspace_mb: int, calibration_key: str | None,
                        calibration_method: str | None, gpu: str) -> dict[str, Any]:
    """Everything that changes the engine bytes (package versions are added by the cache)."""
    return {"model": model_key, "precision": precision,
            "profiles": [[list(s) for s in p] for p in profiles], "workspace_mb": workspace_mb,
            "calibration": calibration_key if precision == "int8" else None,
            "calibration_method": calibration_method if precision == "int8" else None,
            "gpu": gpu}


def _datatype(text: str) -> str:
    lowered = text.lower()
    return next((name for word, name in DATATYPE_WORDS if word in lowered), "unknown")


def inspector_ops(engine_information: str | dict[str, Any]) -> tuple[list[ComputeOp], str]:
    """Compute layers of a TensorRT engine-inspector JSON (ProfilingVerbosity.DETAILED), each in
    the datatype of its input activation; weighted by MACs when output shapes are known
    (weights x output positions), else by weight count. Returns (ops, basis)."""
    info = (json.loads(engine_information) if isinstance(engine_information, str)
            else engine_information)
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    rows = []
    for layer in layers:
        kind = layer.get("ParameterType") or layer.get("LayerType", "")
        if kind not in COMPUTE_PARAMETER_TYPES and not any(
                k in str(layer.get("LayerType", "")) for k in ("Convolution", "Gemm")):
            continue
        inputs = layer.get("Inputs") or [{}]
        runs_in = _datatype(str(inputs[0].get("Format/Datatype", "")))
        weights = int((layer.get("Weights") or {}).get("Count", 0)) or 1
        dims = ((layer.get("Outputs") or [{}])[0]).get("Dimensions") or []
        positions = int(np.prod(dims[2:])) if len(dims) >= 2 and min(dims) > 0 else None
        rows.append((str(kind), runs_in, weights, positions))
    if rows and all(p is not None for *_, p in rows):
        return [ComputeOp(k, r, w * p) for k, r, w, p in rows], "macs"
    return [ComputeOp(k, r, w) for k, r, w, _ in rows], "weight_elements"


def engaged_from_inspector(engine_information: str | dict[str, Any],
                           precision: str) -> dict[str, Any]:
    ops, basis = inspector_ops(engine_information)
    return engaged_summary(ops, precision, basis)


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


def gpu_name(device: str) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


class OnnxTensorRT:
    name = "onnx-trt"
    precisions = frozenset({"fp32", "fp16", "bf16", "int8"})

    def check(self, precision: str, device: str) -> str | None:
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        return missing_for_tensorrt(device, [("tensorrt", "tensorrt")])

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        from ..cache import atomic_write_bytes
        from .ort import precision_onnx

        onnx_path, meta = precision_onnx(model, "fp32" if precision == "bf16" else precision,
                                         calibration, example, ctx, symmetric=True)
        profiles = optimization_profiles(ctx.batch_sizes, example.shape[1:])
        workspace_mb = int(ctx.options.get("trt_workspace_mb") or DEFAULT_WORKSPACE_MB)
        gpu = gpu_name(ctx.device)
        shared_cache = (ctx.cache.root if ctx.cache else ctx.workdir) / "tensorrt" / (
            gpu.replace(" ", "_") + ".timing")

        def build(tmp: Path) -> dict[str, Any]:
            started = time.perf_counter()
            previous = shared_cache.read_bytes() if shared_cache.is_file() else b""
            engine, timing = build_engine(onnx_path, precision, profiles, workspace_mb, previous)
            atomic_write_bytes(tmp / "engine.plan", engine)
            atomic_write_bytes(tmp / "timing.cache", timing)
            atomic_write_bytes(shared_cache, timing)
            return {"engine_build_seconds": time.perf_counter() - started}

        inputs = engine_cache_inputs(ctx.model_key, precision, profiles, workspace_mb,
                                     ctx.options.get("calibration_key"),
                                     ctx.options.get("calibration_method"), gpu)
        if ctx.cache is None:
            folder = ctx.workdir / f"trt-{precision}"
            folder.mkdir(parents=True, exist_ok=True)
            built, plan = build(folder), folder / "engine.plan"
            hit = False
        else:
            entry = ctx.cache.get_or_build("trt-engine", ctx.cache.key("trt-engine", inputs), build)
            built, plan, hit = entry.meta, entry.file("engine.plan"), entry.hit
        started = time.perf_counter()
        runner = TensorRTRunner(plan.read_bytes(), profiles, ctx.device)
        engaged = engaged_from_inspector(runner.engine_information(), precision)
        facts = {"provider": f"tensorrt-{gpu}", "model_bytes": plan.stat().st_size,
                 "build_seconds": (0.0 if hit else built.get("engine_build_seconds", 0.0))
                 + time.perf_counter() - started,
                 "engine_cache_hit": hit, "trt_profiles": [[list(s) for s in p] for p in profiles],
                 "trt_workspace_mb": workspace_mb, **meta, **engaged}
        return Engine(runner, facts)


register_workflow(OnnxTensorRT())
