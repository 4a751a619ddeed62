"""torch -> ONNX export, and the ONNX precision conversions, shared by the ONNX Runtime and
ONNX -> TensorRT workflows.

Export (dynamo exporter, dynamic batch axis) -> ``onnx.checker.check_model`` -> a numerical
parity check of ONNX Runtime against torch on real inputs. An export that does not reproduce the
model is an error, not a benchmark. ``precision_onnx`` then derives the file that carries a
precision: FP16 by ONNX Runtime's converter, static INT8 (QDQ) by its quantizer, calibrated on
real images; every file is cached by model content.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..environment import int8_saturates
from ..errors import ExportParityError, NonFiniteOutput
from .base import CALIBRATION_METHODS, BuildContext, relative_error

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "output"


EXPORTER_REGISTRY_LOG = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """The logger ``name`` says only errors while the block runs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, example: np.ndarray, path: Path) -> None:
    model = copy.deepcopy(model).float().eval().cpu()
    x = torch.from_numpy(np.ascontiguousarray(example[:2]))
    # verbose=False: no "[torch.onnx] ... ✅" lines per step; the exporter's registry logs
    # that torchvision's operators are skipped (torchvision is not used here) on every export
    with warnings.catch_warnings(), quiet_logger(EXPORTER_REGISTRY_LOG):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                              external_data=False, verbose=False)
        except Exception:  # noqa: BLE001 - some graphs only export with the TorchScript exporter
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def check_export_parity(model: nn.Module, path: Path, inputs: np.ndarray,
                        tolerance: float = 1e-3) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: inputs})[0]
    with torch.inference_mode():
        want = copy.deepcopy(model).float().eval()(torch.from_numpy(inputs)).numpy()
    # NaN / Inf is not an export mismatch: say which side produced it (Bench adds the case id)
    for side, values in (("the torch model itself", want), ("ONNX Runtime", got)):
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise NonFiniteOutput(f"{side} produced {bad} NaN/Inf output values on "
                                  f"{len(inputs)} real inputs while checking the ONNX export")
    err = relative_error(got, want)
    if not err <= tolerance:
        raise ExportParityError(f"ONNX export does not match torch: max relative error {err:.3g} "
                                f"> {tolerance:g} on {len(inputs)} real inputs ({path.name})")
    return err


def exported_onnx(model: nn.Module, example: np.ndarray, ctx: BuildContext) -> tuple[Path, dict]:
    """The FP32 ONNX file for ``model`` (cached by model content), with export facts."""

    def build(tmp: Path) -> dict:
        started = time.perf_counter()
        export_onnx(model, example, tmp / "model.onnx")
        seconds = time.perf_counter() - started
        err = check_export_parity(model, tmp / "model.onnx", np.ascontiguousarray(example[:8]))
        return {"export_seconds": seconds, "export_parity_error": err}

    key = ctx.cache.key("onnx", {"model": ctx.model_key, "opset": OPSET,
                                 "input": list(example.shape[1:])})
    entry = ctx.cache.get_or_build("onnx", key, build)
    return entry.file("model.onnx"), {**entry.meta, "export_cache_hit": entry.hit}


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
                  method: str = "minmax", symmetric: bool = False,
                  reduce_range: bool = False) -> None:
    """Static QDQ INT8 with per-channel weights. ``symmetric``: signed INT8 activations with zero
    points 0, the explicit-quantization form TensorRT consumes (it rejects non-zero points).
    ``reduce_range``: 7-bit weights, for hosts whose U8S8 kernels saturate (no VNNI)."""
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
        reduce_range=reduce_range,
    )
    prepared.unlink(missing_ok=True)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """FP16 weights and compute, FP32 inputs / outputs (``keep_io_types``), so the engine
    contract (float32 in, float32 out) holds."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True),
              str(out_path))


def cached_onnx(ctx: BuildContext, kind: str, inputs: dict[str, Any],
                build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """``model.onnx`` derived from the exported model by ``build(dir)``, in the artefact cache."""
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

        path, meta = cached_onnx(ctx, "onnx-fp16", {}, build_fp16)
        return path, {**export_meta, **meta}
    method = ctx.options.get("calibration_method", "minmax")
    # U8S8 on a host without VNNI saturates in MLAS: 7-bit weights, and the key says so (an
    # artefact built for one kind of host is never served to the other).
    reduce_range = not symmetric and int8_saturates()

    def build_int8(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        quantize_int8(fp32_path, tmp / "model.onnx", calibration, method, symmetric,
                      reduce_range)
        return {"calibrate_seconds": time.perf_counter() - started}

    path, meta = cached_onnx(ctx, "onnx-int8-symmetric" if symmetric else "ort-int8",
                             {"method": method, "calibration": ctx.options.get("calibration_key"),
                              "reduce_range": reduce_range},
                             build_int8)
    return path, {**export_meta, **meta, "calibration_method": method,
                  "int8_reduce_range": reduce_range}
