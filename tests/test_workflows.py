"""Workflows and the precision they really engage, on a tiny net: build, run, parity with FP32
eager torch, ``precision_engaged`` where the answer is known; TensorRT's host-side logic; the
skip and warning paths through real pytest runs."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from pytest_pqbench.cache import ArtefactCache
from pytest_pqbench.models.base import state_dict_bytes
from pytest_pqbench.models.classifiers import ResNetSmall
from pytest_pqbench.workflows import WORKFLOWS, BuildContext, get_workflow
from pytest_pqbench.workflows.base import PARITY_BATCH
from pytest_pqbench.workflows.inductor import kernel_ops
from pytest_pqbench.workflows.onnx_export import precision_onnx, relative_error
from pytest_pqbench.workflows.ort import choose_providers
from pytest_pqbench.workflows.precision import ComputeOp, engaged_summary, layer_macs
from pytest_pqbench.workflows.tensorrt import (
    engaged_from_inspector,
    engine_cache_inputs,
    optimization_profiles,
    profile_index,
)
from pytest_pqbench.workflows.torch_runtime import cpu_bf16_reason
from tests.conftest import SMOKE

TOLERANCE = {"fp32": 1e-3, "fp16": 0.05, "bf16": 0.1, "int8": 0.3}  # as Builder.check_parity
# The "what is missing" assertions hold only where the TensorRT packages are not installed.
TENSORRT_INSTALLED = [m for m in ("tensorrt", "torch_tensorrt", "modelopt")
                      if importlib.util.find_spec(m) is not None]
without_tensorrt = pytest.mark.skipif(
    bool(TENSORRT_INSTALLED),
    reason=f"asserts the skip reason of a host without TensorRT; installed: {TENSORRT_INSTALLED}")


@pytest.fixture(scope="module")
def tiny():
    """A tiny ResNet (random weights, BN statistics set from real-ish inputs) and image batches."""
    torch.manual_seed(0)
    model = ResNetSmall(10, (8, 16, 16))
    rng = np.random.default_rng(0)
    images = rng.random((48, 3, 32, 32), dtype=np.float32)
    model.train()
    with torch.no_grad():  # give BatchNorm realistic running statistics
        model(torch.from_numpy(images))
    model.eval()
    return model, images[:16], [images[16:32], images[32:48]]


def reference(model, batch):
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


def context(tmp_path, **options) -> BuildContext:
    """A build context with a scratch artefact cache of its own."""
    return BuildContext(cache=ArtefactCache(tmp_path / "cache"), model_key="tiny", threads=1,
                        batch_sizes=(4,), options=options)


def build(tiny, tmp_path, workflow, precision, **options):
    model, batch, calibration = tiny
    engine = get_workflow(workflow).build(model, precision, calibration, batch,
                                          context(tmp_path, **options))
    out = engine(batch)
    assert out.dtype == np.float32 and out.shape == (16, 10)
    err = relative_error(out, reference(model, batch))
    assert err <= TOLERANCE[precision], f"{workflow} {precision}: max relative error {err:.3g}"
    return engine


# ---- the engaged-precision summary -----------------------------------------------------------
def test_engaged_summary_weights_by_compute_and_breaks_down_by_op():
    ops = [ComputeOp("Conv", "int8", 300), ComputeOp("Conv", "fp32", 100),
           ComputeOp("Gemm", "fp32", 100)]
    out = engaged_summary(ops, "int8", "macs")
    assert out["precision_engaged"] == pytest.approx(0.6)
    assert out["precision_by_op"] == pytest.approx({"Conv@fp32": 0.2, "Conv@int8": 0.6,
                                                    "Gemm@fp32": 0.2})
    assert engaged_summary([], "int8", "nodes")["precision_engaged"] == 0.0


def test_layer_macs_match_the_convolution_formula(tiny):
    model, batch, _ = tiny
    macs = layer_macs(model, batch)
    stem = model.features[0][0]  # 3 -> 8 channels, 3x3, stride 1, on 32x32
    assert macs["features.0.0"] == 32 * 32 * 8 * 3 * 3 * 3 == stem.weight.numel() * 32 * 32
    assert macs["fc"] == model.fc.weight.numel()


# ---- torch (eager) ---------------------------------------------------------------------------
def test_torch_fp32_engages_fully_and_keeps_the_input_model(tiny, tmp_path):
    engine = build(tiny, tmp_path, "torch", "fp32")
    assert engine.facts["precision_engaged"] == 1.0
    assert engine.facts["precision_engaged_basis"] == "macs"
    assert next(tiny[0].parameters()).dtype == torch.float32


@pytest.mark.skipif(cpu_bf16_reason() is not None, reason=str(cpu_bf16_reason()))
def test_torch_bf16_on_cpu_runs_in_bf16(tiny, tmp_path):
    engine = build(tiny, tmp_path, "torch", "bf16")
    assert engine.facts["precision_engaged"] == 1.0
    assert set(engine.facts["precision_by_op"]) == {"Conv2d@bf16", "Linear@bf16"}
    fp32_bytes = build(tiny, tmp_path, "torch", "fp32").facts["model_bytes"]
    assert engine.facts["model_bytes"] < 0.7 * fp32_bytes  # half-size tensors + format overhead


def test_torch_refuses_int8_and_cpu_fp16_with_a_reason():
    torch_wf = get_workflow("torch")
    assert "inductor" in torch_wf.check("int8", "cpu")
    assert "CUDA" in torch_wf.check("fp16", "cpu")


# ---- ort -------------------------------------------------------------------------------------
def test_ort_int8_qdq_engages_int8(tiny, tmp_path):
    engine = build(tiny, tmp_path, "ort", "int8")
    assert engine.facts["precision_engaged"] > 0.9
    assert any(k.startswith("QLinearConv@int8") for k in engine.facts["precision_by_op"])
    assert engine.facts["provider"] == "CPUExecutionProvider"


def test_ort_fp16_on_cpu_is_reported_as_not_engaged(tiny, tmp_path):
    """ONNX Runtime's CPU provider has no FP16 convolutions: it casts around them and runs FP32.
    The FP16 file is real (half-size weights), the compute is not."""
    engine = build(tiny, tmp_path, "ort", "fp16")
    fp16_file = onnx.load(engine.facts["artefact"]["path"])
    assert {i.data_type for i in fp16_file.graph.initializer if len(i.dims) == 4} == {
        onnx.TensorProto.FLOAT16}
    assert engine.facts["precision_engaged"] < 0.05
    assert all(k.endswith("@fp32") for k in engine.facts["precision_by_op"])


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_ort_int8_calibration_methods(tiny, tmp_path, method):
    engine = build(tiny, tmp_path, "ort", "int8", calibration_method=method)
    assert engine.facts["calibration_method"] == method
    assert engine.facts["precision_engaged"] > 0.9


@pytest.mark.parametrize("saturates", [False, True])
def test_ort_int8_weights_are_7_bit_where_u8s8_saturates(tiny, tmp_path, monkeypatch, saturates):
    """Without VNNI, MLAS's U8S8 kernels saturate int16 pair sums: the weights then use 7 bits
    (``reduce_range``), the fact is recorded, and the artefact's cache key differs (a file built
    for one kind of host is never served to the other)."""
    from pytest_pqbench.workflows import onnx_export

    monkeypatch.setattr(onnx_export, "int8_saturates", lambda: saturates)
    model, batch, calibration = tiny
    ctx = context(tmp_path)
    path, meta = precision_onnx(model, "int8", calibration, batch, ctx)
    assert meta["int8_reduce_range"] is saturates
    graph = onnx.load(str(path)).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(weights) >= 10
    top = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
    assert top <= 64 if saturates else top == 127
    other, _ = precision_onnx(model, "int8", calibration, batch, ctx)
    monkeypatch.setattr(onnx_export, "int8_saturates", lambda: not saturates)
    flipped, _ = precision_onnx(model, "int8", calibration, batch, ctx)
    assert other == path and flipped != path


def test_int8_saturates_follows_the_cpu_flags(monkeypatch):
    from pytest_pqbench import environment

    monkeypatch.setattr(environment.platform, "machine", lambda: "x86_64")
    for flags, saturates in ((["avx2", "fma"], True), (["avx2", "avx512_vnni"], False),
                             (["avx2", "avx_vnni"], False), (["amx_int8"], False)):
        monkeypatch.setattr(environment, "_cpu_info", lambda f=flags: {"flags": f})
        assert environment.int8_saturates() is saturates, flags
    monkeypatch.setattr(environment.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(environment, "_cpu_info", lambda: {"flags": ["asimd"]})
    assert environment.int8_saturates() is False


def test_ort_providers_never_pick_a_gpu_provider_without_a_gpu():
    # onnxruntime-gpu lists these as available on this CPU-only machine
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu", available) == ["CPUExecutionProvider"]
    assert choose_providers("cuda", available) == ["CUDAExecutionProvider",
                                                   "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="need a GPU"):
        choose_providers("cpu", available, ["TensorrtExecutionProvider"])
    with pytest.raises(ValueError, match="OpenVINOExecutionProvider.*available"):
        choose_providers("cpu", available, ["OpenVINOExecutionProvider"])
    assert choose_providers("cpu", available, ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"]


# ---- inductor ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inductor_int8(tiny, tmp_path_factory):
    """One compile for the module (~15-40 s here): torchao PT2E INT8 + torch.compile."""
    model, batch, calibration = tiny
    ctx = context(tmp_path_factory.mktemp("inductor"))
    return get_workflow("inductor").build(model, "int8", calibration, batch, ctx)


def test_inductor_int8_runs_onednn_int8_kernels(tiny, inductor_int8):
    model, batch, _ = tiny
    err = relative_error(inductor_int8(batch), reference(model, batch))
    assert err <= TOLERANCE["int8"], err
    facts = inductor_int8.facts
    assert facts["precision_engaged"] == 1.0 and facts["precision_engaged_basis"] == "nodes"
    assert facts["precision_by_op"].get("onednn.qlinear_pointwise@int8", 0) > 0
    assert facts["compile_seconds"] > 0 and facts["build_seconds"] == facts["compile_seconds"]
    fp32_bytes = len(state_dict_bytes(model))  # INT8 weights: well under half the FP32 size
    assert facts["model_bytes"] < 0.5 * fp32_bytes


def test_inductor_int8_does_not_recompile_for_a_run_batch_size(tiny, inductor_int8):
    """Batch sizes of the run were compiled in build: a timed call costs milliseconds."""
    import time

    batch = tiny[1][:4]
    started = time.perf_counter()
    inductor_int8(batch)
    assert time.perf_counter() - started < 1.0  # a compile takes >= 5 s here


def test_inductor_int8_pairs_through_its_exported_quantized_program(tiny, inductor_int8):
    """The engine records its PT2E-quantized module as a torch.export program; a later session
    compiles that program the same way (issue 22: inductor verdicts were never paired): the
    loaded engine gives the engine's outputs and compiles once per batch shape."""
    import time

    model, batch, _ = tiny
    workflow = get_workflow("inductor")
    artefact = inductor_int8.facts["artefact"]
    assert artefact["format"] == "torch.export" and artefact["precision"] == "int8"
    assert workflow.portable and workflow.pair_both_from_artefacts
    loaded = workflow.load_portable(artefact, 1, "cpu")
    assert relative_error(loaded(batch), inductor_int8(batch)) <= 0.05
    started = time.perf_counter()
    loaded(batch)  # compiled on the first call: now milliseconds
    assert time.perf_counter() - started < 1.0
    with pytest.raises(FileNotFoundError, match="not in the artefact cache"):
        workflow.load_portable({**artefact, "path": artefact["path"] + ".gone"}, 1, "cpu")


def test_kernel_count_sees_float_convolutions_in_generated_code():
    """What inductor emits when the INT8 lowering does not happen (no freezing): float convs."""
    code = ("        # Topologically Sorted Source Nodes: [conv2d]\n"
            "        buf1 = extern_kernels.convolution(buf0, arg1_1, stride=(1, 1))\n"
            "        buf4 = torch.ops.onednn.qconv_pointwise.tensor(buf0, x_scale, x_zp)\n"
            "        extern_kernels.addmm(arg5_1, buf3, arg6_1, alpha=1, beta=1, out=buf5)\n")
    summary = engaged_summary(kernel_ops(code), "int8", "nodes")
    assert summary["precision_engaged"] == pytest.approx(1 / 3)
    assert summary["precision_by_op"]["extern_kernels.convolution@fp32"] == pytest.approx(1 / 3)


def test_inductor_checks():
    inductor_wf = get_workflow("inductor")
    assert inductor_wf.check("int8", "cpu") is None
    assert "CUDA" in inductor_wf.check("fp16", "cpu")
    assert inductor_wf.check("int8", "cuda") is not None  # no GPU here, and INT8 is CPU-only


# ---- TensorRT: everything that runs without TensorRT ------------------------------------------
def test_optimization_profiles_cover_run_sizes_exactly_and_parity_batches():
    profiles = optimization_profiles([32, 1, 32], (3, 32, 32))
    assert profiles[:2] == [((1, 3, 32, 32),) * 3, ((32, 3, 32, 32),) * 3]
    assert profiles[-1] == ((1, 3, 32, 32), (32, 3, 32, 32), (32, 3, 32, 32))
    assert profile_index(profiles, 32) == 1 and profile_index(profiles, 1) == 0
    assert profile_index(profiles, 16) == 2  # parity batch: the catch-all profile
    assert optimization_profiles([4], (3, 8, 8))[-1][2][0] == PARITY_BATCH == 16
    with pytest.raises(ValueError, match="batch size 64"):
        profile_index(profiles, 64)


def test_engine_cache_key_changes_with_everything_that_changes_the_engine(tmp_path):
    from pytest_pqbench.cache import ArtefactCache

    cache = ArtefactCache(tmp_path)
    profiles = optimization_profiles([1, 32], (3, 32, 32))
    base = dict(model_key="m", precision="int8", profiles=profiles, workspace_mb=1024,
                calibration_key="c", calibration_method="minmax", gpu="H100 sm_90")
    key = cache.key("trt-engine", engine_cache_inputs(**base))
    assert key == cache.key("trt-engine", engine_cache_inputs(**base))
    variants = [{"model_key": "m2"}, {"precision": "fp16"}, {"workspace_mb": 2048},
                {"profiles": optimization_profiles([8], (3, 32, 32))}, {"gpu": "L4 sm_89"},
                {"calibration_key": "c2"}, {"calibration_method": "entropy"}]
    keys = {cache.key("trt-engine", engine_cache_inputs(**{**base, **v})) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    fp16 = {**base, "precision": "fp16"}  # calibration does not change a non-INT8 engine
    assert (cache.key("x", engine_cache_inputs(**fp16))
            == cache.key("x", engine_cache_inputs(**{**fp16, "calibration_key": "c2"})))


def test_inspector_precision_from_engine_layers():
    # Hand-written in the shape of TensorRT's engine-inspector JSON (ProfilingVerbosity
    # DETAILED): TensorRT cannot run on this machine, so a real engine cannot be inspected here.
    info = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8"}],
         "Outputs": [{"Dimensions": [32, 16, 32, 32]}], "Weights": {"Type": "Int8", "Count": 432}},
        {"Name": "relu", "LayerType": "PointWiseV2", "ParameterType": "PointWise",
         "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "fc", "LayerType": "CaskGemmMatrixMultiply", "ParameterType": "MatrixMultiply",
         "Inputs": [{"Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Dimensions": [32, 10]}], "Weights": {"Count": 160}}]}
    out = engaged_from_inspector(json.dumps(info), "int8")
    assert out["precision_engaged_basis"] == "macs"
    assert out["precision_engaged"] == pytest.approx(432 * 1024 / (432 * 1024 + 160))
    assert set(out["precision_by_op"]) == {"Convolution@int8", "MatrixMultiply@fp32"}


def test_tensorrt_qdq_onnx_is_explicit_symmetric_int8(tiny, tmp_path):
    """The Q/DQ ONNX that onnx-trt hands to TensorRT: signed INT8, zero points 0, per-channel
    weight scales, and it still computes the model (checked with ONNX Runtime)."""
    import onnxruntime as ort

    model, batch, calibration = tiny
    path, _ = precision_onnx(model, "int8", calibration, batch, context(tmp_path),
                             symmetric=True)
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) > 5
    for node in quantize:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear"
                   and inits.get(n.input[1]) is not None and inits[n.input[1]].size > 1]
    assert len(per_channel) >= 15  # every conv + the linear layer
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch})[0]
    assert relative_error(got, reference(model, batch)) <= TOLERANCE["int8"]


@without_tensorrt
@pytest.mark.parametrize("workflow", ["torch-trt", "onnx-trt"])
def test_tensorrt_check_names_what_is_missing(workflow):
    reason = get_workflow(workflow).check("int8", "cpu")
    assert reason is not None and "GPU" in reason
    if workflow == "torch-trt":
        assert "torch-tensorrt" in reason and "nvidia-modelopt" in reason
    else:
        assert "tensorrt" in reason


# ---- what each workflow module declares ----------------------------------------------------------
WORKFLOW_DIR = Path(__file__).parents[1] / "pytest_pqbench" / "workflows"
HELPERS = {"base", "precision", "coverage", "onnx_export", "tensorrt", "torch_runtime"}


def test_workflow_modules_import_helpers_never_each_other():
    """A workflow module imports only the shared helpers: adding or removing one is one file."""
    workflows = {p.stem for p in WORKFLOW_DIR.glob("*.py")} - HELPERS - {"__init__"}
    assert workflows == {"torch_eager", "inductor", "ort", "onnx_trt", "torch_trt"}
    for path in sorted(WORKFLOW_DIR.glob("*.py")):
        imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        if path.stem != "__init__":
            assert not imported & workflows, f"{path.name} imports workflow {imported & workflows}"


def test_every_builtin_workflow_declares_its_build_cost():
    from pytest_pqbench.workflows.base import DEFAULT_COST, BuildCost, build_cost

    builtin = ["torch", "inductor", "ort", "onnx-trt", "torch-trt"]
    assert set(builtin) <= set(WORKFLOWS.names())
    for name in builtin:
        assert isinstance(get_workflow(name).cost, BuildCost), name
        assert build_cost(name) is not DEFAULT_COST
    # the ONNX workflows share an export, the others have none
    assert {n for n in builtin if build_cost(n).export_s} == {"ort", "onnx-trt"}


def test_build_context_needs_a_cache():
    with pytest.raises(TypeError, match="cache"):
        BuildContext(model_key="m")  # type: ignore[call-arg]


# ---- through pytest ---------------------------------------------------------------------------
@without_tensorrt
def test_tensorrt_cases_skip_and_ort_fp16_warns(bench_pytester):
    result = bench_pytester.runpytest(
        "--pqbench-workflows=ort,torch-trt,onnx-trt", "--pqbench-precisions=fp16",
        "--pqbench-pruners=none", "--pqbench-batch-sizes=8", "-rs", *SMOKE)
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "*SKIPPED*needs torch-tensorrt (`import torch_tensorrt` fails)*GPU*",
        "*SKIPPED*needs tensorrt (`import tensorrt` fails)*GPU*"], consecutive=False)
    result.stdout.fnmatch_lines([
        "*WARNING precision not engaged: shapes_resnet-none-ort-fp16-bs8: fp16 requested but "
        "only 0% of compute runs in fp16 (CPUExecutionProvider)*"])
