"""Timing one case: warm-up, choose rounds, time with pytest-benchmark, record every metric."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .bench import Bench, Pruned
from .case import Case
from .metrics.latency import choose_rounds
from .metrics.memory import PeakMemory
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
        engine(batch)
    started = time.perf_counter()
    engine(batch)
    probe = time.perf_counter() - started
    rounds = choose_rounds(probe, settings.min_rounds, settings.min_time, settings.max_rounds)
    policy = {"warmup_rounds": settings.warmup_rounds, "min_rounds": settings.min_rounds,
              "min_time_s": settings.min_time, "max_rounds": settings.max_rounds}
    with PeakMemory() as memory:
        benchmark.pedantic(engine, args=(batch,), rounds=rounds, iterations=1, warmup_rounds=0)
    record.update({"peak_rss_bytes": memory.peak_rss, "idle_rss_bytes": memory.idle_rss,
                   "rss_delta_bytes": memory.delta, "memory_method": memory.method})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: the call ran once, untimed
        deadline = settings.deadline_ms or spec.deadline_ms
        record.update(timing_record(list(stats.stats.data), case.batch_size, deadline, policy))
    benchmark.extra_info.update(record)
    bench.records[case.id] = record
    return record
