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
# Numbers a verdict is computed from: each must be a finite number >= 0 where present. A NaN
# compares False with everything, so it would read as "unchanged" and pass a gate.
STATS_NUMBERS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr",
                 "hd15iqr", "ops", "total", "rounds", "iterations", "iqr_outliers",
                 "stddev_outliers")
CASE_NUMBERS = ("accuracy", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms",
                "model_bytes", "macs", "params")
CASE_TEXTS = ("model", "dataset", "pruner", "workflow", "precision", "accuracy_metric")


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


def read_run(path: Path | str) -> Run:
    """Load and validate one run file; any problem is an ``InputError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "truncated JSON" if exc.pos >= len(text.rstrip()) else "not JSON"
        raise InputError(f"{path}: not a pytest-benchmark run ({what}: {exc.msg} at line "
                         f"{exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise InputError(f"{path}: not a pytest-benchmark run (no 'benchmarks' list)")
    meta = data.get("pqbench")
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise InputError(f"{path}: no 'pqbench' section; it was not written with the "
                         "pytest-pqbench plugin active")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise InputError(f"{path}: results schema version {meta['schema_version']!r}, this "
                         f"pytest-pqbench reads version {SCHEMA_VERSION}; re-run the benchmarks "
                         "or use the matching pytest-pqbench version")
    check_sections(path, data)
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
            raise InputError(f"{path}: benchmark #{i} has no 'stats'; the file is damaged")
        check_values(path, i, bench)
    return Run(path, data)


def check_sections(path: Path, data: dict[str, Any]) -> None:
    """The run-level sections readers look into are mappings (or absent)."""
    machine = data.get("machine_info")
    sections = {"machine_info": machine, "commit_info": data.get("commit_info"),
                "pqbench.split": data["pqbench"].get("split")}
    if isinstance(machine, dict):
        facts = machine.get("pqbench")
        sections.update({"machine_info.cpu": machine.get("cpu"),
                         "machine_info.pqbench": facts})
        if isinstance(facts, dict):
            sections["machine_info.pqbench.control"] = facts.get("control")
    for name, value in sections.items():
        if value is not None and not isinstance(value, dict):
            raise InputError(f"{path}: {name} is {type(value).__name__} {value!r:.60}, not a "
                             "mapping; the run is damaged or was edited")


def _bad_number(value: Any) -> str | None:
    """Why ``value`` is not a finite number >= 0, or None when it is one."""
    number = finite(value)
    if number is None:
        plain = isinstance(value, int | float) and not isinstance(value, bool)
        return f"{value!r}, not a finite number" if plain else \
            f"{type(value).__name__} {value!r}, not a number"
    return f"{value!r}, negative" if number < 0 else None


def check_values(path: Path, index: int, bench: dict[str, Any]) -> None:
    """Every figure a report or a gate reads is a finite number >= 0 (``InputError`` naming the
    file, the case and the field otherwise); accuracy may be NaN only when not measured."""
    info = bench.get("extra_info")
    if info is not None and not isinstance(info, dict):
        raise InputError(f"{path}: benchmark #{index}: 'extra_info' is not a mapping")
    info = info or {}
    case = info.get("case_id") or bench.get("fullname") or bench.get("name") or f"#{index}"
    if "case_id" in info and not isinstance(info["case_id"], str):
        raise InputError(f"{path}: benchmark #{index}: extra_info.case_id is "
                         f"{info['case_id']!r}, not a string")

    def fail(field_name: str, why: str) -> None:
        raise InputError(f"{path}: case {case}: {field_name} is {why}; the run is damaged or "
                         "was edited")

    stats = bench["stats"]
    for name in STATS_NUMBERS:
        if name in stats and (why := _bad_number(stats[name])):
            fail(f"stats.{name}", why)
    samples = stats.get("data")
    if samples is not None:
        if not isinstance(samples, list):
            fail("stats.data", f"{type(samples).__name__}, not a list of seconds")
        for j, value in enumerate(samples):
            if why := _bad_number(value):
                fail(f"stats.data[{j}]", why)
    batch = info.get("batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        fail("extra_info.batch_size", f"{batch!r}, not a positive integer")
    ratio = info.get("ratio", 0.0)
    if (why := _bad_number(ratio)) or ratio >= 1:
        fail("extra_info.ratio", why or f"{ratio!r}, not in [0, 1)")
    for name in CASE_TEXTS:
        if name in info and not isinstance(info[name], str):
            fail(f"extra_info.{name}", f"{info[name]!r}, not a string")
    for name in CASE_NUMBERS:
        if name not in info:
            continue
        value = info[name]
        if (name == "accuracy" and info.get("accuracy_metric") == NOT_MEASURED
                and (value is None or isinstance(value, float) and math.isnan(value))):
            continue
        if why := _bad_number(value):
            fail(f"extra_info.{name}", why)


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
