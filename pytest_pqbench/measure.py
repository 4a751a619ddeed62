"""Timing one case: warm-up, choose rounds, time with pytest-benchmark, record every metric.

Latency is defined per device (``metrics.latency.LATENCY_DEFINITION``, written into each
record). On CUDA the same host-timed rounds are complemented by CUDA-event timings of the engine
call and of the host-to-device / device-to-host copies, as trtexec splits them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .bench import Bench, Pruned
from .case import Case
from .metrics.accuracy import NonFiniteOutput
from .metrics.latency import choose_rounds, cuda_event_timings
from .metrics.memory import PeakMemory, cuda_memory
from .results.record import case_record, timing_record


def measure(bench: Bench, case: Case, benchmark: Any, engine: Any, batch: np.ndarray,
            pruned: Pruned, accuracy: dict[str, Any], floor: dict[str, float]) -> dict[str, Any]:
    settings = bench.settings
    spec = bench.spec(case)
    _, train_info = bench.trained(case)
    record = case_record(
        case, task=spec.task, device=bench.device, threads=bench.threads,
        engine_facts=engine.facts, prune_report=pruned.report.as_dict(),
        recovery=pruned.recovery,
        accuracy=accuracy or {"accuracy": float("nan"), "accuracy_metric": "not measured"},
        reference=bench.reference_accuracy(case) if accuracy else {"accuracy": float("nan")},
        floor=floor, versions=bench.versions, train_info=train_info)
    if settings.build_only:
        record["build_only"] = True
        benchmark.extra_info.update(record)
        return record

    for _ in range(settings.warmup_rounds):
        out = engine(batch)
    started = time.perf_counter()
    out = engine(batch)
    probe = time.perf_counter() - started
    if not np.all(np.isfinite(out)):
        raise NonFiniteOutput(f"{case.id}: engine produced NaN/Inf outputs on the timed batch")
    rounds = choose_rounds(probe, settings.min_rounds, settings.min_time, settings.max_rounds)
    policy = {"timing_profile": settings.timing_profile, "warmup_rounds": settings.warmup_rounds,
              "min_rounds": settings.min_rounds, "min_time_s": settings.min_time,
              "max_rounds": settings.max_rounds}
    cuda = bench.device.startswith("cuda")
    with PeakMemory() as memory, cuda_memory(cuda) as device_memory:
        benchmark.pedantic(engine, args=(batch,), rounds=rounds, iterations=1, warmup_rounds=0)
    record.update({"peak_rss_bytes": memory.peak_rss, "idle_rss_bytes": memory.idle_rss,
                   "rss_delta_bytes": memory.delta, "memory_method": memory.method,
                   **device_memory})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: the call ran once, untimed
        deadline = settings.deadline_ms or spec.deadline_ms
        record.update(timing_record(list(stats.stats.data), case.batch_size, deadline, policy))
    if cuda:
        record.update(cuda_event_timings(engine, batch, min(rounds, 200), bench.device))
    benchmark.extra_info.update(record)
    bench.records[case.id] = record
    return record
