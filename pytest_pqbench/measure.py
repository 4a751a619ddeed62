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
from .metrics.latency import cuda_event_timings
from .metrics.memory import PeakMemory, cuda_memory
from .phase import PhaseResult, cycles_for, timed_entry
from .results.record import block_record, case_record, timing_record
from .timing import BLOCK_WARMUP, Block, Timing, run_blocks


def add_rounds(benchmark: Any, samples: list[float]) -> None:
    """Add rounds timed outside ``benchmark.pedantic`` (the interleaved blocks) to the
    fixture's statistics, through ``benchmark.stats.update`` (pytest-benchmark's per-round entry
    point: what pedantic itself calls). pytest-benchmark has no public API for rounds timed
    elsewhere; tests/test_blocks.py fails loudly if this one goes away."""
    update = getattr(getattr(benchmark, "stats", None), "update", None)
    if update is None:
        raise RuntimeError("pytest-benchmark's fixture has no stats.update(); this "
                           "pytest-pqbench cannot record interleaved blocks with it")
    for seconds in samples:
        update(seconds)



def measure(bench: Bench, case: Case, benchmark: Any, engine: Any, batch: np.ndarray,
            pruned: Pruned, accuracy: dict[str, Any], floor: dict[str, float],
            phase: PhaseResult | None = None) -> dict[str, Any]:
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

    if phase is not None and case.id in phase.errors:  # it failed (or hung) in the phase
        raise RuntimeError(f"{case.id}: timing failed in the timing phase: "
                           f"{phase.errors[case.id]}")
    out = engine(batch)
    if not np.all(np.isfinite(out)):
        raise NonFiniteOutput(f"{case.id}: engine produced NaN/Inf outputs on the timed batch")
    timing = phase.timings.get(case.id) if phase is not None else None
    if timing is not None and phase.batch_shapes.get(case.id) != tuple(batch.shape):
        timing = None  # the test timed another batch than the phase did: time it here
    interleaved = timing is not None
    origin = phase.origin if interleaved else time.perf_counter()
    if timing is None and getattr(benchmark, "disabled", False):
        timing, per_block = Timing(), 1  # --benchmark-disable: the call runs once, untimed
    elif timing is None:  # no timing phase (or another batch): contiguous blocks, said so
        cycles = cycles_for(settings)
        entry = timed_entry(case.id, engine, batch, settings, cycles)  # the phase's own recipe
        timing, per_block = entry.timing, entry.rounds_per_block
        run_blocks([entry], cycles, origin=origin, limit_s=settings.build_timeout)
        if entry.error is not None:
            raise entry.error
    else:
        per_block = phase.rounds_per_block[case.id]
    policy = {"timing_profile": settings.timing_profile, "warmup_rounds": settings.warmup_rounds,
              "min_rounds": settings.min_rounds, "min_time_s": settings.min_time,
              "max_rounds": settings.max_rounds, "block_warmup": BLOCK_WARMUP,
              "rounds_per_block": per_block, "interleaved": interleaved}
    cuda = bench.device.startswith("cuda")
    # the final block goes through pytest-benchmark (its own timer and table); the earlier
    # blocks' rounds are then added to the same statistics, so stats.data holds every round
    final_start = time.perf_counter() - origin  # (its warm-up calls included)
    with PeakMemory() as memory, cuda_memory(cuda) as device_memory:
        benchmark.pedantic(engine, args=(batch,), rounds=per_block, iterations=1,
                           warmup_rounds=BLOCK_WARMUP)
    record.update({"peak_rss_bytes": memory.peak_rss, "idle_rss_bytes": memory.idle_rss,
                   "rss_delta_bytes": memory.delta, "memory_method": memory.method,
                   **device_memory})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: the call ran once, untimed
        final = Block(len(timing.blocks), final_start, tuple(stats.stats.data),
                      timing.blocks[-1].host_ms if timing.blocks else None)
        add_rounds(benchmark, timing.samples)  # stats.data: the final block, then the others
        deadline = settings.deadline_ms or spec.deadline_ms
        record.update(timing_record(list(stats.stats.data), case.batch_size, deadline, policy))
        record.update(block_record([final, *timing.blocks]))
    if cuda:
        record.update(cuda_event_timings(engine, batch, min(per_block * 2, 200), bench.device))
    benchmark.extra_info.update(record)
    bench.records[case.id] = record
    return record
