"""Read pytest-benchmark runs written by pytest-pqbench into polars, validating them first.

A RUN is a JSON file (``--benchmark-json``) or a run saved in pytest-benchmark storage
(``.benchmarks/<machine>/NNNN_<name>.json``, ``--benchmark-autosave``), named by its number
(``3`` or ``0003``) or a glob on its file name, as ``pytest --benchmark-compare`` accepts.
Reading never writes: files are opened read-only and no directory is created.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from .. import SCHEMA_VERSION
from ..errors import InputError
from .record import NOT_MEASURED, CaseRecord, finite

DEFAULT_STORAGE = Path(".benchmarks")
# Columns every case row has, so a frame built from any valid run can be selected on them.
CASE_COLUMNS = ("case_id", "model", "dataset", "pruner", "ratio", "workflow", "precision",
                "batch_size")
# What every field a reader uses must be, where present (``check_values``): the one description
# of a valid run. A NaN compares False with everything, so it would read as "unchanged" and pass
# a gate; a string where a number belongs, or a section that is a list, would be a traceback.
# Kinds: number (finite, >= 0), fraction (number in [0, 1]), count (integer >= 0), positive
# (integer >= 1), text, mapping, list. ``STRICT`` fields may not be null.
STATS_FIELDS = {**dict.fromkeys(("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3",
                                 "ld15iqr", "hd15iqr", "ops", "total"), "number"),
                **dict.fromkeys(("rounds", "iterations", "iqr_outliers", "stddev_outliers"),
                                "count")}
INFO_FIELDS = {
    **dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "stddev_ms",
                     "jitter_ms", "model_bytes", "macs", "params", "macs_before", "params_before",
                     "pruned_model_bytes", "throughput_ips", "noise_pct", "deadline_ms",
                     "min_time_s", "parity_error", "latency_speedup", "throughput_improvement",
                     "size_reduction", "memory_reduction", "achieved_macs_per_s", "efficiency",
                     "build_seconds", "engine_seconds", "prep_seconds", "prune_seconds",
                     "peak_rss_bytes", "idle_rss_bytes", "export_seconds"), "number"),
    **dict.fromkeys(("accuracy", "reference_accuracy", "min_accuracy", "max_drop",
                     "precision_engaged", "zero_fraction", "deadline_miss_rate",
                     "int8_mac_share"), "fraction"),
    **dict.fromkeys(("rounds", "block_count", "rounds_per_block", "warmup_rounds", "min_rounds",
                     "max_rounds", "input_size", "finetune_epochs", "block_warmup", "qdq_pairs"),
                    "count"),
    **dict.fromkeys(("batch_size", "threads"), "positive"),
    **dict.fromkeys(("model", "dataset", "pruner", "workflow", "precision", "accuracy_metric",
                     "task", "baseline_case_id", "device", "provider", "timing_profile",
                     "precision_requested", "latency_definition"), "text"),
    **dict.fromkeys(("versions", "artefact", "prune_options", "precision_by_op"), "mapping"),
    **dict.fromkeys(("blocks", "p50_ci_ms", "providers"), "list"),
    "ratio": "ratio",
}
STRICT = {"accuracy", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "model_bytes",
          "macs", "params", "batch_size", "ratio", *STATS_FIELDS}
# run-level sections: dotted path -> kind
RUN_FIELDS = {
    "machine_info": "mapping", "commit_info": "mapping", "pqbench.split": "mapping",
    "pqbench.settings": "mapping", "pqbench.timing_phase": "mapping",
    "pqbench.cache_hits": "count", "pqbench.cache_misses": "count",
    "machine_info.cpu": "mapping", "machine_info.pqbench": "mapping",
    "machine_info.pqbench.control": "mapping", "machine_info.pqbench.versions": "mapping",
    "machine_info.pqbench.peaks": "mapping", "machine_info.pqbench.control.median_s": "number",
    "machine_info.pqbench.physical_cores": "count", "machine_info.pqbench.logical_cores": "count",
}
BLOCK_FIELDS = {"index": "count", "start_s": "number", "rounds": "positive",
                "median_ms": "number", "host_ms": "number", "offset": "count"}
MAX_DEPTH = 32  # a pytest-benchmark run nests 6 levels; deeper is damage (and slow to walk)


@dataclass(frozen=True)
class Run:
    """One validated run: its file, its raw JSON and the case records it holds."""

    path: Path
    data: dict[str, Any] = field(repr=False)

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        """case id -> raw pytest-benchmark entry of pqbench cases (``pqbench merge`` writes
        these back as they are)."""
        out = {}
        for bench in self.data["benchmarks"]:
            info = bench.get("extra_info") or {}
            if "case_id" in info:
                out[info["case_id"]] = bench
        return out

    @cached_property
    def cases(self) -> dict[str, CaseRecord]:
        """case id -> the case's record (read once per run)."""
        return {case_id: CaseRecord.from_benchmark(bench)
                for case_id, bench in self.entries.items()}

    @property
    def commit(self) -> str:
        return str((self.data.get("commit_info") or {}).get("id") or "")[:10]

    @property
    def date(self) -> str:
        commit = self.data.get("commit_info") or {}
        return str(self.data.get("datetime") or commit.get("time") or "")

    @property
    def machine(self) -> dict[str, Any]:
        return self.data.get("machine_info") or {}

    @property
    def control_seconds(self) -> float | None:
        """Median of the control kernel timed on this run's machine (``environment``)."""
        control = (self.machine.get("pqbench") or {}).get("control") or {}
        value = finite(control.get("median_s"))
        return value if value is not None and value > 0 else None

    @property
    def timing_profiles(self) -> set[str]:
        return {str(r.fact("timing_profile") or "full") for r in self.cases.values()}

    def frame(self) -> pl.DataFrame:
        """One row per case: every scalar ``extra_info`` field, the raw samples (seconds) as
        ``samples_s``, and where the row came from (``run``, ``commit``, ``date``)."""
        rows = [{**record.row(), "run": str(self.path), "commit": self.commit,
                 "date": self.date} for record in self.cases.values()]
        if not rows:
            return pl.DataFrame(schema={c: pl.Utf8 for c in CASE_COLUMNS})
        return pl.DataFrame(rows, infer_schema_length=None, strict=False)


def read_json(path: Path, what: str = "a pytest-benchmark run") -> Any:
    """The JSON in ``path``; ``InputError`` naming the file for anything that is not plain JSON
    of sane shape (unreadable, truncated, nested too deep, a number too long to read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        kind = "truncated JSON" if exc.pos >= len(text.rstrip()) else "not JSON"
        raise InputError(f"{path}: not {what} ({kind}: {exc.msg} at line {exc.lineno} column "
                         f"{exc.colno})") from None
    except RecursionError:
        raise InputError(f"{path}: not {what} (JSON nested too deep to read)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{path}: not {what} ({exc})") from None
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise InputError(f"{path}: not {what} (JSON nested {depth} levels deep; a run has "
                         f"fewer than {MAX_DEPTH})")
    return data


def _depth(data: Any) -> int:
    """Nesting depth of ``data``, walked without recursion (stops counting past MAX_DEPTH)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = value.values() if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        stack.extend((child, level + 1) for child in children
                     if isinstance(child, dict | list))
    return deepest


def read_run(path: Path | str) -> Run:
    """Load and validate one run file; any problem is an ``InputError`` naming the file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise InputError(f"{path}: not a pytest-benchmark run (no 'benchmarks' list)")
    meta = data.get("pqbench")
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise InputError(f"{path}: no 'pqbench' section; it was not written with the "
                         "pytest-pqbench plugin active")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise InputError(f"{path}: results schema version {meta['schema_version']!r:.40}, this "
                         f"pytest-pqbench reads version {SCHEMA_VERSION}; re-run the benchmarks "
                         "or use the matching pytest-pqbench version")
    check_sections(path, data)
    seen: dict[str, int] = {}
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
            raise InputError(f"{path}: benchmark #{i} has no 'stats'; the file is damaged")
        check_values(path, i, bench)
        case_id = (bench.get("extra_info") or {}).get("case_id")
        if case_id is not None:
            if case_id in seen:  # a reader would silently keep one of them
                raise InputError(f"{path}: case {case_id} is recorded twice (benchmarks "
                                 f"#{seen[case_id]} and #{i}); one run holds each case once: "
                                 "remove one, or merge runs with pqbench merge")
            seen[case_id] = i
    return Run(path, data)


def check_sections(path: Path, data: dict[str, Any]) -> None:
    """The run-level sections and figures readers look into have their kind (or are absent)."""
    for dotted, kind in RUN_FIELDS.items():
        value: Any = data
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and (why := _bad(value, kind)):
            raise InputError(f"{path}: {dotted} is {why}; the run is damaged or was edited")


def _bad_number(value: Any) -> str | None:
    """Why ``value`` is not a finite number >= 0, or None when it is one."""
    number = finite(value)
    if number is None:
        plain = isinstance(value, int | float) and not isinstance(value, bool)
        return f"{value!r:.40}, not a finite number" if plain else \
            f"{type(value).__name__} {value!r:.40}, not a number"
    return f"{value!r}, negative" if number < 0 else None


def _bad(value: Any, kind: str) -> str | None:
    """Why ``value`` is not of ``kind`` (see ``INFO_FIELDS``), or None."""
    if kind in ("number", "fraction", "ratio"):
        if why := _bad_number(value):
            return why
        if kind == "fraction" and value > 1:
            return f"{value!r}, not a fraction in [0, 1]"
        if kind == "ratio" and value >= 1:
            return f"{value!r}, not in [0, 1)"
        return None
    if kind in ("count", "positive"):
        least = 1 if kind == "positive" else 0
        if (isinstance(value, bool) or not isinstance(value, int) or value < least
                or finite(value) is None):
            return f"{value!r:.40}, not an integer >= {least}"
        return None
    wanted = {"text": str, "mapping": dict, "list": list}[kind]
    if not isinstance(value, wanted):
        return f"{type(value).__name__} {value!r:.40}, not a {kind}"
    return None


def check_values(path: Path, index: int, bench: dict[str, Any]) -> None:
    """Every field a report or a gate reads has its kind (``InputError`` naming the file, the
    case and the field otherwise); accuracy may be NaN only when not measured."""
    info = bench.get("extra_info")
    if info is not None and not isinstance(info, dict):
        raise InputError(f"{path}: benchmark #{index}: 'extra_info' is not a mapping")
    info = info or {}
    case = info.get("case_id") or bench.get("fullname") or bench.get("name") or f"#{index}"
    if "case_id" in info and (not isinstance(info["case_id"], str) or not info["case_id"]):
        raise InputError(f"{path}: benchmark #{index}: extra_info.case_id is "
                         f"{info['case_id']!r:.40}, not a case id")
    case = str(case)[:120]

    def fail(field_name: str, why: str) -> None:
        raise InputError(f"{path}: case {case}: {field_name} is {why}; the run is damaged or "
                         "was edited")

    stats = bench["stats"]
    for name, kind in STATS_FIELDS.items():
        if name in stats and (why := _bad(stats[name], kind)):
            fail(f"stats.{name}", why)
    samples = stats.get("data")
    if samples is not None:
        if not isinstance(samples, list):
            fail("stats.data", f"{type(samples).__name__}, not a list of seconds")
        for j, value in enumerate(samples):
            if why := _bad_number(value):
                fail(f"stats.data[{j}]", why)
    not_measured = info.get("accuracy_metric") == NOT_MEASURED
    for name, kind in INFO_FIELDS.items():
        if name not in info:
            continue
        value = info[name]
        if value is None and name not in STRICT:
            continue
        if (name in ("accuracy", "reference_accuracy") and (not_measured or name != "accuracy")
                and (value is None or isinstance(value, float) and math.isnan(value))):
            continue  # not measured: NaN (the reference of an unmeasured case too)
        if why := _bad(value, kind):
            fail(f"extra_info.{name}", why)
    check_blocks(info.get("blocks"), len(samples) if isinstance(samples, list) else None, fail)
    interval = info.get("p50_ci_ms")
    if isinstance(interval, list) and (len(interval) != 2 or any(_bad_number(v)
                                                                   for v in interval)):
        fail("extra_info.p50_ci_ms", f"{interval!r:.60}, not two finite numbers >= 0")


def check_blocks(blocks: Any, samples: int | None, fail: Any) -> None:
    """Each recorded block: a mapping of ``BLOCK_FIELDS``, its rounds inside ``stats.data``."""
    for k, block in enumerate(blocks or []):
        if not isinstance(block, dict):
            fail(f"extra_info.blocks[{k}]", f"{type(block).__name__} {block!r:.40}, not a "
                                            "mapping")
        missing = [name for name in ("index", "start_s", "rounds", "median_ms")
                   if block.get(name) is None]
        if missing:  # the writer records every one of them
            fail(f"extra_info.blocks[{k}]", f"without {', '.join(missing)}")
        for name, kind in BLOCK_FIELDS.items():
            value = block.get(name)
            if value is None and name in ("host_ms", "offset"):  # no control reading / older
                continue
            if why := _bad(value, kind):
                fail(f"extra_info.blocks[{k}].{name}", why)
        offset, rounds = block.get("offset"), block.get("rounds")
        if samples is not None and offset is not None and rounds is not None \
                and offset + rounds > samples:
            fail(f"extra_info.blocks[{k}].offset", f"{offset} (+ {rounds} rounds), beyond the "
                                                   f"{samples} rounds in stats.data")


def saved_runs(storage: Path | str = DEFAULT_STORAGE) -> list[Path]:
    """Every run saved in pytest-benchmark storage, oldest number first."""
    storage = Path(storage)
    files = storage.glob("*/[0-9][0-9][0-9][0-9]_*.json")
    return sorted(files, key=lambda p: (p.name, p.parent.name))


def resolve(spec: str, storage: Path | str = DEFAULT_STORAGE) -> list[Path]:
    """Files a RUN argument names: an existing file, or saved runs matching a number or glob."""
    candidate = Path(spec)
    if candidate.is_file():
        return [candidate]
    storage = Path(storage)
    if spec.isdigit():
        pattern = f"*/{int(spec):04d}_*.json"
    else:
        parts = candidate.parts
        machine, name = (parts[0], parts[1]) if len(parts) == 2 else ("*", spec)
        pattern = f"{machine}/{name.rstrip('*')}*.json" if len(parts) <= 2 else ""
    matches = sorted(storage.glob(pattern), key=lambda p: (p.name, p.parent.name)) \
        if pattern else []
    if not matches:
        saved = [f"{p.parent.name}/{p.name}" for p in saved_runs(storage)]
        hint = ("saved runs: " + ", ".join(saved[-10:])) if saved else \
            f"no run is saved in {storage}/ (pytest --benchmark-autosave saves one)"
        raise InputError(f"{spec}: no such file, and no saved run in {storage}/ matches it; "
                         + hint)
    return matches


def load_runs(specs: list[str], storage: Path | str = DEFAULT_STORAGE) -> list[Run]:
    """Resolve and validate every RUN argument before anything else happens."""
    return [read_run(path) for spec in specs for path in resolve(spec, storage)]


def load_one(spec: str, storage: Path | str = DEFAULT_STORAGE) -> Run:
    """Exactly one run (``compare``'s BASELINE / CANDIDATE)."""
    paths = resolve(spec, storage)
    if len(paths) > 1:
        names = ", ".join(str(p) for p in paths)
        raise InputError(f"{spec}: names {len(paths)} runs ({names}); name exactly one")
    run = read_run(paths[0])
    if not run.cases:  # nothing to compare with: an empty baseline would pass every gate
        raise InputError(f"{run.path}: no pqbench case in the run")
    return run


def same_run(base: Run, cand: Run) -> str | None:
    """Why comparing ``base`` with ``cand`` says nothing (one file twice, or two copies of one
    run), else None."""
    from ..outputs import same_file

    if same_file(base.path, cand.path):
        return (f"{base.path} is compared with itself: every case comes out unchanged by "
                "construction; give two different runs")
    if base.data == cand.data:
        return (f"{base.path} and {cand.path} hold the same run (identical content): every case "
                "comes out unchanged by construction")
    return None


def cases_frame(runs: list[Run]) -> pl.DataFrame:
    """All runs' cases in one frame; a case in several runs keeps its row from the last one
    (runs of a pytest-split matrix are disjoint; a re-run of a case replaces it)."""
    frames = [run.frame() for run in runs]
    frames = [f for f in frames if f.height]
    if not frames:
        names = ", ".join(str(r.path) for r in runs)
        raise InputError(f"{names}: no pqbench case in the run(s)")
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.unique(subset="case_id", keep="last", maintain_order=True)
