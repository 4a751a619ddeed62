"""INT8 coverage of an engine: why INT8 can be slower than FP32.

Three facts per engine, recorded in ``extra_info``:

- ``int8_mac_share``: the share of the model's multiply-accumulates (convolutions, matmuls) that
  run in INT8 kernels (0..1; 0.0 for a float engine).
- ``qdq_pairs``: quantize / dequantize steps left in the executed graph. Each marks a float
  island between INT8 kernels (activations such as hard-sigmoid, squeeze-excite multiplies,
  means) that costs a round trip int8 -> float -> int8. ONNX Runtime: ``min(#QuantizeLinear,
  #DequantizeLinear)`` in the optimized graph it executes. Inductor fuses Q/DQ into its kernels,
  so it counts the generated float kernels that end in a (re)quantize.
- ``quant_format``: how the INT8 model is expressed, read from the model itself, e.g.
  ``"QDQ per-channel U8S8"`` (ONNX QuantizeLinear / DequantizeLinear, uint8 activations, int8
  per-channel weights) or ``"QOperator U8S8"``.

``int8_coverage_basis`` says how the share was weighted (``macs``: per-node output shapes of
one profiled ONNX Runtime run, or the quantized FX graph's shapes for inductor;
``weight_elements`` when a profile was not available).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

# Compute ops by how their MACs follow from the weight: conv-like (weight [M, C/g, kh, kw]) and
# matmul-like (output's last dim is N).
CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "NhwcQLinearConv",
            "ConvInteger"}
INT8_OPS = {"QLinearConv", "NhwcQLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger",
            "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
MATMUL_OPS = {"MatMul", "Gemm", "FusedGemm", "FusedMatMul", "QLinearMatMul", "MatMulInteger",
              "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
ONNX_INT_TYPES = {onnx.TensorProto.UINT8: "U8", onnx.TensorProto.INT8: "S8"}


def _profile_shapes(model_path: Path, providers: Sequence[str], example: np.ndarray,
                    input_name: str) -> dict[str, list[int]]:
    """Output shape (batch 1) of every node ONNX Runtime executes, by node name, from one
    profiled run of the model (a separate session: profiling never touches the timed one)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), so, providers=list(providers))
        session.run(None, {input_name: np.ascontiguousarray(example[:1], dtype=np.float32)})
        events = json.loads(Path(session.end_profiling()).read_text())
    shapes = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            outputs = event.get("args", {}).get("output_type_shape") or []
            if outputs:
                shapes[name.removesuffix("_kernel_time")] = list(next(iter(outputs[0].values())))
    return shapes


def _node_macs(node: onnx.NodeProto, weight: onnx.TensorProto | None,
               out_shape: list[int] | None) -> float | None:
    if weight is None or not out_shape or not weight.dims:
        return None
    out_elements = float(np.prod(out_shape))
    weight_elements = float(np.prod(weight.dims))
    if node.op_type in CONV_OPS:
        return out_elements * weight_elements / max(1, weight.dims[0])
    return out_elements * weight_elements / max(1, out_shape[-1])


def ort_quant_format(model: onnx.ModelProto) -> str | None:
    """The INT8 form of an ONNX file (before ONNX Runtime's optimizations): QDQ or QOperator,
    per-channel or per-tensor weights, activation / weight integer types (U8S8 = uint8
    activations, int8 weights)."""
    nodes = list(model.graph.node)
    inits = {i.name: i for i in model.graph.initializer}
    quantize = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in nodes if n.op_type == "DequantizeLinear"]
    qoperator = [n for n in nodes if n.op_type.startswith("QLinear") or n.op_type == "QGemm"]
    if not quantize and not qoperator:
        return None
    form = "QDQ" if dequantize and not qoperator else "QOperator"
    act = next((ONNX_INT_TYPES[inits[n.input[2]].data_type] for n in quantize
                if len(n.input) > 2 and n.input[2] in inits
                and inits[n.input[2]].data_type in ONNX_INT_TYPES), None)
    # weights: 8-bit initializers dequantized into the weight input (input 1) of a conv /
    # matmul / gemm. Other 8-bit constants are quantized as activations (uint8): a layer scale
    # or a position embedding feeding an Add / Mul; reading those as weights labelled a
    # ConvNeXt or a ViT "U8U8" when every weight was int8.
    weight_inputs = {n.input[1] for n in nodes if n.op_type in CONV_OPS | MATMUL_OPS
                     and len(n.input) > 1}
    weight_dq = [n for n in dequantize if n.input and n.input[0] in inits
                 and inits[n.input[0]].data_type in ONNX_INT_TYPES
                 and n.output and n.output[0] in weight_inputs]
    if not weight_dq:  # QOperator, or no conv / matmul: any 8-bit initializer dequantized
        weight_dq = [n for n in dequantize if n.input and n.input[0] in inits
                     and inits[n.input[0]].data_type in ONNX_INT_TYPES]
    wtype = next((ONNX_INT_TYPES[inits[n.input[0]].data_type] for n in weight_dq), None)
    per_channel = any(len(n.input) > 1 and n.input[1] in inits
                      and int(np.prod(inits[n.input[1]].dims or [1])) > 1 for n in weight_dq)
    granularity = "per-channel" if per_channel else "per-tensor"
    return f"{form} {granularity} {act or '?'}{wtype or '?'}"


def ort_coverage(model_path: Path, optimized_path: Path, providers: Sequence[str],
                 example: np.ndarray, input_name: str) -> dict[str, Any]:
    """Coverage facts of an ONNX Runtime engine: ``model_path`` is the file it loaded,
    ``optimized_path`` the graph it executes (``optimized_model_filepath``)."""
    optimized = onnx.load(str(optimized_path))
    counts = {op: sum(1 for n in optimized.graph.node if n.op_type == op)
              for op in ("QuantizeLinear", "DequantizeLinear")}
    facts: dict[str, Any] = {"qdq_pairs": min(counts.values()),
                             "quant_format": ort_quant_format(onnx.load(str(model_path)))}
    if not any(n.op_type in INT8_OPS for n in optimized.graph.node):
        return {**facts, "int8_mac_share": 0.0, "int8_coverage_basis": "macs"}
    try:
        shapes = _profile_shapes(model_path, providers, example, input_name)
    except Exception:  # a provider without profiling: fall back to weight elements
        shapes = {}
    inits = {i.name: i for i in optimized.graph.initializer}
    int8 = total = 0.0
    for node in optimized.graph.node:
        if node.op_type not in CONV_OPS | MATMUL_OPS:
            continue
        weights = [inits[name] for name in node.input if name in inits and inits[name].dims]
        weight = max(weights, key=lambda t: int(np.prod(t.dims)), default=None)
        if shapes:  # a node the profile did not see, or without a static weight, is left out
            macs = _node_macs(node, weight, shapes.get(node.name))
        else:
            macs = float(np.prod(weight.dims)) if weight is not None else None
        if macs is None:
            continue
        total += macs
        int8 += macs if node.op_type in INT8_OPS else 0.0
    facts["int8_mac_share"] = int8 / total if total else 0.0
    facts["int8_coverage_basis"] = "macs" if shapes else "weight_elements"
    return facts


# ---- inductor (torchao PT2E) ------------------------------------------------------------------
QUANTIZE_KERNEL = re.compile(r"^(cpp_fused_\w*quantize\w*)\s*=", re.MULTILINE)


def _weight_shape(module: Any, node: Any) -> tuple[int, ...] | None:
    """Shape of a conv / linear weight node: a parameter (get_attr), an INT8 tensor being
    dequantized, or what the exporter recorded."""
    import operator

    if getattr(node, "op", None) == "call_function" and "dequantize" in str(node.target):
        node = node.args[0]
    if getattr(node, "op", None) == "get_attr":
        return tuple(operator.attrgetter(node.target)(module).shape)
    val = getattr(node, "meta", {}).get("val")
    return tuple(val.shape) if val is not None else None


def optimization_hint(value: Any, fallback: int = 1) -> int:
    """A concrete value of a (possibly symbolic) dimension, adding no guard."""
    from torch.fx.experimental.symbolic_shapes import optimization_hint as hint

    return int(hint(value, fallback=fallback))


def inductor_coverage(module: Any, code: str, int8_kernel_calls: int,
                      quantizer_config: Any) -> dict[str, Any]:
    """Coverage facts of an inductor INT8 engine. MACs per conv / linear node come from the
    quantized FX graph's shapes at the example batch (a symbolic batch counts at its hint; a
    node whose weight is dequantized from INT8 is an INT8 node); matmuls of two activations
    (attention's scores) have no weight to quantize and are not counted, as for ONNX Runtime;
    the share is then capped by what inductor generated: INT8 kernel calls / INT8 nodes (no
    INT8 kernel at all, as without weight freezing, gives 0)."""
    int8 = total = 0.0
    quantized_nodes = 0
    for node in module.graph.nodes:
        name = str(node.target)
        if node.op != "call_function" or not (name.startswith("aten.conv")
                                              or name.startswith("aten.linear")):
            continue
        out, weight = node.meta.get("val"), node.args[1]
        wshape = _weight_shape(module, weight)
        if out is None or wshape is None:
            continue
        # every output element costs one dot product over the weight's input side (conv and
        # linear alike). The whole output counts, batch included: which dimension is the batch
        # depends on the layer (an nn.MultiheadAttention projection's output is (tokens, batch,
        # 3 x width)); skipping dimension 0 under-counted those ~30-fold and an inductor ViT
        # read int8_mac_share 0.975 with half of its linear MACs in FP32.
        elements = float(np.prod([optimization_hint(d, fallback=1) for d in out.shape]))
        macs = elements * float(np.prod(wshape[1:]))
        total += macs
        if getattr(weight, "op", None) == "call_function" and "dequantize" in str(weight.target):
            int8 += macs
            quantized_nodes += 1
    generated = min(1.0, int8_kernel_calls / quantized_nodes) if quantized_nodes else 0.0
    act, weight_spec = quantizer_config.input_activation, quantizer_config.weight
    short = {"torch.uint8": "U8", "torch.int8": "S8"}
    granularity = "per-channel" if "per_channel" in str(weight_spec.qscheme) else "per-tensor"
    return {"int8_mac_share": (int8 / total) * generated if total else 0.0,
            "int8_coverage_basis": "macs",
            "qdq_pairs": len(QUANTIZE_KERNEL.findall(code)),
            "quant_format": f"PT2E QDQ {granularity} "
                            f"{short.get(str(act.dtype), act.dtype)}"
                            f"{short.get(str(weight_spec.dtype), weight_spec.dtype)}"}
