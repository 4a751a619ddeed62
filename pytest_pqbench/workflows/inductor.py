"""``inductor``: torch.compile (inductor, freezing on) in FP32 / BF16 / FP16, and INT8 on CPU
through torchao PT2E: ``torch.export`` -> ``prepare_pt2e`` with the X86 inductor quantizer ->
calibration on real images of the calibration split -> ``convert_pt2e`` -> torch.compile, which
lowers the Q/DQ patterns to oneDNN INT8 kernels.

Compilation happens once per engine, in ``build``: every batch size of the run (and the parity
batch) is called once there, so no compilation lands in a timed round; its seconds are
``compile_seconds`` (part of ``build_seconds`` and of the record's ``prep_seconds``). Inductor's
own cache lives under the artefact cache, so a second process compiles faster.

Which precision ran: for INT8 the kernels in the code inductor generated are counted (INT8 oneDNN
calls vs float convolutions / matmuls). Without ``freezing`` inductor silently runs the
dequantized graph in FP32; this count is what shows it.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import operator
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.base import state_dict_bytes
from .base import (
    PARITY_BATCH,
    BaseWorkflow,
    BuildContext,
    BuildCost,
    Engine,
    register_workflow,
    unsupported,
)
from .coverage import inductor_coverage
from .precision import ComputeOp, engaged_summary, layer_macs, module_ops
from .torch_runtime import DTYPES, cpu_bf16_reason, torch_runner

# Calls in inductor's generated wrapper code, e.g. ``torch.ops.onednn.qconv_pointwise.tensor(``
# or ``extern_kernels.convolution(``.
KERNEL_CALL = re.compile(r"\b(torch\.ops\.\w+\.\w+|extern_kernels\.\w+)[\w.]*\(")
FLOAT_KERNELS = {"convolution", "_convolution", "mm", "addmm", "bmm", "baddbmm",
                 "_convolution_pointwise", "_linear_pointwise", "_mkl_linear", "linear"}


def kernel_ops(code: str, float_precision: str = "fp32") -> list[ComputeOp]:
    """Compute kernels called by inductor's generated code, one ComputeOp per call site."""
    ops = []
    for line in code.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for call in KERNEL_CALL.findall(line):
            namespace, _, name = call.rpartition(".")
            namespace = namespace.removeprefix("torch.ops.")
            if namespace == "quantized" or (namespace == "onednn" and name.startswith("q")):
                ops.append(ComputeOp(f"{namespace}.{name}", "int8", 1))
            elif name in FLOAT_KERNELS:
                ops.append(ComputeOp(f"{namespace}.{name}", float_precision, 1))
    return ops


# --pqbench-calibration-method -> the activation observer of the X86 inductor quantizer. Its
# default is HistogramObserver (not offered here); entropy and percentile have no PT2E observer.
OBSERVERS = {"minmax": "MinMaxObserver"}


def unsupported_method(method: str) -> str | None:
    if method in OBSERVERS:
        return None
    return (f"inductor INT8 cannot calibrate with {method!r}: the X86 inductor quantizer's "
            f"activation observers offered here are {', '.join(sorted(OBSERVERS))}; use the "
            f"ort workflow for {method}, or --pqbench-calibration-method minmax")


def quantization_config(method: str = "minmax") -> Any:
    """The X86 inductor quantizer's default config (uint8 per-tensor activations, int8
    per-channel symmetric weights) with the activation observer of ``method``."""
    import dataclasses

    from torchao.quantization.pt2e import observer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config()
    make = getattr(observer, OBSERVERS[method]).with_args(eps=2 ** -12)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=make)
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def quantize_pt2e(model: nn.Module, calibration: Sequence[np.ndarray],
                  example: np.ndarray, method: str = "minmax") -> nn.Module:
    """Static INT8 (X86 inductor quantizer: per-tensor activations observed by ``method``,
    per-channel weights), calibrated on ``calibration``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    x = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32))
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(copy.deepcopy(model).float().eval(), (x,),
                                dynamic_shapes={"x": {0: batch}}).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(quantization_config(method))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for images in calibration:
            prepared(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    return convert_pt2e(prepared)


class Inductor(BaseWorkflow):
    name = "inductor"
    precisions = frozenset({"fp32", "fp16", "bf16", "int8"})
    cost = BuildCost(build_s=40.0, calibrate_s={"int8": 4.0})

    def check(self, precision: str, device: str) -> str | None:
        if precision not in self.precisions:
            return unsupported(self.name, precision, self.precisions)
        cuda = device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            return f"device {device!r} requested but no CUDA GPU is visible"
        if precision == "fp16" and not cuda:
            return "FP16 convolutions need CUDA; this run is on CPU"
        if precision == "bf16" and not cuda:
            return cpu_bf16_reason()
        if precision == "int8":
            if cuda:
                return ("inductor INT8 (torchao PT2E, X86 inductor quantizer) runs on CPU; "
                        "use --pqbench-device cpu, or torch-trt / onnx-trt for GPU INT8")
            # find_spec, not import: importing torchao at collection costs seconds and logs
            if importlib.util.find_spec("torchao") is None:
                return "torchao (PT2E quantization) is not installed"
        return None

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        # no public route to the generated code (what the INT8 coverage is read from), nor
        # to freezing that lowers INT8 (see below): torch._inductor.utils and .config are
        # listed in docs, "Private APIs still used"
        from torch._inductor import config as inductor_config
        from torch._inductor.utils import run_and_get_code

        # inductor's FX-graph / kernel cache next to our artefacts
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ctx.cache.root / "inductor"))
        torch.set_num_threads(ctx.threads)
        method = ctx.options.get("calibration_method", "minmax")
        if precision == "int8" and unsupported_method(method):
            import pytest  # a skip with its reason, as for any combination that cannot run

            pytest.skip(unsupported_method(method))
        started = time.perf_counter()
        if precision == "int8":
            module = quantize_pt2e(model, calibration, example, method)
            dtype = torch.float32
        else:
            dtype = DTYPES[precision]
            module = copy.deepcopy(model).to(device=ctx.device, dtype=dtype).eval()
        prepare_seconds = time.perf_counter() - started
        # Only the batch varies; the image size is fixed per engine. dynamic=True alone makes
        # H and W symbolic too, and then freezing's output-layout pass (torch 2.13) fails on
        # yolov5s, pruned or not: its output stride 9*Max(1, 3*(((H//2) - 1)//16 + 1)**2 + ...)
        # cannot be rebuilt by Graph.materialize_symints (one term gets no meta value, then
        # sym_max(1, None) raises AssertionError). So every call marks C, H, W static (about
        # 2 us a call); a later recompile, e.g. for a batch size not compiled here, too.
        # Freezing folds weights into constants: required for the INT8 lowering to oneDNN
        # kernels and an inference win for float too. It is read at compile time, so every
        # size is compiled here, under the patch. (torch.compile(options={"freezing": True}),
        # the public route, fails every INT8 build on torch 2.13: onednn::qconv_prepack "with
        # Meta tensors, but there was no fake impl", tests/test_user_kinds.py.)
        compiled = torch.compile(module, dynamic=True)
        run = torch_runner(_static_image(compiled), dtype, ctx.device)
        sizes = sorted(set(ctx.batch_sizes) | {PARITY_BATCH})  # parity: no compile of its own
        started = time.perf_counter()
        with inductor_config.patch(freezing=True):
            _, codes = run_and_get_code(run, _batch(example, sizes[-1]))
            for size in sizes[:-1]:
                run(_batch(example, size))
        compile_seconds = time.perf_counter() - started
        if precision == "int8":
            kernels = kernel_ops("\n".join(codes))
            engaged = engaged_summary(kernels, precision, "nodes")
            engaged.update(inductor_coverage(
                module, "\n".join(codes), sum(k.runs_in == "int8" for k in kernels),
                quantization_config(method)))
        else:
            engaged = engaged_summary(module_ops(module, layer_macs(model, example)), precision,
                                      "macs")
            engaged.update(int8_mac_share=0.0, int8_coverage_basis="macs", qdq_pairs=0)
        facts: dict[str, Any] = {
            "provider": f"torch-inductor-{ctx.device}", "model_bytes": _module_bytes(module),
            "compile_seconds": compile_seconds, **engaged}
        if precision == "int8":
            # prep_seconds adds calibrate_seconds and build_seconds: each second counted once
            # the activation observer really used (the quantizer's own default is histogram)
            facts.update(build_seconds=compile_seconds, calibrate_seconds=prepare_seconds,
                         calibration_method=method)
        else:
            facts["build_seconds"] = prepare_seconds + compile_seconds
        return Engine(run, facts)


def _static_image(compiled: Any) -> Any:
    """``compiled`` called with every dimension but the batch marked static."""
    def call(x: torch.Tensor) -> Any:
        torch._dynamo.mark_static(x, list(range(1, x.dim())))
        return compiled(x)

    return call


def _batch(example: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(example))
    return np.ascontiguousarray(np.concatenate([example] * reps)[:size], dtype=np.float32)


def _module_bytes(module: nn.Module) -> int:
    """Serialized bytes of the tensors the module's graph uses. After ``convert_pt2e`` the
    state dict still holds the unused FP32 weights next to the INT8 ones the graph reads."""
    if not isinstance(module, torch.fx.GraphModule):
        return len(state_dict_bytes(module))
    used = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(module)
            if isinstance(value, torch.Tensor):
                used[node.target] = value
    buffer = io.BytesIO()
    torch.save(used, buffer)
    return len(buffer.getvalue())


register_workflow(Inductor())
