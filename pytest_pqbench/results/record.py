"""The case record: what one case measured, as one typed value.

The run produces it (``stages.record``), writes ``extra_info`` from it once
(``CaseRecord.extra_info``), and every reader takes it back from a results file once
(``CaseRecord.from_benchmark``, called by ``results.load``): the in-pytest gate, the terminal
summary, ``pqbench report`` / ``compare`` / ``noise`` / ``history``. In the spirit of
``torch.utils.benchmark.Measurement``: the record knows its own figures (p50 and its interval,
the block spread, the floor verdict, the speed-up over its baseline case); rendering is elsewhere.

Field names of ``extra_info`` are the documented contract (docs, "Results schema"). The typed
fields below are the ones the package itself reads; every other field (engine facts, pruning and
recovery facts, memory, detection metrics) rides along in ``facts`` and is written as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from scipy import stats as st

from .. import SCHEMA_VERSION
from ..metrics.latency import LatencyStats, deadline_miss_rate, throughput_ips

LEGACY_CHUNKS = 10  # pseudo-blocks of a run recorded without blocks
NOT_MEASURED = "not measured"  # accuracy_metric of a case whose accuracy was not evaluated
ACCURACY_RENAMES = {"precision": "box_precision", "recall": "box_recall"}
VERSION_KEYS = {"torch": "torch", "onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime",
                "torch-pruning": "torch_pruning", "onnx": "onnx", "torchao": "torchao",
                "tensorrt": "tensorrt", "torch-tensorrt": "torch_tensorrt"}


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None: the one
    test of "is this a usable figure" every reader applies (a NaN compares False with everything
    and would pass a gate)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)  # an int beyond a float's range is no usable figure either
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def log_spread(values: Iterable[float]) -> tuple[float, float, int] | None:
    """(mean, sd, n) of the logs of the positive finite ``values`` (sd 0 for one value); None
    when there is none. The spread of a case's block medians (its noise within a session) and of
    sessions' centres (between sessions) are both this."""
    logs = np.log([v for v in values if (x := finite(v)) is not None and x > 0])
    if not logs.size:
        return None
    return float(logs.mean()), float(logs.std(ddof=1)) if logs.size > 1 else 0.0, int(logs.size)


def floor_problems(accuracy: float | None, reference: float | None, min_accuracy: float | None,
                   max_drop: float | None) -> list[str]:
    """Why an accuracy fails its floor (empty: it passes, or nothing was measured): below the
    absolute ``min_accuracy``, or a drop against the unpruned eager FP32 ``reference`` larger
    than ``max_drop``. ``pq_assert_floor``, the summary and the reports all ask here."""
    if accuracy is None:
        return []
    problems = []
    if min_accuracy is not None and accuracy < min_accuracy:
        problems.append(f"below the absolute floor min_accuracy={min_accuracy:.4f}")
    if reference is not None and max_drop is not None and reference - accuracy > max_drop:
        problems.append(f"drop {reference - accuracy:.4f} vs unpruned eager FP32 "
                        f"({reference:.4f}) exceeds max_drop={max_drop:.4f}")
    return problems


@dataclass(frozen=True)
class BlockRecord:
    """One timing block as recorded: its cycle, when it ran, its rounds' place in ``stats.data``
    (``offset``), their median and the host control reading of its cycle."""

    index: int
    start_s: float
    rounds: int
    median_ms: float
    host_ms: float | None = None
    offset: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> BlockRecord | None:
        if not isinstance(raw, Mapping) or finite(raw.get("median_ms")) is None:
            return None
        offset = raw.get("offset")
        return cls(int(finite(raw.get("index")) or 0), float(finite(raw.get("start_s")) or 0.0),
                   int(finite(raw.get("rounds")) or 0), float(raw["median_ms"]),
                   finite(raw.get("host_ms")),
                   int(offset) if finite(offset) is not None else None)


def _product(interval: tuple[float, float] | None) -> float:
    return interval[0] * interval[1] if interval is not None else float("nan")


# A speed-up whose 95% interval spans more than this factor (high / low) is not meaningful: at
# 1.5 it is known to within about +-22%; wider, a table would print a number the data does not
# support (a loaded machine gave a baseline interval of 3-290 ms).
SPEEDUP_MAX_SPREAD = 1.5


@dataclass(frozen=True)
class Speedup:
    """A speed-up over the baseline case: the ratio of p50s, its approximate 95% interval (None
    when a record has no blocks to judge it by) and, when it is not meaningful, why."""

    value: float
    low: float | None = None
    high: float | None = None
    not_meaningful: str = ""  # why the data cannot support the figure; "" when it can

    @property
    def meaningful(self) -> bool:
        return not self.not_meaningful

    def text(self, interval: bool = False) -> str:
        """``2.10x``, with ``interval`` ``2.10x (1.95-2.26)``; ``not meaningful`` when the data
        cannot support a figure."""
        if not self.meaningful:
            return "not meaningful"
        shown = f"{self.value:.2f}x"
        if interval and self.low is not None and self.high is not None:
            shown += f" ({self.low:.2f}-{self.high:.2f})"
        return shown

    def as_facts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"latency_speedup": self.value}
        if self.low is not None and self.high is not None:
            out["latency_speedup_ci"] = [self.low, self.high]
        if self.not_meaningful:
            out["latency_speedup_not_meaningful"] = self.not_meaningful
        return out


# typed fields written into extra_info under their own name (the rest are computed or nested)
_CASE_FIELDS = ("case_id", "model", "dataset", "pruner", "ratio", "workflow", "precision",
                "batch_size")


@dataclass(frozen=True)
class CaseRecord:
    """What one case measured. ``facts``: every other ``extra_info`` field, as written."""

    case_id: str
    model: str = "?"
    dataset: str = "?"
    pruner: str = "?"
    ratio: float = 0.0
    workflow: str = "?"
    precision: str = "?"
    batch_size: int = 1
    task: str = "classify"
    baseline_case_id: str = ""
    accuracy: float | None = None  # None: not measured
    accuracy_metric: str = NOT_MEASURED
    reference_accuracy: float | None = None
    min_accuracy: float | None = None
    max_drop: float | None = None
    latency: LatencyStats | None = None  # None: not timed (build-only, --benchmark-disable)
    samples_s: tuple[float, ...] = ()  # every timed round (pytest-benchmark's stats.data)
    blocks: tuple[BlockRecord, ...] = ()
    build_only: bool = False
    facts: Mapping[str, Any] = field(default_factory=dict)

    # ---- figures ------------------------------------------------------------------------------
    @property
    def timed(self) -> bool:
        return self.latency is not None and self.latency.rounds > 0

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency is not None else None

    @property
    def p99_ms(self) -> float | None:
        return self.latency.p99_ms if self.latency is not None else None

    def fact(self, name: str) -> Any:
        return self.facts.get(name)

    def number(self, name: str) -> float | None:
        """A finite figure: a typed field or property of that name, else a fact (None when
        absent or not a finite number)."""
        value = getattr(self, name) if name in _NAMES or name in ("p50_ms", "p99_ms") \
            else self.facts.get(name)
        return finite(value)

    @property
    def precision_engaged(self) -> float | None:
        return finite(self.facts.get("precision_engaged"))

    @property
    def model_bytes(self) -> float | None:
        return finite(self.facts.get("model_bytes"))

    def block_samples(self) -> list[np.ndarray]:
        """The rounds (seconds) of each block, located in ``samples_s`` by offset."""
        data = np.asarray(self.samples_s, dtype=np.float64)
        if not data.size or not self.blocks or any(b.offset is None for b in self.blocks):
            return []
        parts = [data[b.offset:b.offset + b.rounds] for b in self.blocks]
        return [p for p in parts if p.size]

    def block_medians_ms(self) -> list[float]:
        parts = self.block_samples()
        if parts:
            return [float(np.median(p)) * 1e3 for p in parts]
        return [b.median_ms for b in self.blocks]

    def timing_blocks(self) -> tuple[list[np.ndarray], list[float], str]:
        """The units of a latency test: rounds (seconds) of each block, the block medians (ms)
        and how they were obtained. A run with blocks gives real blocks (rounds located in the
        samples by offset); an older run without blocks is cut into ``LEGACY_CHUNKS`` chunks
        of consecutive rounds (each one contiguous window: as close to a block as it gets)."""
        parts = self.block_samples()
        if parts:
            return parts, [float(np.median(p)) * 1e3 for p in parts], f"{len(parts)} blocks"
        if self.blocks:
            return [], self.block_medians_ms(), f"{len(self.blocks)} blocks (medians only)"
        data = np.asarray(self.samples_s, dtype=np.float64)
        if data.size >= 2 * LEGACY_CHUNKS:
            chunks = np.array_split(data, LEGACY_CHUNKS)
            return chunks, [float(np.median(p)) * 1e3 for p in chunks], \
                f"no blocks recorded: {LEGACY_CHUNKS} chunks of consecutive rounds"
        return ([data] if data.size else []), [], "too few rounds for blocks"

    def host_ms(self) -> float | None:
        """Median of the per-cycle control kernel over this case's blocks."""
        values = [b.host_ms for b in self.blocks if b.host_ms is not None and b.host_ms > 0]
        return float(np.median(values)) if values else None

    def noise_pct(self) -> float | None:
        """The spread of the p50 across the case's blocks in percent (sd of the log block
        medians), else the half-width of a recorded ``p50_ci_ms``."""
        spread = log_spread(b.median_ms for b in self.blocks)
        if spread is not None and spread[2] >= 2:
            return spread[1] * 100.0
        interval, p50 = self.p50_interval(), self.p50_ms
        if interval is not None and p50:
            return (interval[1] - interval[0]) / 2 / p50 * 100
        return None

    def p50_interval(self) -> tuple[float, float] | None:
        """A 95% interval of the block-median centre within this session (t-interval on the log
        block medians); the recorded ``p50_ci_ms`` for a run written without blocks."""
        spread = log_spread(b.median_ms for b in self.blocks)
        if spread is not None and spread[2] >= 2:
            mean, sd, n = spread
            half = float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
            return math.exp(mean - half), math.exp(mean + half)
        ci = self.facts.get("p50_ci_ms")
        if isinstance(ci, Sequence) and len(ci) == 2 and all(finite(v) is not None for v in ci):
            return float(ci[0]), float(ci[1])
        return None

    def floor_problems(self) -> list[str]:
        return floor_problems(self.accuracy, self.reference_accuracy, self.min_accuracy,
                              self.max_drop)

    def floor_ok(self) -> bool | None:
        """The floor ``pq_assert_floor`` applies; None without a measured accuracy or floor."""
        if self.accuracy is None or self.min_accuracy is None or self.max_drop is None:
            return None
        return not self.floor_problems()

    def speedup_over(self, baseline: CaseRecord | None) -> float | None:
        """The baseline case's p50 / this p50 (baseline: unpruned eager FP32 of the same model
        and batch size) — the one speed-up every table shows (with ``speedup_detail``: its
        interval and whether the data supports it)."""
        theirs = baseline.p50_ms if baseline is not None else None
        mine = self.p50_ms
        return theirs / mine if theirs and mine else None

    def log_half_width(self) -> float | None:
        """Half the width of the 95% p50 interval on the log scale (``p50_interval``)."""
        interval = self.p50_interval()
        if interval is None or interval[0] <= 0 or interval[1] <= 0:
            return None
        return (math.log(interval[1]) - math.log(interval[0])) / 2

    def speedup_detail(self, baseline: CaseRecord | None) -> Speedup | None:
        """The speed-up over ``baseline`` with an approximate 95% interval and a verdict on
        whether it means anything. Both p50 intervals are t-intervals of the mean log block
        median: their half-widths add in quadrature on the log scale (two independent
        estimates). A speed-up whose interval spans more than ``SPEEDUP_MAX_SPREAD`` (low to
        high), or whose baseline's own interval does, is not meaningful: a baseline timed at
        293 ms with a fastest round of 3 ms gave "836x" on a loaded machine."""
        value = self.speedup_over(baseline)
        if value is None or baseline is None:
            return None
        if baseline.case_id == self.case_id:
            return Speedup(1.0)  # the baseline itself: 1x by definition
        theirs, mine = baseline.log_half_width(), self.log_half_width()
        if theirs is None or mine is None:
            return Speedup(value)  # no blocks recorded: nothing to judge it by
        # centred on the ratio of the intervals' centres (the blocks' geometric means), which
        # is what the intervals are of; the p50 ratio shown next to it is within it in practice
        centre = math.sqrt(_product(baseline.p50_interval()) / _product(self.p50_interval()))
        half = math.hypot(theirs, mine)
        low, high = centre * math.exp(-half), centre * math.exp(half)
        why = ""
        if math.exp(2 * theirs) > SPEEDUP_MAX_SPREAD:
            interval = baseline.p50_interval() or (0.0, 0.0)
            why = (f"baseline {baseline.case_id} p50 uncertain: 95% interval "
                   f"{interval[0]:.3g}-{interval[1]:.3g} ms")
        elif high / low > SPEEDUP_MAX_SPREAD:
            interval = self.p50_interval() or (0.0, 0.0)
            why = (f"p50 uncertain: 95% interval {interval[0]:.3g}-{interval[1]:.3g} ms")
        return Speedup(value, low, high, why)

    # ---- extra_info -----------------------------------------------------------------------------
    def extra_info(self) -> dict[str, Any]:
        """The record as pytest-benchmark's ``extra_info``: written once per case."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        out.update({name: getattr(self, name) for name in _CASE_FIELDS})
        out.update({"task": self.task, "baseline_case_id": self.baseline_case_id,
                    "precision_requested": self.precision})
        out.update(self.facts)
        out.update({"accuracy": float("nan") if self.accuracy is None else self.accuracy,
                    "accuracy_metric": self.accuracy_metric,
                    "reference_accuracy": (float("nan") if self.reference_accuracy is None
                                           else self.reference_accuracy),
                    "min_accuracy": self.min_accuracy, "max_drop": self.max_drop})
        if self.accuracy is not None and self.reference_accuracy is not None:
            out["accuracy_drop"] = self.reference_accuracy - self.accuracy
        if self.build_only:
            out["build_only"] = True
        if self.latency is not None:
            out.update(self.latency.as_dict())
        if self.blocks:
            out["blocks"] = [asdict(b) for b in sorted(self.blocks, key=lambda b: b.start_s)]
            out["block_count"] = len(self.blocks)
            noise, interval = self.noise_pct(), self.p50_interval()
            if noise is not None and interval is not None:
                out["noise_pct"] = noise
                out["p50_ci_ms"] = list(interval)
        return out

    @classmethod
    def from_benchmark(cls, bench: Mapping[str, Any]) -> CaseRecord:
        """From one pytest-benchmark entry (``extra_info`` + ``stats``), already validated by
        ``results.load``."""
        info = dict(bench.get("extra_info") or {})
        stats = bench.get("stats") or {}
        samples = tuple(float(x) for x in stats.get("data") or ())
        latency = _latency(info, stats, samples)
        blocks = tuple(b for b in map(BlockRecord.parse, info.get("blocks") or [])
                       if b is not None) if isinstance(info.get("blocks"), list) else ()
        accuracy = finite(info.get("accuracy"))
        return cls(
            case_id=str(info["case_id"]), model=str(info.get("model", "?")),
            dataset=str(info.get("dataset", "?")), pruner=str(info.get("pruner", "?")),
            ratio=finite(info.get("ratio")) or 0.0, workflow=str(info.get("workflow", "?")),
            precision=str(info.get("precision", "?")),
            batch_size=int(finite(info.get("batch_size")) or 1),
            task=str(info.get("task", "classify")),
            baseline_case_id=str(info.get("baseline_case_id") or ""),
            accuracy=accuracy,
            accuracy_metric=str(info.get("accuracy_metric") or
                                (NOT_MEASURED if accuracy is None else "accuracy")),
            reference_accuracy=finite(info.get("reference_accuracy")),
            min_accuracy=finite(info.get("min_accuracy")), max_drop=finite(info.get("max_drop")),
            latency=latency, samples_s=samples, blocks=blocks,
            build_only=bool(info.get("build_only")),
            facts={k: v for k, v in info.items() if k not in _READ_BACK})

    def with_facts(self, **more: Any) -> CaseRecord:
        return replace(self, facts={**self.facts, **more})

    def row(self) -> dict[str, Any]:
        """Every scalar field, flat: one row of a polars frame (``results.load.cases_frame``)."""
        info = self.extra_info()
        row = {k: v for k, v in info.items()
               if v is None or isinstance(v, bool | int | float | str)}
        row["samples_s"] = list(self.samples_s)
        return row


_NAMES = {f.name for f in fields(CaseRecord)}
# extra_info fields the typed fields are made from (or recomputed from) when read back
_READ_BACK = {*_NAMES, "schema_version", "precision_requested", "accuracy_drop", "blocks",
              "block_count", "noise_pct", "p50_ci_ms", *LatencyStats.__dataclass_fields__}


def _latency(info: Mapping[str, Any], stats: Mapping[str, Any],
             samples: tuple[float, ...]) -> LatencyStats | None:
    if samples:
        return LatencyStats.from_seconds(samples)
    if finite(info.get("p50_ms")) is None:
        median = finite(stats.get("median"))  # a run saved without its rounds
        if median is None or not stats.get("rounds"):
            return None
        ms = median * 1e3
        return LatencyStats(ms, ms, ms, ms, 0.0, ms, ms, 0.0, int(stats.get("rounds") or 0))
    values = {name: finite(info.get(name)) for name in LatencyStats.__dataclass_fields__}
    p50 = values["p50_ms"] or 0.0
    return LatencyStats(**{name: (v if v is not None else p50) for name, v in values.items()
                           if name != "rounds"}, rounds=int(values["rounds"] or 0))


# ---- writing a run ------------------------------------------------------------------------------
def timing_facts(samples: Sequence[float], batch_size: int, deadline_ms: float | None,
                 rounds_policy: Mapping[str, Any]) -> dict[str, Any]:
    """The timing policy and throughput facts of a timed case."""
    stats = LatencyStats.from_seconds(samples)
    out: dict[str, Any] = {**rounds_policy,
                           "throughput_ips": throughput_ips(stats.p50_ms, batch_size)}
    if deadline_ms:
        out["deadline_ms"] = deadline_ms
        out["deadline_miss_rate"] = deadline_miss_rate(samples, deadline_ms)
    return out


def json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def add_ratio_metrics(records: Mapping[str, CaseRecord]) -> dict[str, dict[str, Any]]:
    """Per case id, the ratio metrics of paper 004 relative to the run's baseline case of each
    case (same model, dataset and batch size; ``none`` pruner, ``torch`` FP32); a case whose
    baseline is not in the run gets none."""
    out: dict[str, dict[str, Any]] = {}
    for case_id, record in records.items():
        base = records.get(record.baseline_case_id)
        speedup = record.speedup_detail(base)
        if base is None or speedup is None:
            continue
        ratios = speedup.as_facts()
        mine, theirs = finite(record.fact("throughput_ips")), finite(base.fact("throughput_ips"))
        if mine and theirs:
            ratios["throughput_improvement"] = mine / theirs
        for name, key in (("memory_reduction", "rss_delta_bytes"),
                          ("size_reduction", "model_bytes")):
            m, t = finite(record.fact(key)), finite(base.fact(key))
            if m and t:
                ratios[name] = t / m
        out[case_id] = ratios
    return out


def efficiency(record: CaseRecord, peaks: Mapping[str, Any]) -> dict[str, float]:
    """``achieved_macs_per_s`` (MACs x batch size / p50) and ``efficiency``, its fraction of the
    machine's peak for the case's precision (``environment.machine_peaks``: FP32 and INT8 only;
    absent for other precisions or when the peak was not measured)."""
    macs, p50 = finite(record.fact("macs")), record.p50_ms
    if not macs or not p50:
        return {}
    achieved = macs * record.batch_size / (p50 / 1000)
    out = {"achieved_macs_per_s": achieved}
    peak = finite(peaks.get(f"{record.precision}_macs_per_s"))
    if peak:
        out["efficiency"] = achieved / peak
    return out
