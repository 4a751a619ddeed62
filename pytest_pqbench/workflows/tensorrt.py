"""TensorRT helpers both TensorRT workflows (``onnx-trt``, ``torch-trt``) use: what is missing
on this host, the optimization profiles, the engine's cache inputs, the timing cache's place,
which precision each layer runs in (TensorRT's engine inspector), and the engine facts.

Nothing here imports tensorrt at module level: it runs (and is tested) on hosts without it.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import PARITY_BATCH, cuda_available
from .precision import ComputeOp, engaged_summary

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


def gpu_name(device: str) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


def workspace_mb(options: Mapping[str, Any]) -> int:
    """The builder's workspace limit of the run (``--pqbench-trt-workspace-mb``)."""
    return int(options.get("trt_workspace_mb") or DEFAULT_WORKSPACE_MB)


def timing_cache_path(cache_root: Path, gpu: str, suffix: str) -> Path:
    """The builder timing cache shared by every engine built on this GPU model, per workflow."""
    path = cache_root / "tensorrt" / (gpu.replace(" ", "_") + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def engine_facts(provider: str, artefact: Path, built: Mapping[str, Any], hit: bool,
                 load_started: float, profiles: Sequence[Profile],
                 workspace: int) -> dict[str, Any]:
    """Facts of a TensorRT engine loaded from ``artefact``: its build seconds are the builder's
    (none on a cache hit) plus the load since ``load_started`` (``time.perf_counter``)."""
    return {"provider": provider, "model_bytes": artefact.stat().st_size,
            "build_seconds": (0.0 if hit else built.get("engine_build_seconds", 0.0))
            + time.perf_counter() - load_started, "engine_cache_hit": hit,
            "trt_profiles": [[list(s) for s in p] for p in profiles],
            "trt_workspace_mb": workspace}
