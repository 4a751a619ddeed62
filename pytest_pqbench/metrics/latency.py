"""Latency distribution statistics of timed rounds (a value object, rendering kept apart)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

LATENCY_DEFINITION = {
    "cpu": "host wall time (time.perf_counter) of one synchronous engine call on a batch "
           "already in host memory, outputs returned to host memory",
    "cuda": "host wall time of one engine call that returns only after torch.cuda.synchronize(); "
            "input copied host-to-device and output device-to-host inside the call",
}


@dataclass(frozen=True)
class LatencyStats:
    """Latency figures in milliseconds over ``rounds`` timed calls."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stddev_ms: float
    min_ms: float
    max_ms: float
    jitter_ms: float  # p99 - p50
    rounds: int

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1000.0
        if ms.size == 0:
            raise ValueError("no timed rounds")
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   mean_ms=float(ms.mean()),
                   stddev_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
                   min_ms=float(ms.min()), max_ms=float(ms.max()), jitter_ms=float(p99 - p50),
                   rounds=int(ms.size))

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def deadline_miss_rate(samples: Sequence[float], deadline_ms: float) -> float:
    """Fraction of rounds slower than the deadline."""
    ms = np.asarray(samples, dtype=np.float64) * 1000.0
    return float((ms > deadline_ms).mean()) if ms.size else 0.0


def throughput_ips(p50_ms: float, batch_size: int) -> float:
    """Images per second at the median latency of one batch."""
    return batch_size / (p50_ms / 1000.0) if p50_ms > 0 else 0.0


def cuda_event_timings(engine, batch: np.ndarray, rounds: int, device: str) -> dict[str, float]:
    """CUDA-event medians (ms) of the engine call and of the batch's H2D / D2H copies.

    Only called on a CUDA device. The engine call includes its own copies (it takes and returns
    host arrays), so ``cuda_call_p50_ms`` - ``h2d_p50_ms`` - ``d2h_p50_ms`` approximates compute.
    """
    import torch

    def timed(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    host = torch.from_numpy(batch).pin_memory()
    on_device = host.to(device)
    out = torch.from_numpy(np.asarray(engine(batch))).to(device)
    out_host = torch.empty(out.shape, dtype=out.dtype).pin_memory()
    samples: dict[str, list[float]] = {"cuda_call": [], "h2d": [], "d2h": []}
    for _ in range(rounds):
        samples["cuda_call"].append(timed(lambda: engine(batch)))
        samples["h2d"].append(timed(lambda: on_device.copy_(host, non_blocking=True)))
        samples["d2h"].append(timed(lambda: out_host.copy_(out, non_blocking=True)))
    return {f"{k}_p50_ms": float(np.median(v)) for k, v in samples.items()}
