"""torch -> ONNX export shared by the ONNX Runtime and ONNX -> TensorRT workflows.

Export (dynamo exporter, dynamic batch axis) -> ``onnx.checker.check_model`` -> a numerical
parity check of ONNX Runtime against torch on real inputs. An export that does not reproduce the
model is an error, not a benchmark.
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .base import BuildContext

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportParityError(AssertionError):
    pass


def export_onnx(model: nn.Module, example: np.ndarray, path: Path) -> None:
    model = copy.deepcopy(model).float().eval().cpu()
    x = torch.from_numpy(np.ascontiguousarray(example[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                              external_data=False)
        except Exception:  # noqa: BLE001 - some graphs only export with the TorchScript exporter
            torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: scale-free, so one tolerance fits logits and box regressions."""
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale


def check_export_parity(model: nn.Module, path: Path, inputs: np.ndarray,
                        tolerance: float = 1e-3) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: inputs})[0]
    with torch.inference_mode():
        want = copy.deepcopy(model).float().eval()(torch.from_numpy(inputs)).numpy()
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

    if ctx.cache is None:
        assert ctx.workdir is not None, "BuildContext needs a cache or a workdir"
        meta = build(ctx.workdir)
        return ctx.workdir / "model.onnx", {**meta, "export_cache_hit": False}
    key = ctx.cache.key("onnx", {"model": ctx.model_key, "opset": OPSET,
                                 "input": list(example.shape[1:])})
    entry = ctx.cache.get_or_build("onnx", key, build)
    return entry.file("model.onnx"), {**entry.meta, "export_cache_hit": entry.hit}
