"""Facts about the machine added to pytest-benchmark's ``machine_info``, and a control kernel."""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any

from .cache import package_versions

INFERENCE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni",
                   "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "fma", "f16c")
# A u8 x s8 dot product without overflow: VNNI's vpdpbusd (or AMX). Without them MLAS multiplies
# with vpmaddubsw, whose int16 pair sums saturate (ONNX Runtime's quantization guide).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni", "amx_int8"})


@functools.cache
def _cpu_info() -> dict[str, Any]:
    import cpuinfo  # py-cpuinfo, a dependency of pytest-benchmark

    try:
        return cpuinfo.get_cpu_info()
    except Exception:  # pragma: no cover - an exotic platform cpuinfo cannot read
        return {}


def cpu_facts() -> dict[str, Any]:
    import psutil

    info = _cpu_info()
    flags = set(info.get("flags", ()))
    return {"cpu_model": info.get("brand_raw") or platform.processor(),
            "cpu_flags": sorted(flags & set(INFERENCE_FLAGS)),
            "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False)}


def int8_saturates() -> bool:
    """True on an x86-64 host whose INT8 kernels saturate u8 x s8 products (no VNNI / AMX):
    ONNX Runtime's U8S8 models then need 7-bit weights (``reduce_range``) to stay accurate.
    Measured on an AVX2-only AMD EPYC: the tutorial's pruned model read max relative error 0.25
    against FP32 with 8-bit weights and 0.035-0.045 with ``reduce_range``."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not (set(_cpu_info().get("flags", ())) & INT8_DOT_FLAGS)


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # native BF16 dot products (oneDNN uses them)


def native_bf16() -> bool:
    """True when this CPU computes BF16 natively (AVX-512 BF16 or AMX), by its CPU flags."""
    return bool(set(_cpu_info().get("flags", ())) & BF16_FLAGS)


def gpu_facts() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_bytes": props.total_memory,
            "cuda": torch.version.cuda, "gpu_capability": f"{props.major}.{props.minor}"}


def control_measurement(size: int = 512, repeats: int = 30) -> dict[str, Any]:
    """Median time of a fixed FP32 matmul: a yardstick to normalise runs from other machines."""
    import torch

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        a @ b
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {"kernel": f"fp32 matmul {size}x{size}", "median_s": samples[len(samples) // 2],
            "threads": torch.get_num_threads()}


def machine_facts(settings: Any = None) -> dict[str, Any]:
    facts: dict[str, Any] = {**cpu_facts(), **gpu_facts(), "versions": package_versions()}
    try:
        import onnxruntime as ort

        facts["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:  # pragma: no cover
        facts["onnxruntime_providers"] = []
    facts["control"] = control_measurement()
    return facts


# ---- machine peak: how close to the chip each engine runs ----------------------------------
PEAK_GEMM = 2048  # M = N = K: 8.6 G multiply-adds per call, large enough to be compute-bound
PEAK_REPEATS = 5


def _best_rate(call: Any, macs: float, repeats: int) -> float:
    call()  # first call: allocation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return macs / best


def _ort_int8_gemm(size: int, threads: int) -> Any:
    """An ONNX Runtime ``MatMulInteger`` (uint8 x int8 -> int32) session: the MLAS kernel family
    behind ORT's INT8 convolutions."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 127, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
        [onnx.numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (size, size), dtype=np.uint8)
    return lambda: session.run(None, {"a": a})


def machine_peaks(threads: int | None = None, size: int = PEAK_GEMM,
                  repeats: int = PEAK_REPEATS) -> dict[str, Any]:
    """This machine's demonstrated peak multiply-accumulates per second, per precision: the best
    of ``repeats`` large square GEMMs through the libraries the engines use (FP32
    ``torch.matmul``; INT8 ``torch._int_mm`` and ONNX Runtime ``MatMulInteger``, the faster
    one). Measured once per process and thread count (``functools.cache``); a case's
    ``efficiency`` is its achieved MAC/s over the peak of its precision."""
    import torch

    peaks = dict(_machine_peaks(threads or torch.get_num_threads(), size, repeats))
    peaks["int8_by_kernel"] = dict(peaks["int8_by_kernel"])
    return peaks


@functools.cache
def _machine_peaks(threads: int, size: int, repeats: int) -> tuple[tuple[str, Any], ...]:
    import torch

    macs = float(size) ** 3
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
        fp32 = _best_rate(lambda: torch.matmul(a, b), macs, repeats)
        rates = {}
        try:
            qa = torch.randint(-128, 127, (size, size), dtype=torch.int8, generator=gen)
            qb = torch.randint(-128, 127, (size, size), dtype=torch.int8, generator=gen)
            rates["torch._int_mm"] = _best_rate(lambda: torch._int_mm(qa, qb), macs, repeats)
        except (RuntimeError, AttributeError):  # no int8 GEMM in this torch build
            pass
        try:
            rates["onnxruntime MatMulInteger"] = _best_rate(_ort_int8_gemm(size, threads), macs,
                                                            repeats)
        except ImportError:  # pragma: no cover
            pass
    finally:
        torch.set_num_threads(previous)
    int8_kernel = max(rates, key=rates.get) if rates else None
    return (("fp32_macs_per_s", fp32), ("int8_macs_per_s", rates.get(int8_kernel)),
            ("fp32_kernel", f"torch.matmul {size}x{size}x{size}"),
            ("int8_kernel", f"{int8_kernel} {size}x{size}x{size}" if int8_kernel else None),
            ("int8_by_kernel", tuple(sorted(rates.items()))), ("threads", threads))
