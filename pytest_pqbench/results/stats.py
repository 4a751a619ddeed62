"""The statistics of a latency verdict, with the block (not the round) as the unit.

Every estimate is a ratio (candidate / baseline) with a confidence interval at the test's
``alpha``; ``decide`` reads only the two:

- ``paired``: baseline and candidate timed in alternating blocks of one process; the unit is the
  cycle's ratio of the two blocks' fastest rounds (what tango-bench and asv's
  ``--interleave-rounds`` rely on: both sides see the same host regime). Wilcoxon's signed-rank
  test with the Hodges-Lehmann estimate and its exact distribution-free interval (the ratios are
  heavy-tailed on a shared host), widened when the ratios are serially correlated.
- ``unpaired``: two runs from separate sessions; the units are each run's block medians (log),
  compared with Welch's t. Blocks of one session still share that session's offset, so the
  standard error adds a between-session term ``session_sd`` (``pqbench noise``, or the default
  measured on the 2-core VM), and the degrees of freedom count it (Satterthwaite).
- the p99 ratio is decided without resampling in ``results.tail`` (``tail_estimate``).

``decide``: ``regressed`` / ``improved`` when the interval excludes no change and the estimate is
beyond the threshold; ``unchanged`` only when the whole interval lies within the threshold
(an equivalence test, TOST at alpha / 2 per side); else ``not significant`` (estimate beyond the
threshold, interval not clear of 1) or ``cannot decide``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

POWER = 0.8  # the MDE is the change called ``regressed`` with this probability
# Between-session log-scale sd of a case's latency used when no A/A calibration is given: the
# median over the default suite's 12 cases of three A/A sessions on the 2-core VM (2.7-12.3%,
# median about 9%; README, "Regression gate: calibration on this VM"). Measure your machine's
# with ``pqbench noise`` and pass ``--noise``.
DEFAULT_SESSION_SD = 0.09
# p99 from fewer rounds than this per side rests on fewer than 2 rounds above it: not tested.
P99_MIN_ROUNDS = 200
EXACT_MAX = 400  # cycles up to which the signed-rank distribution is computed exactly
MAX_INFLATION = 3.0  # widening for serial correlation at most (lag-1 r of 0.8)
# Fewer cycles than this are not widened for serial correlation: the lag-1 estimate's sd is
# about 1 / sqrt(n), too coarse to act on (the interval is the exact one; the note says so).
SERIAL_MIN_CYCLES = 20

VERDICT_CODES = ("regressed", "improved", "unchanged", "not significant", "cannot decide")


@dataclass(frozen=True)
class Estimate:
    """candidate / baseline with its ``1 - alpha`` confidence interval (None: the data bound
    nothing at this alpha)."""

    ratio: float
    p_value: float | None
    ci: tuple[float, float] | None
    method: str
    units: str  # what was counted: "10 vs 10 blocks", "40 paired cycles"
    alpha: float
    note: str = ""  # e.g. the serial-correlation check

    @property
    def half_width(self) -> float:
        """Half the interval's width on the log scale (inf without an interval)."""
        if self.ci is None or not (0 < self.ci[0] and math.isfinite(self.ci[1])):
            return math.inf
        return (math.log(self.ci[1]) - math.log(self.ci[0])) / 2.0

    @property
    def se(self) -> float:
        """The standard error the interval implies (log scale)."""
        return self.half_width / float(stats.norm.ppf(1 - self.alpha / 2))

    def mde_at(self, threshold: float) -> float:
        """The verdict's minimum detectable effect: the slowdown called ``regressed`` with
        probability ``POWER`` under this noise. ``regressed`` needs the estimate beyond the
        threshold *and* the interval clear of 1, i.e. the estimate above max(log(1+t),
        half-width): a change of that size is caught half the time, ``POWER`` needs
        ``z_POWER`` standard errors more (normal approximation; checked by simulation)."""
        if not math.isfinite(self.half_width):
            return math.inf
        edge = max(math.log1p(threshold), self.half_width)
        return float(math.expm1(edge + stats.norm.ppf(POWER) * self.se))

    @property
    def mde(self) -> float:
        """The significance test's MDE (``mde_at(0)``); a gate's row shows ``mde_at`` its
        threshold."""
        return self.mde_at(0.0)

    def describe(self, threshold: float | None = None) -> str:
        parts = [self.method, self.units]
        if self.ci is not None:
            parts.append(f"CI x{self.ci[0]:.3f}..x{self.ci[1]:.3f}")
        else:
            parts.append("no interval at this alpha")
        mde = self.mde if threshold is None else self.mde_at(threshold)
        if math.isfinite(mde):
            parts.append(f"MDE {mde:.1%}")
        return ", ".join(p for p in (*parts, self.note) if p)


# ---- the verdict -------------------------------------------------------------------------------
def decide_logs(change: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                threshold: float) -> np.ndarray:
    """Vectorised ``decide`` on log-scale estimates and interval bounds (nan or -inf/inf: no
    interval); returns indices into ``VERDICT_CODES``."""
    edge = math.log1p(threshold)
    change, lo, hi = (np.asarray(x, dtype=np.float64) for x in (change, lo, hi))
    lo, hi = np.nan_to_num(lo, nan=-np.inf), np.nan_to_num(hi, nan=np.inf)
    out = np.full(change.shape, 4)
    out[np.abs(change) > edge] = 3
    out[(lo >= -edge) & (hi <= edge)] = 2
    out[(change < -edge) & (hi < 0)] = 1
    out[(change > edge) & (lo > 0)] = 0
    return out


def decide(estimate: Estimate, threshold: float, alpha: float | None = None) -> str:
    """The verdict of ``estimate`` at ``threshold`` (relative: 0.03 is 3%). ``alpha``, when
    given, must be the one the interval was computed at (a guard against mixing them)."""
    if alpha is not None and not math.isclose(alpha, estimate.alpha, rel_tol=1e-9):
        raise ValueError(f"estimate computed at alpha {estimate.alpha:g}, decided at {alpha:g}")
    lo, hi = (-math.inf, math.inf)
    if estimate.ci is not None:  # a one-sided interval has 0 or inf at its open end
        lo = math.log(estimate.ci[0]) if estimate.ci[0] > 0 else -math.inf
        hi = math.log(estimate.ci[1])
    code = decide_logs(np.array([math.log(estimate.ratio)]), np.array([lo]), np.array([hi]),
                       threshold)
    return VERDICT_CODES[int(code[0])]


def verdict_power(change: float, se: float, threshold: float, alpha: float,
                  half_width: float | None = None) -> float:
    """Normal approximation of P(``regressed``) for a true relative ``change`` whose log
    estimate has standard error ``se``: the estimate must exceed both log(1+threshold) and the
    interval's half-width (``half_width``, default z * se). At ``change == threshold`` it is
    one half (when the interval is narrower than the threshold): a gate catches a change of
    exactly its threshold half the time."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    edge = max(math.log1p(threshold), z * se if half_width is None else half_width)
    return float(stats.norm.cdf((math.log1p(change) - edge) / se))


# ---- paired: signed-rank on per-cycle log ratios ------------------------------------------------
@lru_cache(maxsize=256)
def signed_rank_cdf(n: int) -> np.ndarray:
    """P(W+ <= w), w = 0 .. n(n+1)/2, of Wilcoxon's signed-rank statistic under the null, from
    its generating function prod(1 + x^k) / 2 (scipy computes it only inside its p-value and
    exposes no quantile, and the interval needs the quantile)."""
    pmf = np.zeros(n * (n + 1) // 2 + 1)
    pmf[0] = 1.0
    for k in range(1, n + 1):
        shifted = np.zeros_like(pmf)
        shifted[k:] = pmf[:-k]
        pmf = (pmf + shifted) / 2.0
    return np.cumsum(pmf)


def rank_lower_index(n: int, alpha: float) -> int:
    """k such that [W_(k), W_(N+1-k)] of the N = n(n+1)/2 sorted Walsh averages covers the
    centre with probability >= 1 - alpha (exact up to ``EXACT_MAX``, then normal); 0: no
    interval exists at this alpha (2^-n > alpha / 2: fewer than log2(2 / alpha) cycles)."""
    if n > EXACT_MAX:
        total = n * (n + 1) / 4.0
        sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        return max(0, int(math.floor(total - stats.norm.ppf(1 - alpha / 2) * sd)))
    cdf = signed_rank_cdf(n)
    return int(np.searchsorted(cdf, alpha / 2.0, side="right"))  # count of w with cdf <= a/2


def lag1(scores: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row, as statsmodels' ``acf`` defines it (full-sample mean
    and variance); ``tests/test_gate_stats.py`` checks it against statsmodels."""
    centred = scores - scores.mean(axis=-1, keepdims=True)
    denom = (centred ** 2).sum(axis=-1)
    num = (centred[..., 1:] * centred[..., :-1]).sum(axis=-1)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def inflation(r1: np.ndarray, n: int, margin: float = 1.0) -> np.ndarray:
    """How much wider the interval must be for lag-1 correlation ``r1`` of ``n`` scores: the
    variance of a sum of an AR(1) series is (1 + r) / (1 - r) times that of an independent one
    (effective sample size n (1 - r) / (1 + r)). ``r1`` is corrected for its small-sample bias
    (its mean is about r - (1 + 4 r) / n: Marriott and Pope) and raised by one standard error
    (1 / sqrt(n)): plugging in the estimate itself left the test 3-6x over its alpha at 2e-4 on
    simulated AR(1) cycles, because the estimate is low exactly in the draws where a long
    excursion makes the statistic large (tests/test_gate_stats.py); with the standard error
    added it stays within about 2x there, and costs an interval about 12% wider at 100
    independent cycles (``margin`` standard errors are added: 1 by default). A negative r (ABBA
    order can give it) never narrows the interval."""
    if n < SERIAL_MIN_CYCLES:
        return np.ones_like(np.asarray(r1, dtype=np.float64))
    r = np.clip(r1 + (1 + 4 * r1) / n + margin / math.sqrt(n), 0.0, 0.8)
    return np.minimum(np.sqrt((1 + r) / (1 - r)), MAX_INFLATION)


def paired_logs(d: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    """The paired test on rows of per-cycle log ratios ``d`` (draws x cycles, all finite):
    Hodges-Lehmann ``change``, interval ``lo``/``hi`` (-inf/inf: none), two-sided ``p``, the
    lag-1 correlation ``r1`` of the centred signed ranks and the ``inflation`` applied.
    Vectorised so that the simulations in the tests run the product's own code."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    draws, n = d.shape
    i, j = np.triu_indices(n)
    walsh = np.sort((d[:, i] + d[:, j]) * 0.5, axis=1)
    total = walsh.shape[1]
    change = (walsh[:, (total - 1) // 2] + walsh[:, total // 2]) / 2.0
    centred = d - change[:, None]
    ranks = np.argsort(np.argsort(np.abs(centred), axis=1), axis=1) + 1.0
    r1 = lag1(np.sign(centred) * ranks)
    widen = inflation(r1, n)
    k = rank_lower_index(n, alpha)
    rows = np.arange(draws)
    if k > 0:
        # serial correlation widens the exact interval about the estimate by the inflation
        # factor (the estimate's sd grows by it). Not by moving the bounding order statistic
        # further out: on heavy-tailed cycles that reaches into the regime jumps and, at a
        # small alpha, left no interval at all in 1 of 4 draws of 40 AR(1) 0.3 cycles
        lo = change - widen * (change - walsh[:, k - 1])
        hi = change + widen * (walsh[:, total - k] - change)
    else:
        lo, hi = np.full(draws, -np.inf), np.full(draws, np.inf)
    # two-sided p consistent with the widened interval: 0 lies outside it exactly when the
    # unwidened interval excludes the shift s = change (1 - 1 / inflation); W+ of d - s is the
    # count of Walsh averages above s (ties half), read on the exact null distribution
    shift = change * (1.0 - 1.0 / widen)
    above = total - np.array([np.searchsorted(walsh[r], shift[r], side="right") for r in rows])
    ties = np.array([np.searchsorted(walsh[r], shift[r], side="right")
                     - np.searchsorted(walsh[r], shift[r], side="left") for r in rows])
    deviation = np.abs(above + 0.5 * ties - total / 2.0)
    if n <= EXACT_MAX:
        cdf = signed_rank_cdf(n)
        p = 2.0 * cdf[np.clip(np.floor(total / 2.0 - deviation).astype(int), 0, total)]
    else:
        sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        p = 2.0 * stats.norm.sf(deviation / sd)
    same = np.all(d == 0, axis=1)  # identical sides: nothing moved, nothing to widen
    lo, hi, p = np.where(same, 0.0, lo), np.where(same, 0.0, hi), np.where(same, 1.0, p)
    return {"change": change, "lo": lo, "hi": hi, "p": np.minimum(p, 1.0), "r1": r1,
            "inflation": widen}


def paired_pairs(base_ms: Sequence[float], cand_ms: Sequence[float]
                 ) -> tuple[np.ndarray, int]:
    """Per-cycle log ratios of the cycles where both sides are finite and positive, and how
    many cycles were dropped: a pair is kept or dropped whole, never shifted against another."""
    b, c = np.asarray(base_ms, dtype=np.float64), np.asarray(cand_ms, dtype=np.float64)
    if b.shape != c.shape:
        raise ValueError(f"paired sides differ in length: {b.size} vs {c.size} cycles")
    keep = np.isfinite(b) & np.isfinite(c) & (b > 0) & (c > 0)
    return np.log(c[keep]) - np.log(b[keep]), int(b.size - keep.sum())


def paired(base_ms: Sequence[float], cand_ms: Sequence[float], alpha: float) -> Estimate | None:
    """Per-cycle block figures of the two sides (ms), in cycle order (same length).

    Wilcoxon's signed-rank test on the per-cycle log ratios, the Hodges-Lehmann estimate (median
    of the Walsh averages) as the change, and its exact distribution-free interval (no normal
    approximation: an interval exists from log2(2 / alpha) cycles, 10 at alpha 0.002). Why not a
    t-test: on the 2-vCPU VM the per-cycle ratios are heavy-tailed (README, "Regression gate:
    calibration"); a few cycles where the host changed regime inflate the sd and hide a change
    the rank test still sees. The lag-1 correlation of the ratios' signed ranks widens the
    interval (a regime lasting several cycles makes neighbouring cycles agree, so the cycles
    carry less information than their count)."""
    d, dropped = paired_pairs(base_ms, cand_ms)
    if d.size < 3:
        return None
    out = {k: float(v[0]) for k, v in paired_logs(d[None, :], alpha).items()}
    units = f"{d.size} paired cycles" + (f" ({dropped} dropped: not finite)" if dropped else "")
    note = f"lag-1 r {out['r1']:+.2f}"
    if d.size < SERIAL_MIN_CYCLES:
        note += f" (not acted on under {SERIAL_MIN_CYCLES} cycles)"
    elif out["inflation"] > 1.0:
        note += (f": interval x{out['inflation']:.2f} wider (about "
                 f"{d.size / out['inflation'] ** 2:.0f} effective cycles)")
    ci = None if not math.isfinite(out["lo"]) else (math.exp(out["lo"]), math.exp(out["hi"]))
    return Estimate(math.exp(out["change"]), out["p"], ci,
                    "Wilcoxon signed-rank on log block ratios (Hodges-Lehmann, exact)", units,
                    alpha, note)


# ---- unpaired: two sessions ---------------------------------------------------------------------
def unpaired(base_ms: Sequence[float], cand_ms: Sequence[float], alpha: float,
             session_sd: float = DEFAULT_SESSION_SD,
             session_df: float = math.inf) -> Estimate | None:
    """Block medians of two sessions. Welch's t on logs, plus ``session_sd`` per session.
    Degrees of freedom: Satterthwaite over all three variance terms, the between-session one
    with ``session_df`` (inf: taken as known, as the built-in default is); when it dominates,
    the reference approaches the normal."""
    b, c = _logs(base_ms), _logs(cand_ms)
    if b.size < 2 or c.size < 2:
        return None
    vb, vc = float(b.var(ddof=1)) / b.size, float(c.var(ddof=1)) / c.size
    between = 2.0 * session_sd ** 2
    var = vb + vc + between
    diff = float(c.mean() - b.mean())
    units = f"{b.size} vs {c.size} blocks"
    method = f"Welch t on log block medians + session sd {session_sd:.1%}"
    if var == 0.0:
        return Estimate(math.exp(diff), 1.0 if diff == 0 else 0.0,
                        (math.exp(diff), math.exp(diff)), method, units, alpha)
    df = satterthwaite(((vb, b.size - 1), (vc, c.size - 1), (between, session_df)))
    se = math.sqrt(var)
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return Estimate(math.exp(diff), p, (math.exp(diff - half), math.exp(diff + half)), method,
                    units, alpha, df_note(df))


def df_note(df: float) -> str:
    return f"df {df:.0f}" if df < 1000 else "normal reference (the between-session term dominates)"


def satterthwaite(terms: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance terms (variance, df); a
    term with infinite df is known and adds nothing to the denominator."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / df for v, df in terms if df > 0 and math.isfinite(df))
    return math.inf if denom == 0 else max(1.0, total * total / denom)


def _logs(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.log(arr[np.isfinite(arr) & (arr > 0)])


