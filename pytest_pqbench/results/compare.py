"""Compare two runs case by case and metric by metric, with a verdict a CI gate can trust.

Latency (p50): the unit of every test is the block (``timing``), never the single round, whose
neighbours share the host's regime. Against a baseline whose engine could be loaded in this
process, both sides were timed in alternating blocks and the verdict rests on the paired block
ratios; otherwise the two runs' block medians are compared with a between-session term
(``results.stats``, ``results.noise``). A change regresses only when it is significant at
``alpha`` (0.002 by default, as asv uses) *and* beyond its threshold; a change is ``unchanged``
only when its whole confidence interval lies within the threshold (equivalence), else
``cannot decide``. p99: a test without resampling (``results.tail``), which needs
``stats.P99_MIN_ROUNDS`` rounds per side (``too few rounds`` otherwise). Deterministic metrics
are gated exactly: accuracy drop in percentage points, model size and MACs as ratios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from ..errors import InputError, UsageError
from ..registry import unknown
from . import stats as st
from .load import Run
from .noise import NoiseModel
from .record import CaseRecord
from .sequential import DEFAULT_ALPHA_RUN, SETTLED, LookSchedule, per_test_alpha
from .stats import DEFAULT_SESSION_SD
from .tail import tail_estimate

VERDICTS = ("regressed", "improved", "unchanged", "not significant", "cannot decide",
            "too few rounds", "new", "missing")
HOST_TOLERANCE = 1.05  # control-kernel ratios within this count as the same host speed
# The run's false-alarm budget: the chance that an A/A run raises any regressed / improved
# verdict over all its gated timing tests (``results.sequential``: split over the tests by
# Bonferroni, then over the looks).
DEFAULT_ALPHA = DEFAULT_ALPHA_RUN
UNDECIDED = ("cannot decide", "not significant", "too few rounds")  # a gated metric not decided
UNDECIDED_POLICIES = ("fail", "warn", "pass")
TIMING_METRICS = ("latency", "p99")
NORMALISE = ("auto", "always", "never")
METRICS = ("latency", "p99", "accuracy", "size", "macs")


@dataclass(frozen=True)
class Thresholds:
    """Gates per metric; ``None`` leaves a metric ungated. Relative thresholds are fractions
    (0.10: 10% slower), accuracy in percentage points. ``alpha`` is the run's false-alarm budget
    over ``tests`` gated timing tests (``for_run``); each test decides at ``test_alpha``.
    ``Thresholds.default()`` is the default gate (``results.DEFAULT_FAIL_ON``, its one
    definition)."""

    latency: float | None = None
    p99: float | None = None
    accuracy: float | None = None
    size: float | None = None
    macs: float | None = None
    alpha: float = DEFAULT_ALPHA
    tests: int = 1

    @property
    def test_alpha(self) -> float:
        """Each gated timing test's alpha: the run's budget over its tests (Bonferroni)."""
        return per_test_alpha(self.alpha, max(1, self.tests))

    def for_run(self, cases: int) -> Thresholds:
        """These gates over a run of ``cases`` compared cases: its number of timing tests."""
        gated = sum(getattr(self, m) is not None for m in TIMING_METRICS)
        return replace(self, tests=max(1, cases * gated))

    @classmethod
    def default(cls) -> Thresholds:
        from . import DEFAULT_FAIL_ON

        return cls.parse_fail_on(DEFAULT_FAIL_ON)

    @classmethod
    def parse_fail_on(cls, text: str, alpha: float = DEFAULT_ALPHA) -> Thresholds:
        """``latency:10%,accuracy:0.5pp,p99:20%``: only the metrics listed are gated;
        ``alpha:0.01`` sets the run's false-alarm budget."""
        gates: dict[str, float | None] = dict.fromkeys(METRICS)
        seen: dict[str, str] = {}
        for item in (s.strip() for s in text.split(",")):
            if not item:
                continue
            name, sep, value = item.partition(":")
            name = name.strip()
            if name in seen:  # the last would silently win: which one was meant?
                raise UsageError(f"fail-on metric {name!r} given twice ({seen[name]!r} and "
                                 f"{item!r}); give each metric once")
            seen[name] = item
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
        raise UsageError(f"alpha {text!r}: must be a number in (0, 1), e.g. 0.01")
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
    to_decide: str = ""  # an undecided row: what would decide it (cycles, time, pairing)

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
    notes: list[str] = field(default_factory=list)  # run-level remarks (same file twice, ...)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regressed"]

    @property
    def undecided(self) -> list[Row]:
        """Gated timing metrics with no verdict: what ``--pqbench-undecided`` acts on."""
        return [r for r in self.rows if r.verdict in UNDECIDED]

    def failing(self, undecided: str = "warn") -> list[Row]:
        """The rows that fail CI: every regression, and the undecided under ``fail``."""
        if undecided not in UNDECIDED_POLICIES:
            raise unknown("undecided policy", undecided, list(UNDECIDED_POLICIES))
        return self.regressions + (self.undecided if undecided == "fail" else [])

    def counts(self) -> dict[str, int]:
        return {v: n for v in VERDICTS if (n := sum(r.verdict == v for r in self.rows))}

    def frame(self) -> pl.DataFrame:
        schema = {"case_id": pl.Utf8, "metric": pl.Utf8, "verdict": pl.Utf8,
                  "baseline": pl.Float64, "candidate": pl.Float64, "change": pl.Float64,
                  "unit": pl.Utf8, "threshold": pl.Utf8, "p_value": pl.Float64,
                  "detail": pl.Utf8, "mde": pl.Float64, "to_decide": pl.Utf8}
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
    """Baseline and candidate timed in alternating blocks of one process (``stages.timing``).
    ``schedule``: the looks the pair was timed under (``results.sequential``); the verdict on
    these cycles tests at its look's share of the test's alpha. None: one look."""

    base_blocks: list[np.ndarray]
    cand_blocks: list[np.ndarray]
    note: str
    schedule: LookSchedule | None = None

    @classmethod
    def of(cls, base: Any, cand: Any, note: str,
           schedule: LookSchedule | None = None) -> PairedTiming:
        """From two ``timing.Timing``: the blocks of the cycles both sides completed, in
        cycle order, so the i-th blocks form a pair."""
        b = {blk.index: np.asarray(blk.samples) for blk in base.blocks}
        c = {blk.index: np.asarray(blk.samples) for blk in cand.blocks}
        cycles = sorted(set(b) & set(c))
        return cls([b[i] for i in cycles], [c[i] for i in cycles], note, schedule)

    @property
    def cycles(self) -> int:
        return len(self.base_blocks)

    def alpha(self, alpha: float) -> float:
        if self.schedule is not None:
            return self.schedule.alpha_at(alpha, self.cycles)
        return alpha

    def alpha_note(self, alpha: float) -> str:
        """How the test's alpha was split over the looks, for the verdict's detail."""
        if self.schedule is not None and self.schedule.looks > 1:
            look = self.schedule.look_of(self.cycles)
            return (f"alpha {self.alpha(alpha):.2g} at look {look + 1} of "
                    f"{self.schedule.looks} ({alpha:.2g} spent over {self.schedule.looks} looks)")
        return ""

    def fastest_ms(self) -> tuple[list[float], list[float]]:
        """Each block's fastest round (ms), baseline and candidate: the engine's own cost with
        the least host interference (a call's latency on the VM is bimodal, one or both vCPUs;
        block medians flip between the modes, their minima do not). A real change of work
        moves every round."""
        return ([float(np.min(x)) * 1e3 for x in self.base_blocks],
                [float(np.min(x)) * 1e3 for x in self.cand_blocks])

    def estimate(self, alpha: float) -> st.Estimate | None:
        """The paired latency change on the blocks' fastest rounds."""
        return st.paired(*self.fastest_ms(), self.alpha(alpha))

    def cycle_seconds(self) -> float:
        """Wall seconds of one cycle of the pair (both blocks' rounds)."""
        if not self.cycles:
            return 0.0
        total = sum(float(np.sum(b)) + float(np.sum(c))
                    for b, c in zip(self.base_blocks, self.cand_blocks, strict=True))
        return total / self.cycles

    def settled(self, threshold: float, alpha: float) -> bool:
        """Whether the latency verdict is reached (regressed, improved or unchanged) at this
        look; else the pair is worth more cycles."""
        estimate = self.estimate(alpha)
        return estimate is not None and st.decide(estimate, threshold) in SETTLED


def still_open(thresholds: Thresholds | None, schedule: LookSchedule) -> Any:
    """The scheduler's test for a pair's entries (baseline first): True while their latency
    verdict is not reached. None (no further look) without a latency gate or with one look."""
    if thresholds is None or thresholds.latency is None or schedule.looks < 2:
        return None
    threshold, alpha = thresholds.latency, thresholds.test_alpha

    def test(base: Any, cand: Any) -> bool:  # a pair's entries, the baseline first
        timing = PairedTiming.of(base.timing, cand.timing, "", schedule)
        return not timing.settled(threshold, alpha)

    return test


def cycles_to_decide(estimate: st.Estimate, threshold: float, cycles: int) -> int | None:
    """About how many paired cycles would decide this estimate at its alpha: the interval's
    half-width shrinks as 1 / sqrt(cycles); ``unchanged`` needs it inside the threshold around
    the change, ``regressed`` / ``improved`` needs it clear of 1. None: no interval to scale."""
    half, change = estimate.half_width, abs(math.log(estimate.ratio))
    if not math.isfinite(half) or half <= 0:
        return None
    room = math.log1p(threshold) - change if change <= math.log1p(threshold) else change
    if room <= 0:
        return None
    return max(cycles + 1, math.ceil(cycles * (half / room) ** 2))


def hint(estimate: st.Estimate | None, threshold: float, paired: PairedTiming | None) -> str:
    """What would decide an undecided latency row."""
    if paired is None:
        return ("pair the two runs: both runs' engine artefacts in this artefact cache, re-timed "
                "in one process (pqbench compare --paired auto, or --pqbench-compare)")
    if estimate is None:
        return "more paired cycles (too few for an interval)"
    needed = cycles_to_decide(estimate, threshold, paired.cycles)
    if needed is None:
        return "more paired cycles"
    seconds = (needed - paired.cycles) * paired.cycle_seconds()
    return (f"about {needed} paired cycles (had {paired.cycles}; about {seconds:.0f} s more of "
            "this pair, e.g. a larger --pqbench-pair-budget or a quieter machine)")


def latency_row(case_id: str, base: CaseRecord, cand: CaseRecord, threshold: float, alpha: float,
                scale: float, session_sd: float = DEFAULT_SESSION_SD,
                paired_timing: PairedTiming | None = None, note: str = "") -> Row:
    limit = f"{threshold:.0%}"
    if paired_timing is not None:
        estimate = paired_timing.estimate(alpha)
        # the figures the change is computed from: the medians of the blocks' fastest rounds
        b_fast, c_fast = paired_timing.fastest_ms()
        b_ms, c_ms = (float(np.median(x)) if x else None for x in (b_fast, c_fast))
        note = "; ".join(x for x in (paired_timing.note, "medians of each block's fastest round",
                                     paired_timing.alpha_note(alpha),
                                     recorded_note(base, cand, estimate)) if x)
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
                                         "no test", note) if x),
                   to_decide=hint(None, threshold, paired_timing))
    broken = implausible(estimate, b_med if paired_timing is None else None,
                         c_med if paired_timing is None else None, session_sd
                         if paired_timing is None else 0.0)
    if broken:
        return no_estimate(case_id, "latency", b_ms, c_ms, limit, broken)
    verdict = st.decide(estimate, threshold, alpha)
    detail = "; ".join(x for x in (estimate.describe(threshold), note) if x)
    return Row(case_id, "latency", verdict, b_ms, c_ms, estimate.ratio, "ms", limit,
               estimate.p_value, detail, estimate.mde_at(threshold),
               hint(estimate, threshold, paired_timing) if verdict in UNDECIDED else "")


def recorded_note(base: CaseRecord, cand: CaseRecord, estimate: st.Estimate | None) -> str:
    """When the paired re-timing replaces what the two runs recorded: say so where they
    disagree, and when both sides ran the very same artefact (a recorded difference between
    them then came from the sessions, not from the engines)."""
    parts = []
    same = _artefact_sha(base) is not None and _artefact_sha(base) == _artefact_sha(cand)
    if same:
        parts.append(f"both runs ran the same artefact (sha256 {_artefact_sha(base)[:12]})")
    recorded = cand.p50_ms / base.p50_ms if base.p50_ms and cand.p50_ms else None
    if recorded is not None and estimate is not None and estimate.ci is not None \
            and not estimate.ci[0] <= recorded <= estimate.ci[1]:
        parts.append(f"the runs recorded x{recorded:.3f}, outside the paired interval: the "
                     "recorded difference came from the sessions"
                     + (" (same artefact)" if same else ""))
    return "; ".join(parts)


def _artefact_sha(record: CaseRecord) -> str | None:
    artefact = record.fact("artefact")
    sha = artefact.get("sha256") if isinstance(artefact, dict) else None
    return str(sha) if sha else None


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
    estimate = tail_estimate(b_blocks, c_blocks, alpha, paired_timing is not None,
                             session_sd=0.0 if paired_timing is not None else session_sd)
    if estimate is None:
        return Row(case_id, "p99", "too few rounds", b_ms, c_ms, c_ms / b_ms, "ms", limit, None,
                   f"p99 needs >= {st.P99_MIN_ROUNDS} rounds in >= 2 blocks per side (2 rounds "
                   f"above it); had {b_all.size} vs {c_all.size}: raise --pqbench-min-rounds")
    broken = (hosts_apart(base, cand, host_ratio(base, cand)) if paired_timing is None else "") \
        or implausible(estimate, None, None, session_sd if paired_timing is None else 0.0)
    if broken:
        return no_estimate(case_id, "p99", b_ms, c_ms, limit, broken)
    verdict = st.decide(estimate, threshold, alpha)
    to_decide = ""
    if verdict in UNDECIDED:
        to_decide = ("more rounds above the tail: raise --pqbench-min-rounds (each block's "
                     "share of rounds past p99 is what the test counts)")
    return Row(case_id, "p99", verdict, b_ms, c_ms, estimate.ratio, "ms", limit,
               estimate.p_value, estimate.describe(threshold), estimate.mde_at(threshold),
               to_decide)


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
        rows.append(latency_row(case_id, base, cand, thresholds.latency, thresholds.test_alpha,
                                scale, session_sd, paired_timing, note))
    if timed and thresholds.p99 is not None:
        row = p99_row(case_id, base, cand, thresholds.p99, thresholds.test_alpha, scale,
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


def run_thresholds(thresholds: Thresholds | None, cases: int) -> Thresholds:
    """The gates of a comparison of ``cases`` cases (the default gate when none), over the
    run's number of timing tests unless the caller counted them already."""
    thresholds = thresholds or Thresholds.default()
    return thresholds if thresholds.tests > 1 else thresholds.for_run(cases)


def compare_runs(base: Run, cand: Run, thresholds: Thresholds | None = None,
                 normalise: str = "auto", noise: NoiseModel | None = None,
                 paired: dict[str, PairedTiming] | None = None,
                 notes: dict[str, str] | None = None) -> Comparison:
    """Compare two saved runs: unpaired on their recorded blocks, or, for the cases in
    ``paired`` (``results.paired.pair_runs``), on blocks re-timed here in alternation;
    ``notes`` say why a case was not paired."""
    paired, notes = paired or {}, notes or {}
    noise = noise or NoiseModel()
    base_cases, cand_cases = base.cases, cand.cases
    # polars does the matching, so new and missing cases come out of one outer join (typed: a
    # run without a case would otherwise give a column of nulls that cannot be joined)
    ids = pl.DataFrame({"case_id": list(base_cases), "in_base": True},
                       schema={"case_id": pl.Utf8, "in_base": pl.Boolean}).join(
        pl.DataFrame({"case_id": list(cand_cases), "in_cand": True},
                     schema={"case_id": pl.Utf8, "in_cand": pl.Boolean}), on="case_id",
        how="full", coalesce=True)
    if not ids.filter(pl.col("in_base") & pl.col("in_cand")).height:
        raise InputError(f"{base.path} and {cand.path}: no case in common "
                         f"({len(base_cases)} vs {len(cand_cases)} pqbench cases)")
    common = ids.filter(pl.col("in_base") & pl.col("in_cand")).height
    thresholds = run_thresholds(thresholds, common)
    scale = normalisation(base, cand, normalise)
    result = Comparison(str(base.path), str(cand.path), thresholds, scale=scale)
    if base.path.resolve() == cand.path.resolve():
        result.notes.append(f"{base.path} is compared with itself: every verdict is an A/A one")
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
