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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from ..cache import file_sha256
from .base import (
    BaseWorkflow,
    BuildContext,
    BuildCost,
    Engine,
    cuda_available,
    register_workflow,
    unsupported,
)
from .coverage import ort_coverage
from .onnx_export import INPUT_NAME, precision_onnx
from .precision import ONNX_PRECISIONS, ComputeOp, engaged_summary

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# Compute ops and their integer forms in an optimized ONNX Runtime graph.
FLOAT_COMPUTE = {"Conv", "FusedConv", "MatMul", "Gemm", "FusedGemm", "FusedMatMul",
                 "NhwcFusedConv"}
INT8_COMPUTE = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                "NhwcQLinearConv", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


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


class OnnxRuntime(BaseWorkflow):
    name = "ort"
    portable = True
    precisions = frozenset({"fp32", "fp16", "int8"})
    cost = BuildCost(build_s=2.0, export_s=6.0, calibrate_s={"int8": 4.0})
    # a baseline's ONNX file runs here unchanged: pairing is fair unless the runtime changed
    runtime_packages = ("onnxruntime", "onnxruntime-gpu")

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
                 "artefact": portable_artefact(path, session.get_providers()),
                 **meta, **engaged}
        return Engine(run, facts)

    def load_portable(self, artefact: dict[str, Any], threads: int, device: str) -> Engine:
        """An engine from a run's recorded ``artefact`` (``pqbench`` pairs a baseline with the
        candidate this way): the same ONNX file, checked by its sha256, in a new session."""
        import onnxruntime as ort

        path = Path(str(artefact.get("path", "")))
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not in the artefact cache any more")
        if file_sha256(path) != artefact.get("sha256"):
            raise ValueError(f"{path} no longer holds the baseline's model (sha256 differs)")
        available = ort.get_available_providers()
        providers = [p for p in artefact.get("providers") or [] if p in available]
        session = ort.InferenceSession(str(path), session_options(threads),
                                       providers=providers or choose_providers(device, available))
        output_names = [o.name for o in session.get_outputs()][:1]

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(output_names, {INPUT_NAME: batch})[0]

        return Engine(run, {"provider": session.get_providers()[0], "artefact": artefact})


def portable_artefact(path: Path, providers: Sequence[str]) -> dict[str, Any]:
    """What a later session needs to run this engine again without this code: the file, its
    hash and the providers."""
    return {"format": "onnx", "path": str(path.resolve()), "sha256": file_sha256(path),
            "providers": list(providers)}


register_workflow(OnnxRuntime())
