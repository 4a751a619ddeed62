"""Stage 4, recording: the case's final block through pytest-benchmark, its rounds merged with the
timing phase's, and the one ``CaseRecord`` the run keeps of it.

``CaseFacts`` gathers, once, what the earlier stages know of the case (its engine's facts, what
pruning and recovery did, its accuracy and floor); ``time_final_block`` runs the last block inside
``benchmark.pedantic`` (pytest-benchmark's table and JSON) and adds the phase's blocks to the same
statistics; ``make_record`` turns both into the record. Latency is defined per device
(``metrics.latency.LATENCY_DEFINITION``, written into each record); on CUDA the host-timed rounds
are complemented by CUDA-event timings of the call and of the copies, as trtexec splits them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..case import Case
from ..errors import NonFiniteOutput
from ..metrics.latency import LATENCY_DEFINITION, LatencyStats, cuda_event_timings
from ..metrics.memory import PeakMemory, cuda_memory
from ..models import get_spec
from ..results.record import (
    ACCURACY_RENAMES,
    NOT_MEASURED,
    VERSION_KEYS,
    BlockRecord,
    CaseRecord,
    finite,
    json_able,
    timing_facts,
)
from ..workflows.base import prep_seconds_of
from .build import Builder
from .phase import PhaseResult, cycles_for, timed_entry
from .timing import BLOCK_WARMUP, Block, Timing, run_blocks


@dataclass(frozen=True)
class CaseFacts:
    """What the preparing and building stages know of one case, for its record."""

    case: Case
    task: str
    deadline_ms: float
    device: str
    threads: int
    versions: Mapping[str, str]
    engine_facts: Mapping[str, Any]
    prune_report: Mapping[str, Any]
    recovery: Mapping[str, Any]
    accuracy: Mapping[str, Any]  # {} when not measured (build-only, untrained zoo model)
    reference: Mapping[str, Any]
    floor: Mapping[str, float]
    train_info: Mapping[str, Any]

    @classmethod
    def gather(cls, case: Case, builder: Builder, accuracy: Mapping[str, Any],
               floor: Mapping[str, float]) -> CaseFacts:
        prep = builder.prep
        spec = prep.spec(case)
        pruned = prep.pruned(case)
        return cls(case=case, task=spec.task,
                   deadline_ms=builder.settings.deadline_ms or spec.deadline_ms,
                   device=builder.device, threads=builder.threads, versions=builder.versions,
                   engine_facts=builder.engine_guarded(case).facts,
                   prune_report=pruned.report.as_dict(), recovery=pruned.recovery,
                   accuracy=accuracy,
                   reference=prep.reference_accuracy(case) if accuracy else {},
                   floor=floor, train_info=prep.trained(case).info)


@dataclass
class Timed:
    """The case's rounds: every block (the final one first in ``samples``, as pytest-benchmark's
    ``stats.data`` holds them), the timing policy and memory facts."""

    samples: list[float] = field(default_factory=list)
    blocks: list[BlockRecord] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def make_record(facts: CaseFacts, timed: Timed | None, build_only: bool = False) -> CaseRecord:
    """The case's record from what the stages know and what was timed (None: not timed)."""
    case, report = facts.case, facts.prune_report
    out: dict[str, Any] = {"device": facts.device, "threads": facts.threads}
    # every fact the engine reports (workflows.base.EngineFacts documents the known ones); a
    # case field keeps its value, and a value JSON cannot hold is left out
    out.update({k: v for k, v in facts.engine_facts.items()
                if k not in out and k not in _RECORD_KEYS and json_able(v)})
    out.update({k: report[k] for k in ("params", "macs", "params_before", "macs_before",
                                       "zero_fraction", "prune_seconds")})
    out["pruner_structure"] = report["structure"]
    # not in the case id: two runs with other prune options have the same ids
    out["prune_options"] = dict(report.get("options") or {})
    out["pruned_model_bytes"] = report["model_bytes"]
    if report.get("note"):
        out["prune_note"] = report["note"]
    if report.get("scope"):  # what was and was not pruned (pruners.scope)
        out["prune_scope"] = report["scope"]
        out["pruned_layers"] = dict(report.get("pruned_layers") or {})
    out.setdefault("model_bytes", report["model_bytes"])
    out.update(facts.recovery)
    # detection's precision / recall must not shadow the case's numeric precision axis
    accuracy = {ACCURACY_RENAMES.get(k, k): v for k, v in facts.accuracy.items()}
    value, metric = accuracy.pop("accuracy", None), accuracy.pop("accuracy_metric", None)
    out.update(accuracy)
    out["train_cache_hit"] = bool(facts.train_info.get("cache_hit"))
    if facts.train_info.get("weights"):  # a weights file loaded instead of training
        out["weights_file"] = str(facts.train_info["weights"])
    out["input_size"] = case.input_size or int(get_spec(case.model).input_shape[-1])
    out["prep_seconds"] = (float(report.get("prune_seconds", 0.0))
                           + float(facts.recovery.get("recovery_seconds", 0.0))
                           + prep_seconds_of(facts.engine_facts))
    out["versions"] = {VERSION_KEYS[k]: v for k, v in facts.versions.items() if k in VERSION_KEYS}
    out["latency_definition"] = LATENCY_DEFINITION["cuda" if facts.device.startswith("cuda")
                                                   else "cpu"]
    latency = None
    if timed is not None and timed.samples:
        latency = LatencyStats.from_seconds(timed.samples)
        out.update(timing_facts(timed.samples, case.batch_size, facts.deadline_ms, timed.facts))
    elif timed is not None:
        out.update(timed.facts)
    axes = case.axes()
    return CaseRecord(
        case_id=case.id, model=case.model, dataset=case.dataset, pruner=str(axes["pruner"]),
        ratio=float(axes["ratio"]), workflow=case.workflow, precision=case.precision,
        batch_size=case.batch_size, task=facts.task, baseline_case_id=case.baseline.id,
        accuracy=finite(value), accuracy_metric=str(metric or NOT_MEASURED),
        reference_accuracy=finite(facts.reference.get("accuracy")),
        min_accuracy=facts.floor.get("min_accuracy"), max_drop=facts.floor.get("max_drop"),
        latency=latency, samples_s=tuple(timed.samples) if timed is not None else (),
        blocks=tuple(timed.blocks) if timed is not None else (), build_only=build_only,
        facts={k: v for k, v in out.items() if k not in _CASE_KEYS})


_CASE_KEYS = {"case_id", "model", "dataset", "pruner", "ratio", "workflow", "precision",
              "batch_size"}
# fields the record sets itself: an engine fact of the same name does not replace them
_RECORD_KEYS = {*_CASE_KEYS, "schema_version", "task", "baseline_case_id", "precision_requested",
                "accuracy", "accuracy_metric", "reference_accuracy", "min_accuracy", "max_drop"}


def add_rounds(benchmark: Any, samples: list[float]) -> None:
    """Add rounds timed outside ``benchmark.pedantic`` (the interleaved blocks) to the
    fixture's statistics, through ``benchmark.stats.update`` (pytest-benchmark's per-round entry
    point: what pedantic itself calls). pytest-benchmark has no public API for rounds timed
    elsewhere; tests/test_hosts.py fails loudly if this one goes away."""
    update = getattr(getattr(benchmark, "stats", None), "update", None)
    if update is None:
        raise RuntimeError("pytest-benchmark's fixture has no stats.update(); this "
                           "pytest-pqbench cannot record interleaved blocks with it")
    for seconds in samples:
        update(seconds)


def time_final_block(case: Case, benchmark: Any, engine: Any, batch: np.ndarray,
                     settings: Any, phase: PhaseResult | None, device: str) -> Timed:
    """The phase's blocks of this case (or, without a phase, blocks timed here and said so),
    plus a final block through ``benchmark.pedantic``; every round ends in ``stats.data``."""
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
    cuda = device.startswith("cuda")
    # the final block goes through pytest-benchmark (its own timer and table); the earlier
    # blocks' rounds are then added to the same statistics, so stats.data holds every round
    final_start = time.perf_counter() - origin  # (its warm-up calls included)
    with PeakMemory() as memory, cuda_memory(cuda) as device_memory:
        benchmark.pedantic(engine, args=(batch,), rounds=per_block, iterations=1,
                           warmup_rounds=BLOCK_WARMUP)
    timed = Timed(facts={**policy, "peak_rss_bytes": memory.peak_rss,
                         "idle_rss_bytes": memory.idle_rss, "rss_delta_bytes": memory.delta,
                         "memory_method": memory.method, **device_memory})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: the call ran once, untimed
        final = Block(len(timing.blocks), final_start, tuple(stats.stats.data),
                      timing.blocks[-1].host_ms if timing.blocks else None)
        add_rounds(benchmark, timing.samples)  # stats.data: the final block, then the others
        timed.samples = [float(s) for s in stats.stats.data]
        timed.blocks = block_records([final, *timing.blocks])
    if cuda:
        timed.facts.update(cuda_event_timings(engine, batch, min(per_block * 2, 200), device))
    return timed


def block_records(blocks_in_data_order: list[Block]) -> list[BlockRecord]:
    """The blocks with their offset into ``stats.data``, in time order."""
    out, at = [], 0
    for block in blocks_in_data_order:
        out.append(BlockRecord(block.index, round(block.start_s, 4), len(block.samples),
                               block.median_ms, block.host_ms, at))
        at += len(block.samples)
    return sorted(out, key=lambda b: b.start_s)


def record_from_rounds(facts: CaseFacts, samples: list[float], settings: Any) -> CaseRecord:
    """The record of a case whose test timed its engine itself (``benchmark.pedantic`` or
    ``benchmark(...)`` without ``pq_timer``): its rounds are one contiguous window, recorded
    as one block and said so (``interleaved`` false)."""
    policy = {"timing_profile": settings.timing_profile, "interleaved": False,
              "timed_by": "the test's own benchmark call (not pq_timer): one contiguous block"}
    block = Block(0, 0.0, tuple(samples))
    return make_record(facts, Timed(list(samples), block_records([block]), policy))
