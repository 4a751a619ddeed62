"""Facts about the machine added to pytest-benchmark's ``machine_info``, and a control kernel."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

from .cache import package_versions

INFERENCE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx512_bf16", "amx_tile",
                   "amx_int8", "amx_bf16", "fma", "f16c")


def cpu_facts() -> dict[str, Any]:
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover
        physical = None
    return {"cpu_model": model, "cpu_flags": sorted(f for f in flags if f in INFERENCE_FLAGS),
            "logical_cores": os.cpu_count(), "physical_cores": physical}


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
