"""Build the ``extra_info`` record of one case and the run-level additions to the JSON.

Field names are the documented contract (README "Results schema"); ``pqbench report`` and
``pqbench compare`` read exactly these.
"""

from __future__ import annotations

import json
from typing import Any

from .. import SCHEMA_VERSION
from ..case import Case
from ..metrics.latency import LATENCY_DEFINITION, LatencyStats, deadline_miss_rate, throughput_ips

ACCURACY_RENAMES = {"precision": "box_precision", "recall": "box_recall"}
VERSION_KEYS = {"torch": "torch", "onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime",
                "torch-pruning": "torch_pruning", "onnx": "onnx", "torchao": "torchao",
                "tensorrt": "tensorrt", "torch-tensorrt": "torch_tensorrt"}


def case_record(case: Case, *, task: str, device: str, threads: int, engine_facts: dict[str, Any],
                prune_report: dict[str, Any], recovery: dict[str, Any], accuracy: dict[str, Any],
                reference: dict[str, Any], floor: dict[str, float], versions: dict[str, str],
                train_info: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "case_id": case.id,
                              **case.axes(), "task": task, "device": device, "threads": threads,
                              "precision_requested": case.precision,
                              "baseline_case_id": case.baseline.id}
    # every fact the engine reports (workflows.base.EngineFacts documents the known ones); a
    # case field keeps its value, and a value JSON cannot hold is left out
    record.update({k: v for k, v in engine_facts.items() if k not in record and _json_able(v)})
    record.update({k: prune_report[k] for k in ("params", "macs", "params_before", "macs_before",
                                                "zero_fraction", "prune_seconds")})
    record["pruner_structure"] = prune_report["structure"]
    # not in the case id: two runs with other prune options have the same ids
    record["prune_options"] = dict(prune_report.get("options") or {})
    record["pruned_model_bytes"] = prune_report["model_bytes"]
    if prune_report.get("note"):
        record["prune_note"] = prune_report["note"]
    record.setdefault("model_bytes", prune_report["model_bytes"])
    record.update(recovery)
    # detection's precision / recall must not shadow the case's numeric precision axis
    record.update({ACCURACY_RENAMES.get(k, k): v for k, v in accuracy.items()})
    ref = reference["accuracy"]
    record["reference_accuracy"] = ref
    record["accuracy_drop"] = ref - accuracy["accuracy"]
    record["min_accuracy"] = floor["min_accuracy"]
    record["max_drop"] = floor["max_drop"]
    record["train_cache_hit"] = bool(train_info.get("cache_hit"))
    if train_info.get("weights"):  # a weights file loaded instead of training
        record["weights_file"] = str(train_info["weights"])
    record["input_size"] = input_size_of(case)
    from ..workflows.base import prep_seconds_of  # here: pqbench merge imports this module

    record["prep_seconds"] = (float(prune_report.get("prune_seconds", 0.0))
                              + float(recovery.get("recovery_seconds", 0.0))
                              + prep_seconds_of(engine_facts))
    record["versions"] = {VERSION_KEYS[k]: v for k, v in versions.items() if k in VERSION_KEYS}
    record["latency_definition"] = LATENCY_DEFINITION["cuda" if device.startswith("cuda")
                                                      else "cpu"]
    return record


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def timing_record(samples: list[float], batch_size: int, deadline_ms: float | None,
                  rounds_policy: dict[str, Any]) -> dict[str, Any]:
    stats = LatencyStats.from_seconds(samples)
    out: dict[str, Any] = {**stats.as_dict(), **rounds_policy,
                           "throughput_ips": throughput_ips(stats.p50_ms, batch_size)}
    if deadline_ms:
        out["deadline_ms"] = deadline_ms
        out["deadline_miss_rate"] = deadline_miss_rate(samples, deadline_ms)
    return out


def block_record(blocks_in_data_order: list[Any]) -> dict[str, Any]:
    """The blocks of a case (``timing.Block``), listed in time order with their offset into
    ``stats.data``, plus the session's noise figure: ``noise_pct``, the standard deviation of
    the log block medians (in %), and ``p50_ci_ms``, a 95% interval of the block-median centre
    within this session (a t-interval on the log block medians)."""
    import math

    import numpy as np
    from scipy import stats as st

    offsets, at = [], 0
    for block in blocks_in_data_order:
        offsets.append(at)
        at += len(block.samples)
    rows = sorted(({**b.as_record(), "offset": o} for b, o in zip(blocks_in_data_order, offsets,
                                                                    strict=True)),
                  key=lambda r: r["start_s"])
    out: dict[str, Any] = {"blocks": rows, "block_count": len(rows)}
    logs = np.log([r["median_ms"] for r in rows if r["median_ms"] > 0])
    if logs.size >= 2:
        sd = float(logs.std(ddof=1))
        half = float(st.t.ppf(0.975, logs.size - 1)) * sd / math.sqrt(logs.size)
        out["noise_pct"] = sd * 100.0
        out["p50_ci_ms"] = [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]
    return out


def add_ratio_metrics(benchmarks: list[dict[str, Any]]) -> None:
    """Speedups of 004's ratio metrics, relative to the run's baseline case of each case (same
    model, dataset and batch size; ``none`` pruner, ``torch`` FP32). Absent when not in the run."""
    by_id = {b.get("extra_info", {}).get("case_id"): b.get("extra_info", {}) for b in benchmarks}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "case_id" not in info or "p50_ms" not in info:
            continue
        base = by_id.get(info.get("baseline_case_id"))
        if not base or "p50_ms" not in base:
            continue
        info["latency_speedup"] = base["p50_ms"] / info["p50_ms"]
        info["throughput_improvement"] = info["throughput_ips"] / base["throughput_ips"]
        if info.get("rss_delta_bytes") and base.get("rss_delta_bytes"):
            info["memory_reduction"] = base["rss_delta_bytes"] / info["rss_delta_bytes"]
        if info.get("model_bytes") and base.get("model_bytes"):
            info["size_reduction"] = base["model_bytes"] / info["model_bytes"]


def input_size_of(case: Case) -> int:
    """The case's square input size in pixels (its own, else its model's)."""
    from ..models import get_spec

    return case.input_size or int(get_spec(case.model).input_shape[-1])


def add_efficiency(benchmarks: list[dict[str, Any]], peaks: dict[str, Any]) -> None:
    """``achieved_macs_per_s`` (MACs x batch size / p50) and ``efficiency``, its fraction of the
    machine's peak for the case's precision (``environment.machine_peaks``: FP32 and INT8 only;
    absent for other precisions or when the peak was not measured)."""
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if not info.get("macs") or not info.get("p50_ms"):
            continue
        achieved = info["macs"] * info["batch_size"] / (info["p50_ms"] / 1000)
        info["achieved_macs_per_s"] = achieved
        peak = peaks.get(f"{info.get('precision')}_macs_per_s")
        if peak:
            info["efficiency"] = achieved / peak
