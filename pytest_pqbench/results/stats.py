"""The statistics of a latency verdict, with the block (not the round) as the unit.

Three estimates, each with a p-value and a minimum detectable effect (MDE):

- ``paired``: baseline and candidate timed in alternating blocks of one process; the unit is the
  cycle's ratio of the two blocks' fastest rounds (what tango-bench and asv's
  ``--interleave-rounds`` rely on: both sides see the same host regime), tested with Wilcoxon's
  signed-rank test (the ratios are heavy-tailed on a shared host).
- ``unpaired``: two runs from separate sessions; the units are each run's block medians (log),
  compared with Welch's t-test. Blocks of one session still share that session's offset (the
  process, its memory placement, the host's mood that hour), so the standard error adds a
  between-session term ``session_sd`` (a log-scale standard deviation per session), measured by
  A/A runs with ``pqbench noise`` or taken from the default measured on the 2-core VM.
- ``tail``: p99 ratio with a bootstrap over blocks (over cycles when paired): resampling whole
  blocks keeps the within-block dependence the rounds have.

``decide`` turns an estimate into a verdict: a change must be significant at ``alpha`` *and*
larger than the threshold to regress or improve; a change within the threshold is ``unchanged``
only when the data could have detected a change of the threshold's size (MDE <= threshold),
otherwise it is ``cannot decide``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

POWER = 0.8  # the MDE is the change detected with this probability at alpha
# Between-session log-scale sd of a case's latency used when no A/A calibration is given: the
# median over the default suite's 12 cases of three A/A sessions on the 2-core VM (2.7-12.3%,
# median about 9%; README, "Regression gate: calibration on this VM"). Measure your machine's
# with ``pqbench noise`` and pass ``--noise``.
DEFAULT_SESSION_SD = 0.09
# p99 from fewer rounds than this per side rests on fewer than 2 rounds above it: not tested.
P99_MIN_ROUNDS = 200
BOOTSTRAP = 4000


@dataclass(frozen=True)
class Estimate:
    """candidate / baseline with its uncertainty. ``mde``: the smallest relative change
    (0.05 = 5%) this data detects with probability ``POWER`` at ``alpha``."""

    ratio: float
    p_value: float | None
    mde: float | None
    ci: tuple[float, float] | None
    method: str
    units: str  # what was counted: "10 vs 10 blocks", "10 paired cycles"

    def describe(self) -> str:
        parts = [self.method, self.units]
        if self.ci is not None:
            parts.append(f"CI x{self.ci[0]:.3f}..x{self.ci[1]:.3f}")
        if self.mde is not None:
            parts.append(f"MDE {self.mde:.1%}")
        return ", ".join(parts)


def _logs(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.log(arr[np.isfinite(arr) & (arr > 0)])


def _mde(se: float, df: float, alpha: float) -> float:
    crit = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(POWER, df)
    return float(math.expm1(crit * se))


def paired(base_ms: Sequence[float], cand_ms: Sequence[float], alpha: float) -> Estimate | None:
    """Per-cycle block figures of the two sides (ms), in cycle order (same length).

    Wilcoxon's signed-rank test on the per-cycle log ratios, the Hodges-Lehmann estimate (median
    of the Walsh averages) as the change, and its distribution-free confidence interval. Why not
    a t-test: on the 2-vCPU VM the per-cycle ratios are heavy-tailed (A/A, 40 cycles, per case:
    median gap 1.1-12.2%, 90th percentile 6.2-68.7%, when the host's regime changed between the
    two blocks of a cycle); a few such cycles inflate the standard deviation and hide a 5% change
    the rank test still sees (README, "Regression gate: calibration"). The MDE is read from the
    interval's width; with too few cycles for any interval at ``alpha`` it is infinite."""
    b, c = _logs(base_ms), _logs(cand_ms)
    if b.size != c.size or b.size < 3:
        return None
    d = c - b
    k = d.size
    i, j = np.triu_indices(k)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    change = float(np.median(walsh))
    units = f"{k} paired cycles"
    method = "Wilcoxon signed-rank on log block ratios (Hodges-Lehmann)"
    if not np.any(d):
        return Estimate(1.0, 1.0, 0.0, (1.0, 1.0), method, units)
    p = float(stats.wilcoxon(d).pvalue)
    z = float(stats.norm.ppf(1 - alpha / 2))
    n_walsh = walsh.size
    # order statistic of the Walsh averages bounding the interval (normal approximation of the
    # signed-rank distribution, as in Hollander & Wolfe)
    rank = int(math.floor(n_walsh / 2 - z * math.sqrt(k * (k + 1) * (2 * k + 1) / 24.0)))
    if rank < 1:
        return Estimate(math.exp(change), p, math.inf, None, method, units)
    lo, hi = float(walsh[rank - 1]), float(walsh[n_walsh - rank])
    se = (hi - lo) / (2 * z)
    mde = float(math.expm1((z + stats.norm.ppf(POWER)) * se))
    return Estimate(math.exp(change), p, mde, (math.exp(lo), math.exp(hi)), method, units)


def unpaired(base_ms: Sequence[float], cand_ms: Sequence[float], alpha: float,
             session_sd: float = DEFAULT_SESSION_SD) -> Estimate | None:
    """Block medians of two sessions. Welch's t on logs, plus ``session_sd`` per session."""
    b, c = _logs(base_ms), _logs(cand_ms)
    if b.size < 2 or c.size < 2:
        return None
    vb, vc = float(b.var(ddof=1)) / b.size, float(c.var(ddof=1)) / c.size
    between = 2.0 * session_sd ** 2
    se = math.sqrt(vb + vc + between)
    diff = float(c.mean() - b.mean())
    # Welch-Satterthwaite df for the within part; the between part is a known variance
    within = vb + vc
    df = (within ** 2 / ((vb ** 2) / (b.size - 1) + (vc ** 2) / (c.size - 1))
          if within > 0 else float(b.size + c.size - 2))
    df = max(df, 1.0)
    units = f"{b.size} vs {c.size} blocks"
    if se == 0.0:
        return Estimate(math.exp(diff), 1.0 if diff == 0 else 0.0, 0.0, None, "blocks", units)
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    half = stats.t.ppf(1 - alpha / 2, df) * se
    return Estimate(math.exp(diff), p, _mde(se, df, alpha),
                    (math.exp(diff - half), math.exp(diff + half)),
                    f"Welch t on log block medians + session sd {session_sd:.1%}", units)


def tail(base_blocks: Sequence[Sequence[float]], cand_blocks: Sequence[Sequence[float]],
         alpha: float, is_paired: bool, q: float = 99.0, seed: int = 0,
         session_sd: float = 0.0) -> Estimate | None:
    """p99 ratio with a block bootstrap; None when a side has fewer than ``P99_MIN_ROUNDS``.
    Two sessions (unpaired): ``session_sd`` per session is added to the bootstrap's spread, as
    in ``unpaired`` (a bootstrap over one session's blocks cannot see that session's offset: CI
    called an A/A p99 x1.22 'regressed' without it)."""
    base = [np.asarray(b, dtype=np.float64) for b in base_blocks if len(b)]
    cand = [np.asarray(c, dtype=np.float64) for c in cand_blocks if len(c)]
    nb, nc = sum(b.size for b in base), sum(c.size for c in cand)
    if min(nb, nc) < P99_MIN_ROUNDS or len(base) < 2 or len(cand) < 2:
        return None
    if is_paired and len(base) != len(cand):
        is_paired = False
    point = float(np.percentile(np.concatenate(cand), q) / np.percentile(np.concatenate(base), q))
    rng = np.random.default_rng(seed)
    ratios = np.empty(BOOTSTRAP)
    for i in range(BOOTSTRAP):
        ib = rng.integers(0, len(base), len(base))
        ic = ib if is_paired else rng.integers(0, len(cand), len(cand))
        pb = np.percentile(np.concatenate([base[j] for j in ib]), q)
        pc = np.percentile(np.concatenate([cand[j] for j in ic]), q)
        ratios[i] = pc / pb
    logs = np.log(ratios)
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    # two-sided bootstrap p: how often the resampled ratio falls on the other side of 1
    p = float(min(1.0, 2 * min((logs <= 0).mean(), (logs >= 0).mean()) + 1.0 / BOOTSTRAP))
    se = float(logs.std(ddof=1))
    method = "block bootstrap of p99" + (" (paired cycles)" if is_paired else "")
    if not is_paired and session_sd > 0:
        se = math.hypot(se, math.sqrt(2.0) * session_sd)
        z = stats.norm.ppf(1 - alpha / 2)
        p = float(2 * stats.norm.sf(abs(math.log(point)) / se))
        lo, hi = math.exp(math.log(point) - z * se), math.exp(math.log(point) + z * se)
        method += f" + session sd {session_sd:.1%}"
    crit = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER)
    return Estimate(point, p, float(math.expm1(crit * se)), (float(lo), float(hi)), method,
                    f"{nb} vs {nc} rounds in {len(base)} vs {len(cand)} blocks")


def decide(estimate: Estimate, threshold: float, alpha: float) -> str:
    """``regressed`` / ``improved`` (significant and beyond the threshold), ``unchanged``
    (within the threshold and the data could have seen a change that size), else
    ``cannot decide`` (the noise hides changes of the threshold's size) or ``not significant``
    (beyond the threshold by the point estimate, yet within the noise)."""
    worse = estimate.ratio > 1.0 + threshold
    better = estimate.ratio < 1.0 / (1.0 + threshold)
    significant = estimate.p_value is not None and estimate.p_value <= alpha
    if significant and (worse or better):
        return "regressed" if worse else "improved"
    if estimate.mde is not None and estimate.mde > threshold:
        return "cannot decide"
    if worse or better:
        return "not significant"
    return "unchanged"
