"""``ort`` (W1): ONNX Runtime. FP32; FP16 (the exported model converted by ONNX Runtime's own
``float16`` converter, inputs and outputs kept FP32); static INT8 (QDQ, per-channel weights)
calibrated on real images of the calibration split (minmax, entropy or percentile).

The execution provider is chosen from those that can run here (CUDA only with a GPU; TensorRT
only when forced with ``--pqbench-ort-providers`` on a GPU) and recorded. Which precision ran is
read from the graph ONNX Runtime actually executes (``optimized_model_filepath``): on the CPU
provider an FP16 model's convolutions run in FP32 behind inserted casts, and say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from .base import BuildContext, Engine, cuda_available, register_workflow, unsupported
from .coverage import ort_coverage
from .onnx_export import INPUT_NAME, exported_onnx
from .precision import ONNX_PRECISIONS, ComputeOp, engaged_summary

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# Compute ops and their integer forms in an optimized ONNX Runtime graph.
FLOAT_COMPUTE = {"Conv", "FusedConv", "MatMul", "Gemm", "FusedGemm", "FusedMatMul",
                 "NhwcFusedConv"}
INT8_COMPUTE = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                "NhwcQLinearConv", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


class ImageReader:
    """CalibrationDataReader over real calibration batches (never random noise)."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Sequence[np.ndarray],
                  method: str = "minmax", symmetric: bool = False) -> None:
    """Static QDQ INT8 with per-channel weights. ``symmetric``: signed INT8 activations with zero
    points 0, the explicit-quantization form TensorRT consumes (it rejects non-zero points)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {CALIBRATION_METHODS}")
    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(out_path), ImageReader(calibration),
        quant_format=QuantFormat.QDQ, per_channel=True,
        # U8 activations x S8 weights: the fast path of MLAS on x86-64 (VNNI).
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax,
                          "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[method],
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    )
    prepared.unlink(missing_ok=True)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """FP16 weights and compute, FP32 inputs / outputs (``keep_io_types``), so the engine
    contract (float32 in, float32 out) holds."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True),
              str(out_path))


def cached_onnx(ctx: BuildContext, kind: str, folder_name: str, inputs: dict[str, Any],
                build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """``model.onnx`` derived from the exported model by ``build(dir)``, in the artefact cache
    (or ``<workdir>/<folder_name>`` when there is none)."""
    if ctx.cache is None:
        assert ctx.workdir is not None, "BuildContext needs a cache or a workdir"
        folder = ctx.workdir / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "model.onnx", {**build(folder), "calibrate_cache_hit": False}
    entry = ctx.cache.get_or_build(kind, ctx.cache.key(kind, {"model": ctx.model_key, **inputs}),
                                   build)
    return entry.file("model.onnx"), {**entry.meta, "calibrate_cache_hit": entry.hit}


def precision_onnx(model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
                   example: np.ndarray, ctx: BuildContext,
                   symmetric: bool = False) -> tuple[Path, dict[str, Any]]:
    """The ONNX file that carries ``precision`` (fp32 export, fp16 conversion, int8 QDQ)."""
    fp32_path, export_meta = exported_onnx(model, example, ctx)
    if precision == "fp32":
        return fp32_path, export_meta
    if precision == "fp16":
        def build_fp16(tmp: Path) -> dict[str, Any]:
            started = time.perf_counter()
            convert_fp16(fp32_path, tmp / "model.onnx")
            return {"convert_seconds": time.perf_counter() - started}

        path, meta = cached_onnx(ctx, "onnx-fp16", "fp16", {}, build_fp16)
        return path, {**export_meta, **meta}
    method = ctx.options.get("calibration_method", "minmax")

    def build_int8(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        quantize_int8(fp32_path, tmp / "model.onnx", calibration, method, symmetric)
        return {"calibrate_seconds": time.perf_counter() - started}

    path, meta = cached_onnx(ctx, "onnx-int8-symmetric" if symmetric else "ort-int8",
                             "int8-symmetric" if symmetric else "int8",
                             {"method": method, "calibration": ctx.options.get("calibration_key")},
                             build_int8)
    return path, {**export_meta, **meta, "calibration_method": method}


def session_options(threads: int, optimized_path: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # the optimized-model dump warns about NCHWc layouts: expected
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


def graph_ops(model: onnx.ModelProto) -> list[ComputeOp]:
    """Compute nodes of an (optimized) ONNX graph, each with the precision it computes in: INT8
    for the integer ops, else the element type of its weight initializer (ONNX Runtime folds the
    casts it inserts for kernels it lacks, so an FP16 conv run as FP32 has FP32 weights here).
    Weighted by weight elements: the optimized graph carries no activation shapes for MACs."""
    inits = {i.name: i for i in model.graph.initializer}
    ops = []
    for node in model.graph.node:
        if node.op_type not in FLOAT_COMPUTE | INT8_COMPUTE:
            continue
        weights = [inits[name] for name in node.input if name in inits]
        weight = max(weights, key=lambda t: int(np.prod(t.dims)), default=None)
        if node.op_type in INT8_COMPUTE:
            runs_in = "int8"
        elif weight is not None:
            runs_in = ONNX_PRECISIONS.get(weight.data_type, f"onnx-type-{weight.data_type}")
        else:
            runs_in = "unknown"
        ops.append(ComputeOp(node.op_type, runs_in,
                             int(np.prod(weight.dims)) if weight is not None else 1))
    return ops


def engaged_from_graph(path: Path, precision: str) -> dict[str, Any]:
    """``precision_engaged`` of the optimized graph ONNX Runtime actually executes."""
    return engaged_summary(graph_ops(onnx.load(str(path))), precision, "weight_elements")


def choose_providers(device: str, available: Sequence[str],
                     forced: Sequence[str] = ()) -> list[str]:
    """Execution providers for ``device``. GPU providers only with a GPU: onnxruntime-gpu lists
    them as available even on a machine without one."""
    if forced:
        missing = [p for p in forced if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime providers {missing} are not available; "
                             f"available: {list(available)}")
        on_gpu = [p for p in forced if p in GPU_PROVIDERS]
        if on_gpu and not device.startswith("cuda"):
            raise ValueError(f"ONNX Runtime providers {on_gpu} need a GPU; this run is on "
                             f"{device!r} (use CPUExecutionProvider)")
        return list(forced)
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    name = "ort"
    precisions = frozenset({"fp32", "fp16", "int8"})

    def check(self, precision: str, device: str) -> str | None:
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
        if device.startswith("cuda") and not cuda_available():
            return f"device {device!r} requested but no CUDA GPU is visible"
        return None

    def providers(self, ctx: BuildContext) -> list[str]:
        import onnxruntime as ort

        return choose_providers(ctx.device, ort.get_available_providers(),
                                ctx.options.get("ort_providers") or ())

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        import tempfile

        import onnxruntime as ort

        path, meta = precision_onnx(model, precision, calibration, example, ctx)
        providers = self.providers(ctx)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            session = ort.InferenceSession(str(path), session_options(ctx.threads, optimized),
                                           providers=providers)
            engaged = engaged_from_graph(optimized, precision)
            # INT8 coverage (share of MACs in INT8, Q/DQ left, format): why INT8 may be slow
            engaged.update(ort_coverage(path, optimized, providers, example, INPUT_NAME))
        build_seconds = time.perf_counter() - started
        output_names = [o.name for o in session.get_outputs()][:1]

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(output_names, {INPUT_NAME: batch})[0]

        facts = {"provider": session.get_providers()[0], "model_bytes": path.stat().st_size,
                 "build_seconds": build_seconds, "providers": session.get_providers(),
                 **meta, **engaged}
        return Engine(run, facts)


register_workflow(OnnxRuntime())
