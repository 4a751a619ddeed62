"""Merge the JSON of a sharded matrix (pytest-split groups, one per device or CI job) into one run.

The merged file is a plain pytest-benchmark run (``machine_info``, ``commit_info``,
``benchmarks``...) that ``pqbench report`` / ``compare`` and ``pytest-benchmark compare`` read. Its
``pqbench`` section says where each part came from (``merged_from``). Runs from different commits
or configurations measure different things, so they are refused unless ``force`` is given:
configuration is the run's pqbench settings (less the machine-local ``cache_dir`` and
``build_timeout``), the package versions, the pytest-benchmark version and the accelerator (GPU
model, or CPU model on a CPU run).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from ..errors import InputError
from .load import Run
from .notes import int8_vs_fp32
from .outcomes import Outcome, run_outcomes, section
from .record import CaseRecord, add_ratio_metrics


def accelerator(run: Run) -> str | None:
    facts = run.machine.get("pqbench") or {}
    return facts.get("gpu") or facts.get("cpu_model") or run.machine.get("cpu", {}).get("brand_raw")


def configuration(run: Run) -> dict[str, Any]:
    meta = run.data.get("pqbench") or {}
    facts = run.machine.get("pqbench") or {}
    split = meta.get("split") or {}
    return {"settings": meta.get("settings"), "versions": facts.get("versions"),
            "accelerator": accelerator(run), "pytest-benchmark": run.data.get("version"),
            "schema_version": meta.get("schema_version"), "splits": split.get("splits")}


def _differences(runs: list[Run]) -> list[str]:
    first = configuration(runs[0])
    problems = []
    for run in runs[1:]:
        other = configuration(run)
        for key in first:
            if other[key] != first[key]:
                detail = _diff(first[key], other[key])
                problems.append(f"{run.path}: {key} differs from {runs[0].path}{detail}")
    return problems


def _diff(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return " (" + "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:5]) + ")"
    return f" ({a!r} vs {b!r})"


def _group(run: Run) -> int | None:
    split = (run.data.get("pqbench") or {}).get("split") or {}
    return split.get("group")


def merge_runs(runs: list[Run], force: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The merged run and warnings. Raises ``InputError`` on a conflict unless ``force``."""
    if not runs:
        raise InputError("nothing to merge: give at least one run")
    refusals, warnings = [], []
    commits = {str(r.path): (r.data.get("commit_info") or {}).get("id") for r in runs}
    if len(set(commits.values())) > 1:
        refusals.append("runs are from different commits: " + ", ".join(
            f"{path} at {str(commit)[:10]}" for path, commit in commits.items()))
    refusals += _differences(runs)
    groups = [g for g in map(_group, runs) if g is not None]
    repeated = sorted(g for g, n in Counter(groups).items() if n > 1)
    if repeated:
        refusals.append(f"split group(s) {repeated} appear in more than one run")
    splits = (runs[0].data.get("pqbench") or {}).get("split") or {}
    if splits.get("splits") and len(groups) == len(runs):
        missing = sorted(set(range(1, splits["splits"] + 1)) - set(groups))
        if missing:
            warnings.append(f"split group(s) {missing} of {splits['splits']} are missing: the "
                            "merged run does not cover the whole matrix")
    seen: dict[str, str] = {}
    for run in runs:
        for case_id in run.cases:
            if case_id in seen:
                refusals.append(f"case {case_id} is in both {seen[case_id]} and {run.path}")
            seen[case_id] = str(run.path)
    if refusals and not force:
        raise InputError("refusing to merge (--force merges anyway; a case in several runs "
                         "then keeps the last one):\n  " + "\n  ".join(refusals))
    warnings += [f"merged despite: {r}" for r in refusals]

    ordered = sorted(runs, key=lambda r: (_group(r) is None, _group(r) or 0))
    benchmarks: dict[str, dict[str, Any]] = {}
    for run in ordered:
        for bench in run.data["benchmarks"]:
            key = (bench.get("extra_info") or {}).get("case_id") or bench.get("fullname")
            benchmarks.pop(key, None)  # a repeated case keeps its last run, in that run's place
            benchmarks[key] = copy.deepcopy(bench)
    merged_benchmarks = list(benchmarks.values())
    # ratio metrics need the baseline case, which may have run in another group
    records = {k: CaseRecord.from_benchmark(b) for k, b in benchmarks.items()
               if "case_id" in (b.get("extra_info") or {})}
    for case_id, ratios in add_ratio_metrics(records).items():
        benchmarks[case_id]["extra_info"].update(ratios)
    for case_id, facts in int8_vs_fp32(records).items():  # the FP32 twin may be in another group
        benchmarks[case_id]["extra_info"].update(facts)
    outcomes: dict[str, Outcome] = {}  # every group's selected cases, with their outcomes
    for run in ordered:
        outcomes.update(run_outcomes(run.data))

    first = ordered[0].data
    hits = sum(int((r.data.get("pqbench") or {}).get("cache_hits") or 0) for r in runs)
    misses = sum(int((r.data.get("pqbench") or {}).get("cache_misses") or 0) for r in runs)
    meta = copy.deepcopy(first.get("pqbench") or {})
    meta.update({
        "split": None, "cache_hits": hits, "cache_misses": misses,
        "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
        "merged_from": [{
            "file": str(r.path), "group": _group(r),
            "commit": (r.data.get("commit_info") or {}).get("id"),
            "node": r.machine.get("node"), "accelerator": accelerator(r),
            "datetime": r.data.get("datetime"), "cases": len(r.data["benchmarks"])}
            for r in ordered]})
    meta.pop("cache_dir", None)
    meta.pop("cases", None)
    meta.pop("outcomes", None)
    if outcomes:
        meta.update(section(outcomes.values()))
    merged = {**copy.deepcopy(first), "benchmarks": merged_benchmarks, "pqbench": meta,
              "datetime": max(str(r.data.get("datetime") or "") for r in runs)}
    return merged, warnings
