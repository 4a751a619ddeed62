"""Process memory that sees native allocations (ONNX Runtime arenas, oneDNN buffers).

On Linux the kernel's peak resident set (``VmHWM``) is reset through ``/proc/self/clear_refs``
and read back after the timed run; elsewhere a psutil sampling thread approximates the peak.
tracemalloc would see only Python allocations, so it is not used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS counter (Linux >= 4.0)
        return True
    except OSError:
        return False


def current_rss() -> int:
    return psutil.Process().memory_info().rss


@dataclass
class PeakMemory:
    """Context manager: ``idle_rss`` before, ``peak_rss`` during, ``delta`` = peak - idle."""

    interval_s: float = 0.002
    idle_rss: int = 0
    peak_rss: int = 0
    method: str = ""

    @property
    def delta(self) -> int:
        return max(0, self.peak_rss - self.idle_rss)

    def __enter__(self) -> PeakMemory:
        self.idle_rss = current_rss()
        self._kernel = reset_peak() and _vm_kib("VmHWM") is not None
        self.method = "VmHWM" if self._kernel else "psutil-sampling"
        self._stop = threading.Event()
        self._sampled = self.idle_rss
        if not self._kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled = max(self._sampled, current_rss())

    def __exit__(self, *exc: object) -> None:
        if self._kernel:
            self.peak_rss = max((_vm_kib("VmHWM") or 0) * 1024, current_rss())
        else:
            self._stop.set()
            self._thread.join()
            self.peak_rss = max(self._sampled, current_rss())


class cuda_memory:  # noqa: N801 - used like a function: ``with cuda_memory(on) as facts``
    """Peak CUDA memory during the block: torch's allocator peak and, with NVML, device use."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.facts: dict[str, int] = {}

    def __enter__(self) -> dict[str, int]:
        if self.enabled:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self.facts

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        import torch

        torch.cuda.synchronize()
        self.facts["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.facts["gpu_memory_used_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:  # noqa: BLE001 - NVML is optional; torch's figure stays
            pass
