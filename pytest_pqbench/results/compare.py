"""Compare two runs case by case and metric by metric, with a verdict a CI gate can trust.

Latency (p50): the unit of every test is the block (``timing``), never the single round, whose
neighbours share the host's regime. Against a baseline whose engine could be loaded in this
process, both sides were timed in alternating blocks and the verdict rests on the paired block
ratios; otherwise the two runs' block medians are compared with a between-session term
(``results.stats``, ``results.noise``). A change regresses only when it is significant at
``alpha`` (0.002 by default, as asv uses) *and* beyond its threshold; a change within the
threshold is ``unchanged`` only when the data could have detected one of the threshold's size
(its minimum detectable effect), else ``cannot decide``. p99: a block bootstrap, which needs
``stats.P99_MIN_ROUNDS`` rounds per side (``too few rounds`` otherwise). Deterministic metrics
are gated exactly: accuracy drop in percentage points, model size and MACs as ratios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..errors import InputError, UsageError
from ..registry import unknown
from . import stats as st
from .load import Run
from .noise import NoiseModel
from .record import CaseRecord
from .stats import DEFAULT_SESSION_SD

VERDICTS = ("regressed", "improved", "unchanged", "not significant", "cannot decide",
            "too few rounds", "new", "missing")
HOST_TOLERANCE = 1.05  # control-kernel ratios within this count as the same host speed
DEFAULT_ALPHA = 0.002
NORMALISE = ("auto", "always", "never")
METRICS = ("latency", "p99", "accuracy", "size", "macs")


@dataclass(frozen=True)
class Thresholds:
    """Gates per metric; ``None`` leaves a metric ungated. Relative thresholds are fractions
    (0.10: 10% slower), accuracy in percentage points. ``Thresholds.default()`` is the default
    gate (``results.DEFAULT_FAIL_ON``, its one definition)."""

    latency: float | None = None
    p99: float | None = None
    accuracy: float | None = None
    size: float | None = None
    macs: float | None = None
    alpha: float = DEFAULT_ALPHA

    @classmethod
    def default(cls) -> Thresholds:
        from . import DEFAULT_FAIL_ON

        return cls.parse_fail_on(DEFAULT_FAIL_ON)

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
    mde: float | None = None  # smallest change the data could detect (0.05: 5%)

    def message(self) -> str:
        """One line with the numbers, as a failed test shows it."""
        if self.baseline is None or self.candidate is None:
            return f"{self.metric}: {self.verdict}"
        change = ("change -" if self.change is None else f"{self.change:+.2f} pp"
                  if self.metric == "accuracy" else f"x{self.change:.3f}")
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
                  "detail": pl.Utf8, "mde": pl.Float64}
        return pl.DataFrame([asdict(r) for r in self.rows], schema=schema)


# ---- latency: blocks as the unit ---------------------------------------------------------------
def blocks_of(record: CaseRecord) -> tuple[list[np.ndarray], list[float], str]:
    return record.timing_blocks()


def host_ratio(base: CaseRecord, cand: CaseRecord) -> float | None:
    """Candidate / baseline median of the per-cycle control kernel (``Block.host_ms``): how much
    slower the host itself was in the candidate's session. None without readings."""
    b, c = base.host_ms(), cand.host_ms()
    return c / b if b and c else None


@dataclass
class PairedTiming:
    """Baseline and candidate timed in alternating blocks of one process (``phase``)."""

    base_blocks: list[np.ndarray]
    cand_blocks: list[np.ndarray]
    note: str
    # looks planned (``timing.run_paired_looks``): every look tests at alpha / looks, so the
    # chance of a false alarm at any look stays <= alpha
    looks: int = 1

    @classmethod
    def of(cls, base: Any, cand: Any, note: str, looks: int = 1) -> PairedTiming:
        """From two ``timing.Timing``: the blocks of the cycles both sides completed, in
        cycle order, so the i-th blocks form a pair."""
        b = {blk.index: np.asarray(blk.samples) for blk in base.blocks}
        c = {blk.index: np.asarray(blk.samples) for blk in cand.blocks}
        cycles = sorted(set(b) & set(c))
        return cls([b[i] for i in cycles], [c[i] for i in cycles], note, max(1, looks))

    def alpha(self, alpha: float) -> float:
        return alpha / self.looks

    def estimate(self, alpha: float) -> st.Estimate | None:
        """The paired latency change, on each block's fastest round: the engine's own cost
        with the least host interference (a call's latency on the VM is bimodal, one or both
        vCPUs; block medians flip between the modes, their minima do not). A real change of
        work moves every round."""
        b_fast = [float(np.min(x)) * 1e3 for x in self.base_blocks]
        c_fast = [float(np.min(x)) * 1e3 for x in self.cand_blocks]
        return st.paired(b_fast, c_fast, self.alpha(alpha))

    def settled(self, threshold: float, alpha: float) -> bool:
        """Whether the latency verdict is reached (regressed, improved or unchanged) at this
        look; else the pair is worth more cycles."""
        estimate = self.estimate(alpha)
        return estimate is not None and st.decide(estimate, threshold, self.alpha(alpha)) in (
            "regressed", "improved", "unchanged")


def planned_looks(thresholds: Thresholds | None, first: int, most: int) -> int:
    """Looks of a paired timing: 2 when a latency gate can send a pair on from ``first`` to
    ``most`` cycles, else 1 (the one place this is decided: pytest's phase and ``pqbench
    compare`` both ask here)."""
    gated = thresholds is not None and thresholds.latency is not None
    return 2 if gated and most > first else 1


def still_open(thresholds: Thresholds | None, looks: int) -> Any:
    """``timing.run_paired_looks``'s test for a pair's entries (baseline first): True while
    their latency verdict is not reached. None (no second look) without a latency gate."""
    if thresholds is None or thresholds.latency is None or looks < 2:
        return None
    threshold, alpha = thresholds.latency, thresholds.alpha

    def test(base: Any, cand: Any) -> bool:  # a pair's entries, the baseline first
        return not PairedTiming.of(base.timing, cand.timing, "", looks).settled(threshold, alpha)

    return test


def latency_row(case_id: str, base: CaseRecord, cand: CaseRecord, threshold: float, alpha: float,
                scale: float, session_sd: float = DEFAULT_SESSION_SD,
                paired_timing: PairedTiming | None = None, note: str = "") -> Row:
    limit = f"{threshold:.0%}"
    if paired_timing is not None:
        b_blocks, c_blocks = paired_timing.base_blocks, paired_timing.cand_blocks
        estimate = paired_timing.estimate(alpha)
        b_ms = float(np.median(np.concatenate(b_blocks))) * 1e3
        c_ms = float(np.median(np.concatenate(c_blocks))) * 1e3
        note = paired_timing.note
        if paired_timing.looks > 1:
            note += f"; alpha {alpha:g} split over {paired_timing.looks} looks"
        alpha = paired_timing.alpha(alpha)
    else:
        _, b_med, b_how = blocks_of(base)
        _, c_med, c_how = blocks_of(cand)
        host = host_ratio(base, cand)
        broken = hosts_apart(base, cand, host)
        if broken:
            return no_estimate(case_id, "latency", base.p50_ms, scaled(cand.p50_ms, scale),
                               limit, broken)
        if host is not None and abs(math.log(host)) > math.log(HOST_TOLERANCE):
            # the control kernel ran at another speed in the two sessions: the host itself
            # differed by that much, so the between-session term must cover it
            session_sd = math.hypot(session_sd, math.log(host))
            note = "; ".join(x for x in (note, f"host control x{host:.2f} between the runs: "
                                               "uncertainty widened") if x)
        estimate = st.unpaired(b_med, [m * scale for m in c_med], alpha, session_sd)
        b_ms, c_ms = base.p50_ms, cand.p50_ms
        c_ms = c_ms * scale if c_ms is not None else None
        how = b_how if b_how == c_how else f"{b_how} vs {c_how}"
        note = "; ".join(x for x in (note, how) if x)
    if estimate is None:
        change = c_ms / b_ms if b_ms and c_ms else None
        return Row(case_id, "latency", "too few rounds", b_ms, c_ms, change, "ms", limit, None,
                   "; ".join(x for x in ("fewer than 2 blocks per side (3 cycles when paired): "
                                         "no test", note) if x))
    broken = implausible(estimate, b_med if paired_timing is None else None,
                         c_med if paired_timing is None else None, session_sd
                         if paired_timing is None else 0.0)
    if broken:
        return no_estimate(case_id, "latency", b_ms, c_ms, limit, broken)
    verdict = st.decide(estimate, threshold, alpha)
    detail = "; ".join(x for x in (estimate.describe(), note) if x)
    return Row(case_id, "latency", verdict, b_ms, c_ms, estimate.ratio, "ms", limit,
               estimate.p_value, detail, estimate.mde)


# Bounds past which an estimate says more about broken data than about the engines: a loaded
# host gave "session sd 613%", "CI x0.000..x2.8e17" and "MDE 3.7e23%" for one case. Past them no
# CI, MDE or p-value is shown; the row says what is wrong with the data instead.
# They sit far above what honest small samples give (4 blocks a side at alpha 0.002: CI about
# x0.5..x1.9, MDE about 120%, shown as "cannot decide" with those numbers).
MAX_HOST_RATIO = 3.0  # control kernel this much faster or slower: not comparable hosts
MAX_SESSION_SD = 1.0  # a between-session sd of 100% (log scale)
MAX_CI_SPREAD = 100.0  # CI high / low: two orders of magnitude
MAX_MDE = 10.0  # smallest detectable change of 1000%


def scaled(value: float | None, scale: float) -> float | None:
    return value * scale if value is not None else None


def hosts_apart(base: CaseRecord, cand: CaseRecord, host: float | None) -> str:
    """Why the two sessions' hosts are too different to compare (``MAX_HOST_RATIO``), or ""."""
    if host is None or 1 / MAX_HOST_RATIO <= host <= MAX_HOST_RATIO:
        return ""
    return (f"the host control kernel ran {base.host_ms():.3g} ms per call in the baseline's "
            f"session and {cand.host_ms():.3g} ms in the candidate's (x{host:.3g}): the two "
            "hosts (or their load) are too different to compare")


def implausible(estimate: st.Estimate, base_ms: list[float] | None,
                cand_ms: list[float] | None, session_sd: float) -> str:
    """Why ``estimate`` cannot be supported by its data (its bounds above), or ""."""
    ci = estimate.ci
    wide = ci is not None and (ci[0] <= 0 or ci[1] / ci[0] > MAX_CI_SPREAD)
    vague = estimate.mde is not None and not estimate.mde <= MAX_MDE
    if session_sd <= MAX_SESSION_SD and not wide and not vague:
        return ""
    spread = "; ".join(f"{side} block medians {min(v):.3g}-{max(v):.3g} ms"
                       for side, v in (("baseline", base_ms), ("candidate", cand_ms)) if v)
    why = (f"between-session sd {session_sd:.0%}" if session_sd > MAX_SESSION_SD
           else "its blocks spread too far for any estimate")
    return "; ".join(x for x in (why, spread) if x)


def no_estimate(case_id: str, metric: str, b_ms: float | None, c_ms: float | None, limit: str,
                why: str) -> Row:
    """A row that says what is wrong with the data instead of printing numbers it cannot
    support: the medians and their ratio only, ``cannot decide``."""
    change = c_ms / b_ms if b_ms and c_ms else None
    return Row(case_id, metric, "cannot decide", b_ms, c_ms, change, "ms", limit, None,
               f"no estimate: {why}; re-run both on a quiet machine, or compare with --paired "
               "auto where both runs' artefacts exist")


def p99_row(case_id: str, base: CaseRecord, cand: CaseRecord, threshold: float, alpha: float,
            scale: float, paired_timing: PairedTiming | None = None,
            session_sd: float = DEFAULT_SESSION_SD) -> Row | None:
    limit = f"{threshold:.0%}"
    if paired_timing is not None:
        b_blocks, c_blocks = paired_timing.base_blocks, paired_timing.cand_blocks
        alpha = paired_timing.alpha(alpha)  # whether to look again was decided on these data
    else:
        b_blocks, _, _ = blocks_of(base)
        c_blocks = [x * scale for x in blocks_of(cand)[0]]
    if not b_blocks or not c_blocks:
        b_ms, c_ms = base.p99_ms, cand.p99_ms
        if b_ms is None or c_ms is None or b_ms <= 0:
            return None
        return Row(case_id, "p99", "cannot decide", b_ms, c_ms * scale, c_ms * scale / b_ms, "ms",
                   limit, None, "no raw samples: the tail cannot be tested")
    b_all, c_all = np.concatenate(b_blocks), np.concatenate(c_blocks)
    b_ms, c_ms = float(np.percentile(b_all, 99)) * 1e3, float(np.percentile(c_all, 99)) * 1e3
    estimate = st.tail(b_blocks, c_blocks, alpha, paired_timing is not None,
                       session_sd=0.0 if paired_timing is not None else session_sd)
    if estimate is None:
        return Row(case_id, "p99", "too few rounds", b_ms, c_ms, c_ms / b_ms, "ms", limit, None,
                   f"p99 needs >= {st.P99_MIN_ROUNDS} rounds in >= 2 blocks per side (2 rounds "
                   f"above it); had {b_all.size} vs {c_all.size}: raise --pqbench-min-rounds")
    broken = (hosts_apart(base, cand, host_ratio(base, cand)) if paired_timing is None else "") \
        or implausible(estimate, None, None, session_sd if paired_timing is None else 0.0)
    if broken:
        return no_estimate(case_id, "p99", b_ms, c_ms, limit, broken)
    return Row(case_id, "p99", st.decide(estimate, threshold, alpha), b_ms, c_ms, estimate.ratio,
               "ms", limit, estimate.p_value, estimate.describe(), estimate.mde)


def exact_rows(case_id: str, base: CaseRecord, cand: CaseRecord,
               thresholds: Thresholds) -> list[Row]:
    rows = []
    b, c = base.accuracy, cand.accuracy
    if thresholds.accuracy is not None and b is not None and c is not None:
        change = round((c - b) * 100.0, 9)  # pp; rounding keeps 0.5 pp from reading 0.5000001
        t = thresholds.accuracy
        verdict = "regressed" if -change > t else "improved" if change > t else "unchanged"
        rows.append(Row(case_id, "accuracy", verdict, b, c, change, "%", f"{t:g} pp",
                        detail=cand.accuracy_metric))
    for metric, key, unit in (("size", "model_bytes", "bytes"), ("macs", "macs", "MACs")):
        t = getattr(thresholds, metric)
        b, c = base.number(key), cand.number(key)
        if t is None or b is None or c is None or b <= 0:
            continue
        verdict = "regressed" if c / b > 1.0 + t else "improved" if c / b < 1.0 / (1.0 + t) \
            else "unchanged"  # deterministic: no test needed
        rows.append(Row(case_id, metric, verdict, b, c, c / b, unit, f"{t:.0%}"))
    return rows


def compare_case(case_id: str, base: CaseRecord, cand: CaseRecord,
                 thresholds: Thresholds, scale: float = 1.0,
                 session_sd: float = DEFAULT_SESSION_SD,
                 paired_timing: PairedTiming | None = None, note: str = "") -> list[Row]:
    """Every gated metric of one case. ``paired_timing``: both engines timed in alternating
    blocks of this process."""
    rows: list[Row] = []
    timed = base.timed and cand.timed
    if timed and thresholds.latency is not None:
        rows.append(latency_row(case_id, base, cand, thresholds.latency, thresholds.alpha, scale,
                                session_sd, paired_timing, note))
    if timed and thresholds.p99 is not None:
        row = p99_row(case_id, base, cand, thresholds.p99, thresholds.alpha, scale,
                      paired_timing, session_sd)
        rows += [row] if row else []
    return rows + exact_rows(case_id, base, cand, thresholds)


def machine_key(machine_info: dict[str, Any]) -> tuple[str, str]:
    pq = machine_info.get("pqbench") or {}
    cpu = pq.get("cpu_model") or (machine_info.get("cpu") or {}).get("brand_raw") or ""
    return str(machine_info.get("node", "")), str(cpu)


def machine_scale(base: Run, here: tuple[str, str], control: Callable[[], float | None],
                  mode: str = "auto", where: str = "this run") -> float | None:
    """Factor applied to candidate times: the baseline's control measurement / the
    candidate's, when asked (``always``) or when the two ran on different machines (``auto``,
    by ``machine_key``). ``control`` is called only when needed (the gate times it then)."""
    if mode not in NORMALISE:
        raise unknown("normalisation mode", mode, list(NORMALISE))
    if mode == "never" or (mode == "auto" and machine_key(base.machine) == here):
        return None
    b, c = base.control_seconds, control()
    if b is None or c is None:
        if mode == "always":
            raise UsageError("cannot normalise: machine_info.pqbench.control.median_s is missing "
                             f"from {base.path if b is None else where}")
        return None
    return b / c


def normalisation(base: Run, cand: Run, mode: str) -> float | None:
    """``machine_scale`` between two saved runs."""
    return machine_scale(base, machine_key(cand.machine), lambda: cand.control_seconds, mode,
                         str(cand.path))


def compare_runs(base: Run, cand: Run, thresholds: Thresholds | None = None,
                 normalise: str = "auto", noise: NoiseModel | None = None,
                 paired: dict[str, PairedTiming] | None = None,
                 notes: dict[str, str] | None = None) -> Comparison:
    """Compare two saved runs: unpaired on their recorded blocks, or, for the cases in
    ``paired`` (``results.paired.pair_runs``), on blocks re-timed here in alternation;
    ``notes`` say why a case was not paired."""
    paired, notes = paired or {}, notes or {}
    thresholds = thresholds or Thresholds.default()
    noise = noise or NoiseModel()
    base_cases, cand_cases = base.cases, cand.cases
    # polars does the matching, so new and missing cases come out of one outer join
    ids = pl.DataFrame({"case_id": list(base_cases), "in_base": True}).join(
        pl.DataFrame({"case_id": list(cand_cases), "in_cand": True}), on="case_id",
        how="full", coalesce=True)
    if not ids.filter(pl.col("in_base") & pl.col("in_cand")).height:
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
            timing = paired.get(case_id)
            result.rows += compare_case(case_id, base_cases[case_id], cand_cases[case_id],
                                        thresholds, 1.0 if timing else scale or 1.0,
                                        noise.sd(case_id), timing, notes.get(case_id, ""))
    return result
