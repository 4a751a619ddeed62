"""Compare two runs case by case and metric by metric, with a verdict a CI gate can trust.

Latency (p50) regresses only when the change is both larger than its threshold and significant:
a Mann-Whitney U test on the raw round samples at ``alpha`` (0.002 by default, as asv uses), or,
when a run kept no samples, non-overlapping confidence intervals of the median. p99 regresses
when larger than its threshold and the tail is significantly heavier: Fisher's exact test on how
many rounds of each run exceed the pooled 99th percentile (a permutation-exact test of "more slow
rounds"). A test that cannot reach ``alpha`` with the rounds at hand gives ``too few rounds``,
never ``unchanged``. Deterministic metrics are gated exactly: accuracy drop in percentage points,
model size and MACs as ratios.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from ..registry import UsageError, unknown
from .load import Run

VERDICTS = ("regressed", "improved", "unchanged", "not significant", "too few rounds", "new",
            "missing")
DEFAULT_ALPHA = 0.002
NORMALISE = ("auto", "always", "never")
METRICS = ("latency", "p99", "accuracy", "size", "macs")


@dataclass(frozen=True)
class Thresholds:
    """Gates per metric; ``None`` leaves a metric ungated. Relative thresholds are fractions
    (0.10: 10% slower), accuracy in percentage points."""

    latency: float | None = 0.10
    p99: float | None = 0.20
    accuracy: float | None = 0.5
    size: float | None = 0.0
    macs: float | None = 0.0
    alpha: float = DEFAULT_ALPHA

    @classmethod
    def parse_fail_on(cls, text: str, alpha: float = DEFAULT_ALPHA) -> Thresholds:
        """``latency:10%,accuracy:0.5pp,p99:20%``: only the metrics listed are gated;
        ``alpha:0.01`` sets the significance level."""
        gates: dict[str, float | None] = dict.fromkeys(METRICS)
        for item in (s.strip() for s in text.split(",")):
            if not item:
                continue
            name, sep, value = item.partition(":")
            name = name.strip()
            if name == "alpha":
                alpha = parse_alpha(value)
                continue
            if name not in METRICS or not sep:
                raise (unknown("fail-on metric", name, list(METRICS)) if name not in METRICS
                       else UsageError(f"fail-on {item!r}: give a threshold, e.g. {name}:10%"))
            gates[name] = parse_points(value) if name == "accuracy" else parse_relative(value)
        return cls(**gates, alpha=alpha)


def parse_relative(text: str) -> float:
    """``10%`` or the factor ``1.10`` -> 0.10 (how much larger counts as a regression)."""
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0
        else:
            value = float(raw) - 1.0
    except ValueError:
        raise UsageError(f"threshold {raw!r}: expected a percentage (10%) or a factor (1.10)")\
            from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"threshold {raw!r}: must be >= 0% (a factor >= 1.0)")
    return value


def parse_points(text: str) -> float:
    """``0.5pp`` or ``0.5`` -> 0.5 percentage points of accuracy."""
    raw = str(text).strip()
    try:
        value = float(raw.removesuffix("pp"))
    except ValueError:
        raise UsageError(f"accuracy threshold {raw!r}: expected percentage points, e.g. 0.5pp")\
            from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"accuracy threshold {raw!r}: must be >= 0 percentage points")
    return value


def parse_alpha(text: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        alpha = -1.0
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha {text!r}: must be a number in (0, 1), e.g. 0.002")
    return alpha


@dataclass(frozen=True)
class Row:
    """One case x metric verdict. ``change``: candidate / baseline, or for accuracy the
    candidate minus baseline in percentage points."""

    case_id: str
    metric: str
    verdict: str
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None
    unit: str = ""
    threshold: str = ""
    p_value: float | None = None
    detail: str = ""

    def message(self) -> str:
        """One line with the numbers, as a failed test shows it."""
        if self.baseline is None or self.candidate is None:
            return f"{self.metric}: {self.verdict}"
        change = (f"{self.change:+.2f} pp" if self.metric == "accuracy"
                  else f"x{self.change:.3f}")
        text = (f"{self.metric} {self.verdict}: {fmt(self.baseline, self.unit)} -> "
                f"{fmt(self.candidate, self.unit)} ({change}; threshold {self.threshold}")
        if self.p_value is not None:
            text += f"; p={self.p_value:.2g}"
        return text + (f"; {self.detail})" if self.detail else ")")


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "%":
        return f"{value * 100:.2f}%"
    if unit == "bytes":
        return f"{value / 1e6:.3f} MB"
    if unit == "MACs":
        return f"{value / 1e6:.2f} M"
    return f"{value:g}"


@dataclass
class Comparison:
    baseline: str
    candidate: str
    thresholds: Thresholds
    rows: list[Row] = field(default_factory=list)
    scale: float | None = None  # candidate times multiplied by this (control normalisation)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regressed"]

    def counts(self) -> dict[str, int]:
        return {v: n for v in VERDICTS if (n := sum(r.verdict == v for r in self.rows))}

    def frame(self) -> pl.DataFrame:
        schema = {"case_id": pl.Utf8, "metric": pl.Utf8, "verdict": pl.Utf8,
                  "baseline": pl.Float64, "candidate": pl.Float64, "change": pl.Float64,
                  "unit": pl.Utf8, "threshold": pl.Utf8, "p_value": pl.Float64,
                  "detail": pl.Utf8}
        return pl.DataFrame([asdict(r) for r in self.rows], schema=schema)


# ---- statistics -------------------------------------------------------------------------------
def samples_of(bench: dict[str, Any]) -> np.ndarray:
    return np.asarray((bench.get("stats") or {}).get("data") or [], dtype=np.float64)


def mann_whitney(base: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """(p-value, smallest p-value these sample sizes can ever give), two-sided."""
    n, m = base.size, cand.size
    # Exact minimum: every candidate round on one side of every baseline round.
    log_comb = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    min_p = min(1.0, 2.0 * math.exp(-log_comb))
    if np.array_equal(np.sort(base), np.sort(cand)):
        return 1.0, min_p
    return float(stats.mannwhitneyu(base, cand, alternative="two-sided").pvalue), min_p


def tail_test(base: np.ndarray, cand: np.ndarray, q: float = 0.99) -> tuple[float, float]:
    """(p-value, smallest reachable p-value) of Fisher's exact test on rounds above the pooled
    ``q`` quantile. The cut depends only on the pooled rounds, so the test stays exact."""
    cut = np.quantile(np.concatenate([base, cand]), q)
    above_b, above_c = int((base > cut).sum()), int((cand > cut).sum())
    total = above_b + above_c
    if total == 0:
        return 1.0, 1.0

    def p_of(c: int, b: int) -> float:
        table = [[c, cand.size - c], [b, base.size - b]]
        return float(stats.fisher_exact(table, alternative="two-sided").pvalue)

    extremes = [p_of(min(total, cand.size), total - min(total, cand.size)),
                p_of(total - min(total, base.size), min(total, base.size))]
    return p_of(above_c, above_b), min(extremes)


def median_ci(median: float, iqr: float, rounds: int, alpha: float) -> tuple[float, float]:
    """Confidence interval of a median from summary statistics only (no samples): the
    asymptotic standard error 1.2533 * sigma / sqrt(n), sigma estimated as IQR / 1.349, with
    z scaled by 1/sqrt(2) so that two intervals not overlapping is a test at about ``alpha``
    (the reasoning behind the notches of a box plot, McGill et al. 1978)."""
    z = stats.norm.ppf(1 - alpha / 2) / math.sqrt(2)
    half = z * 1.2533 * (iqr / 1.349) / math.sqrt(rounds)
    return median - half, median + half


def decide(ratio: float, threshold: float, significant: bool | None) -> str:
    if significant is None:
        return "too few rounds"
    worse, better = ratio > 1.0 + threshold, ratio < 1.0 / (1.0 + threshold)
    if not (worse or better):
        return "unchanged"
    if not significant:
        return "not significant"
    return "regressed" if worse else "improved"


# ---- metrics ----------------------------------------------------------------------------------
def latency_row(case_id: str, base: dict, cand: dict, threshold: float, alpha: float,
                scale: float) -> Row:
    bs, cs = samples_of(base), samples_of(cand) * scale
    limit = f"{threshold:.0%}"
    if bs.size and cs.size:
        b, c = float(np.median(bs)), float(np.median(cs))
        p, min_p = mann_whitney(bs, cs)
        significant = None if min_p > alpha else p <= alpha
        detail = (f"{bs.size} vs {cs.size} rounds cannot reach alpha={alpha:g}"
                  if significant is None else f"Mann-Whitney U, {bs.size} vs {cs.size} rounds")
        return Row(case_id, "latency", decide(c / b, threshold, significant), b * 1e3, c * 1e3,
                   c / b, "ms", limit, p, detail)
    sb, sc = base["stats"], cand["stats"]
    b, c = float(sb["median"]), float(sc["median"]) * scale
    nb, nc = int(sb.get("rounds", 0)), int(sc.get("rounds", 0))
    if min(nb, nc) < 3:
        significant = None
        detail = f"{nb} vs {nc} rounds and no raw samples"
    else:
        lo_b, hi_b = median_ci(b, float(sb["iqr"]), nb, alpha)
        lo_c, hi_c = median_ci(c, float(sc["iqr"]) * scale, nc, alpha)
        significant = hi_b < lo_c or hi_c < lo_b
        detail = "no raw samples: median confidence intervals " + \
            ("do not overlap" if significant else "overlap")
    return Row(case_id, "latency", decide(c / b, threshold, significant), b * 1e3, c * 1e3,
               c / b, "ms", limit, None, detail)


def p99_row(case_id: str, base: dict, cand: dict, threshold: float, alpha: float,
            scale: float) -> Row | None:
    bs, cs = samples_of(base), samples_of(cand) * scale
    limit = f"{threshold:.0%}"
    if bs.size and cs.size:
        b, c = float(np.percentile(bs, 99)), float(np.percentile(cs, 99))
        p, min_p = tail_test(bs, cs)
        significant = None if min_p > alpha else p <= alpha
        detail = (f"{bs.size} vs {cs.size} rounds cannot reach alpha={alpha:g} in the tail"
                  if significant is None else "Fisher exact test, rounds above pooled p99")
        return Row(case_id, "p99", decide(c / b, threshold, significant), b * 1e3, c * 1e3,
                   c / b, "ms", limit, p, detail)
    b_ms, c_ms = base["extra_info"].get("p99_ms"), cand["extra_info"].get("p99_ms")
    if not (_number(b_ms) and _number(c_ms)):
        return None
    c_ms *= scale
    verdict = decide(c_ms / b_ms, threshold, False)
    return Row(case_id, "p99", verdict, b_ms, c_ms, c_ms / b_ms, "ms", limit, None,
               "no raw samples: the tail cannot be tested")


def exact_rows(case_id: str, base: dict[str, Any], cand: dict[str, Any],
               thresholds: Thresholds) -> list[Row]:
    rows = []
    b, c = base.get("accuracy"), cand.get("accuracy")
    if thresholds.accuracy is not None and _number(b) and _number(c):
        change = round((c - b) * 100.0, 9)  # pp; rounding keeps 0.5 pp from reading 0.5000001
        t = thresholds.accuracy
        verdict = "regressed" if -change > t else "improved" if change > t else "unchanged"
        rows.append(Row(case_id, "accuracy", verdict, b, c, change, "%", f"{t:g} pp",
                        detail=str(cand.get("accuracy_metric", ""))))
    for metric, key, unit in (("size", "model_bytes", "bytes"), ("macs", "macs", "MACs")):
        t = getattr(thresholds, metric)
        b, c = base.get(key), cand.get(key)
        if t is None or not (_number(b) and _number(c)) or b <= 0:
            continue
        rows.append(Row(case_id, metric, decide(c / b, t, True), float(b), float(c), c / b,
                        unit, f"{t:.0%}"))
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def compare_case(case_id: str, base: dict[str, Any], cand: dict[str, Any],
                 thresholds: Thresholds, scale: float = 1.0) -> list[Row]:
    """Every gated metric of one case; ``base`` / ``cand`` are pytest-benchmark entries
    (``stats`` with ``data`` or ``median``/``iqr``/``rounds``, and ``extra_info``)."""
    rows: list[Row] = []
    timed = bool(base.get("stats", {}).get("rounds")) and bool(cand.get("stats", {}).get("rounds"))
    if timed and thresholds.latency is not None:
        rows.append(latency_row(case_id, base, cand, thresholds.latency, thresholds.alpha, scale))
    if timed and thresholds.p99 is not None:
        row = p99_row(case_id, base, cand, thresholds.p99, thresholds.alpha, scale)
        rows += [row] if row else []
    return rows + exact_rows(case_id, base["extra_info"], cand["extra_info"], thresholds)


def machine_key(machine_info: dict[str, Any]) -> tuple[str, str]:
    pq = machine_info.get("pqbench") or {}
    cpu = pq.get("cpu_model") or (machine_info.get("cpu") or {}).get("brand_raw") or ""
    return str(machine_info.get("node", "")), str(cpu)


def normalisation(base: Run, cand: Run, mode: str) -> float | None:
    """Factor applied to candidate times: baseline control / candidate control, when asked
    (``always``) or when the runs come from different machines (``auto``)."""
    if mode not in NORMALISE:
        raise unknown("normalisation mode", mode, list(NORMALISE))
    if mode == "never" or (mode == "auto" and machine_key(base.machine) ==
                           machine_key(cand.machine)):
        return None
    b, c = base.control_seconds, cand.control_seconds
    if b is None or c is None:
        if mode == "always":
            raise UsageError("cannot normalise: machine_info.pqbench.control.median_s is missing "
                             f"from {base.path if b is None else cand.path}")
        return None
    return b / c


def compare_runs(base: Run, cand: Run, thresholds: Thresholds | None = None,
                 normalise: str = "auto") -> Comparison:
    thresholds = thresholds or Thresholds()
    base_cases, cand_cases = base.cases, cand.cases
    # polars does the matching, so new and missing cases come out of one outer join
    ids = pl.DataFrame({"case_id": list(base_cases), "in_base": True}).join(
        pl.DataFrame({"case_id": list(cand_cases), "in_cand": True}), on="case_id",
        how="full", coalesce=True)
    if not ids.filter(pl.col("in_base") & pl.col("in_cand")).height:
        from ..cli import InputError

        raise InputError(f"{base.path} and {cand.path}: no case in common "
                         f"({len(base_cases)} vs {len(cand_cases)} pqbench cases)")
    scale = normalisation(base, cand, normalise)
    result = Comparison(str(base.path), str(cand.path), thresholds, scale=scale)
    for case_id, in_base, in_cand in ids.iter_rows():
        if not in_cand:
            result.rows.append(Row(case_id, "-", "missing", detail="not in the candidate"))
        elif not in_base:
            result.rows.append(Row(case_id, "-", "new", detail="not in the baseline"))
        else:
            result.rows += compare_case(case_id, base_cases[case_id], cand_cases[case_id],
                                        thresholds, scale or 1.0)
    return result
