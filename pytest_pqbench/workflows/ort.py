"""``ort`` (W1): ONNX Runtime. FP32, and static INT8 (QDQ, per-channel weights) calibrated on
real images of the calibration split through a ``CalibrationDataReader``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from .base import BuildContext, Engine, register_workflow, unsupported
from .onnx_export import INPUT_NAME, exported_onnx

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
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
                  method: str = "minmax") -> None:
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
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax,
                          "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[method],
    )
    prepared.unlink(missing_ok=True)


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


def weight_size(node: onnx.NodeProto, initializers: dict[str, int]) -> int:
    return max((initializers.get(name, 0) for name in node.input), default=0) or 1


def engaged_from_graph(path: Path, precision: str) -> dict[str, Any]:
    """Share of compute (weighted by weight elements) that runs in ``precision``, read from the
    optimized graph ONNX Runtime actually executes."""
    model = onnx.load(str(path))
    inits = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    by_type: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in FLOAT_COMPUTE | INT8_COMPUTE:
            by_type[node.op_type] = by_type.get(node.op_type, 0) + weight_size(node, inits)
    total = sum(by_type.values())
    hit = sum(v for k, v in by_type.items() if (k in INT8_COMPUTE) == (precision == "int8"))
    return {"precision_engaged": hit / total if total else 0.0,
            "precision_by_op": {k: v / total for k, v in by_type.items()} if total else {}}


class OnnxRuntime:
    name = "ort"
    precisions = frozenset({"fp32", "int8"})

    def check(self, precision: str, device: str) -> str | None:
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed"
        return None

    def providers(self, ctx: BuildContext) -> list[str]:
        import onnxruntime as ort

        forced = ctx.options.get("ort_providers")
        if forced:
            missing = [p for p in forced if p not in ort.get_available_providers()]
            if missing:
                raise ValueError(f"ONNX Runtime providers {missing} are not available; "
                                 f"available: {ort.get_available_providers()}")
            return list(forced)
        if ctx.device.startswith("cuda"):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def artefact(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
                 example: np.ndarray, ctx: BuildContext) -> tuple[Path, dict[str, Any]]:
        fp32_path, export_meta = exported_onnx(model, example, ctx)
        if precision == "fp32":
            return fp32_path, export_meta
        method = ctx.options.get("calibration_method", "minmax")

        def build(tmp: Path) -> dict[str, Any]:
            started = time.perf_counter()
            quantize_int8(fp32_path, tmp / "model.onnx", calibration, method)
            return {"calibrate_seconds": time.perf_counter() - started}

        if ctx.cache is None:
            assert ctx.workdir is not None, "BuildContext needs a cache or a workdir"
            int8_dir = ctx.workdir / "int8"
            int8_dir.mkdir(parents=True, exist_ok=True)
            return int8_dir / "model.onnx", {**export_meta, **build(int8_dir)}
        key = ctx.cache.key("ort-int8", {"model": ctx.model_key, "method": method,
                                         "calibration": ctx.options.get("calibration_key")})
        entry = ctx.cache.get_or_build("ort-int8", key, build)
        return entry.file("model.onnx"), {**export_meta, **entry.meta,
                                          "calibrate_cache_hit": entry.hit}

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        import tempfile

        import onnxruntime as ort

        path, meta = self.artefact(model, precision, calibration, example, ctx)
        providers = self.providers(ctx)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            session = ort.InferenceSession(str(path), session_options(ctx.threads, optimized),
                                           providers=providers)
            engaged = engaged_from_graph(optimized, precision)
        build_seconds = time.perf_counter() - started
        output_names = [o.name for o in session.get_outputs()][:1]

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(output_names, {INPUT_NAME: batch})[0]

        facts = {"provider": session.get_providers()[0], "model_bytes": path.stat().st_size,
                 "build_seconds": build_seconds, **meta, **engaged}
        if precision == "int8":
            facts["calibration_method"] = ctx.options.get("calibration_method", "minmax")
        return Engine(run, facts)


register_workflow(OnnxRuntime())
