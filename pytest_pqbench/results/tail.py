"""The p99 verdict, decided without resampling: the same data give the same verdict, always.

A bootstrap of the p99 ratio decided near the boundary by whether one resample of 4000 fell on
the other side, so a fixed seed hid a coin flip (issue 22). Here:

- **paired** (alternating blocks of one process): an exact sign-flip test on tail exceedances.
  Both sides' rounds are pooled and the pooled p99 ``u`` taken; each cycle contributes
  ``e = (candidate rounds above u) - (baseline rounds above u)``. With no change, swapping the
  two blocks of a cycle leaves the pool (and ``u``) as it is and negates ``e``: the sum of ``e``
  is a sign-flip statistic whose null distribution is exact (a subset-sum count over the
  integer ``|e|``), whatever the shape of the tail and however small alpha. The interval on the
  ratio inverts the test over a scale ``s`` (the candidate's rounds divided by ``s``; bisection,
  deterministic). Serial correlation of ``e`` widens it as in ``stats.paired``. The price of
  exactness: with few rounds above the p99 (``m`` in all) the smallest p-value is 2^(1-m), so a
  p99 verdict at a small alpha needs many rounds (``cannot decide`` says so).
- **unpaired** (two sessions): delete-one-block jackknife of the log Harrell-Davis p99 (a
  smooth quantile estimate, whose jackknife is consistent where the sample quantile's is not)
  per side, plus the between-session term, Satterthwaite degrees of freedom.

The estimate shown is the ratio of the pooled sample p99s, the figures the row prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from scipy.stats import mstats

from .stats import (
    P99_MIN_ROUNDS,
    SERIAL_MIN_CYCLES,
    Estimate,
    df_note,
    inflation,
    lag1,
    satterthwaite,
)

BISECTIONS = 30


def tail_estimate(base_blocks: Sequence[Sequence[float]], cand_blocks: Sequence[Sequence[float]],
                  alpha: float, is_paired: bool, q: float = 99.0,
                  session_sd: float = 0.0) -> Estimate | None:
    """p99 (``q``) of candidate / baseline; None with fewer than ``P99_MIN_ROUNDS`` rounds or
    2 blocks on a side. Paired blocks must be in cycle order (the i-th blocks a pair)."""
    base = [np.asarray(b, dtype=np.float64) for b in base_blocks]
    cand = [np.asarray(c, dtype=np.float64) for c in cand_blocks]
    if is_paired and len(base) == len(cand):
        keep = [i for i in range(len(base)) if base[i].size and cand[i].size]
        base, cand = [base[i] for i in keep], [cand[i] for i in keep]
    else:
        is_paired = False
        base, cand = [b for b in base if b.size], [c for c in cand if c.size]
    nb, nc = sum(b.size for b in base), sum(c.size for c in cand)
    if min(nb, nc) < P99_MIN_ROUNDS or len(base) < 2 or len(cand) < 2:
        return None
    point = float(np.percentile(np.concatenate(cand), q) / np.percentile(np.concatenate(base), q))
    units = f"{nb} vs {nc} rounds in {len(base)} vs {len(cand)} blocks"
    if is_paired:
        return _paired(base, cand, alpha, q, point, units)
    return _unpaired(base, cand, alpha, q, point, units, session_sd)


def padded(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Blocks as one (cycles, rounds) array, short blocks padded with -inf (never above u)."""
    width = max(b.size for b in blocks)
    out = np.full((len(blocks), width), -np.inf)
    for i, b in enumerate(blocks):
        out[i, :b.size] = b
    return out


def exceedances(base: np.ndarray, cand: np.ndarray, log_scale: np.ndarray,
                q: float) -> np.ndarray:
    """Per-cycle tail scores ``e`` (draws x cycles, integers) for candidate rounds divided by
    exp(``log_scale``) (one per draw); ``base``/``cand``: draws x cycles x rounds, -inf padded.
    The ``m`` pooled rounds above the pooled quantile ``u`` are ranked 1 (just above ``u``) ..
    ``m`` (the slowest); a cycle's score is its candidate rounds' ranks minus its baseline
    rounds' (a signed-rank statistic on the tail: it sees a tail moved by every round above
    ``u``, not only by how many are above)."""
    draws, cycles = base.shape[:2]
    scaled = cand / np.exp(log_scale)[:, None, None]
    pool = np.concatenate([base.reshape(draws, -1), scaled.reshape(draws, -1)], axis=1)
    width = base.shape[2]
    per_side = cycles * width
    m = np.floor((1 - q / 100.0) * np.isfinite(pool).sum(axis=1)).astype(int)
    top = int(m.max())
    out = np.zeros((draws, cycles))
    if top == 0:
        return out.astype(int)
    idx = np.argpartition(-pool, top - 1, axis=1)[:, :top]
    order = np.argsort(-np.take_along_axis(pool, idx, axis=1), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)  # the top rounds, slowest first
    rank = m[:, None] - np.arange(top)[None, :]  # m .. 1; <= 0 beyond this draw's m
    sign = np.where(idx >= per_side, 1, -1)
    cycle = (idx % per_side) // width
    weights = np.where(rank > 0, sign * rank, 0)
    rows = np.repeat(np.arange(draws), top)
    np.add.at(out, (rows, cycle.ravel()), weights.ravel())
    return out.astype(int)


def signflip_tails(e: np.ndarray, widen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(S+ >= observed), P(S+ <= observed)) of S+ = sum of the positive ``e`` under random
    signs of ``|e|`` (exact: subset-sum counts, per draw, over the nonzero cycles), the
    observed deviation from the centre shrunk by ``widen`` (serial correlation)."""
    w = np.sort(np.abs(e).astype(int), axis=1)[:, ::-1]  # nonzero first
    nonzero = int((w > 0).sum(axis=1).max())
    total = w.sum(axis=1)
    size = int(total.max()) + 1
    pmf = np.zeros((e.shape[0], size))
    pmf[:, 0] = 1.0
    cols = np.arange(size)
    for j in range(nonzero):
        step = w[:, j]
        src = cols[None, :] - step[:, None]
        shifted = np.where(src >= 0, np.take_along_axis(pmf, np.maximum(src, 0), axis=1), 0.0)
        pmf = np.where(step[:, None] > 0, (pmf + shifted) / 2.0, pmf)
    cdf = np.cumsum(pmf, axis=1)
    centre = total / 2.0
    observed = np.where(e > 0, e, 0).sum(axis=1)
    shrunk = centre + (observed - centre) / widen
    rows = np.arange(e.shape[0])
    at_most = cdf[rows, np.clip(np.floor(shrunk + 1e-9).astype(int), 0, size - 1)]
    below = np.ceil(shrunk - 1e-9).astype(int) - 1
    at_least = 1.0 - np.where(below >= 0, cdf[rows, np.clip(below, 0, size - 1)], 0.0)
    return np.minimum(at_least, 1.0), np.minimum(at_most, 1.0)


def paired_tail_logs(base: np.ndarray, cand: np.ndarray, alpha: float, q: float = 99.0,
                     grid: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The paired p99 test on draws x cycles x rounds arrays (-inf padded): log ``change``
    (pooled sample quantiles), interval ``lo``/``hi`` (-inf/inf: none), two-sided ``p``, lag-1
    ``r1`` of the per-cycle scores. The bounds come from bisection; with ``grid`` (log ratios,
    e.g. (-log(1+t), 0, log(1+t))) the test is inverted only at those points and each bound is
    the outermost grid point it is known to pass (just inside it): enough for ``decide`` at
    that threshold, and fast enough for the tests' simulations."""
    draws = base.shape[0]
    flat = lambda x: x.reshape(draws, -1)  # noqa: E731
    change = np.log(_percentile(flat(cand), q)) - np.log(_percentile(flat(base), q))
    scores = exceedances(base, cand, change, q)
    r1 = lag1(scores.astype(np.float64))
    # the scores are mostly zero, so their lag-1 estimate is coarse: it is acted on only with
    # enough cycles above u, and without the extra standard error the latency test adds (on
    # independent cycles that margin took every bound away in 1 of 7 pairs; the sign-flip test
    # held its alpha on drifting cycles without it: tests/test_gate_stats.py)
    counted = (scores != 0).sum(axis=1)
    widen = np.where(counted >= SERIAL_MIN_CYCLES, inflation(r1, base.shape[1], margin=0.0),
                     1.0)
    cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def tails(log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(S+ >= obs), P(S+ <= obs)) for a ratio of exp(log_scale); one-sided at alpha / 2
        the first rejects ratios below it, the second ratios above it."""
        key = float(log_scale[0]) if np.all(log_scale == log_scale[0]) else None
        if key is not None and key in cache:
            return cache[key]
        out = signflip_tails(exceedances(base, cand, log_scale, q), widen)
        if key is not None:
            cache[key] = out
        return out

    up, down = tails(np.zeros(draws))
    p = np.minimum(1.0, 2.0 * np.minimum(up, down))

    def rejected(log_scale: np.ndarray, upper: bool) -> np.ndarray:
        return tails(log_scale)[1 if upper else 0] <= alpha / 2.0

    if grid is not None:
        lo, hi = np.full(draws, -np.inf), np.full(draws, np.inf)
        tiny = 1e-12
        for point in sorted(grid):
            lo = np.where(rejected(np.full(draws, point), False), point + tiny, lo)
        for point in sorted(grid, reverse=True):
            hi = np.where(rejected(np.full(draws, point), True), point - tiny, hi)
        return {"change": change, "lo": lo, "hi": hi, "p": p, "r1": r1, "inflation": widen}
    finite = lambda x: np.where(np.isfinite(x) & (x > 0), x, np.nan)  # noqa: E731
    top_c, low_c = np.nanmax(finite(flat(cand)), axis=1), np.nanmin(finite(flat(cand)), axis=1)
    top_b, low_b = np.nanmax(finite(flat(base)), axis=1), np.nanmin(finite(flat(base)), axis=1)
    # beyond these scales every round above u is on one side
    lo = _bisect(lambda x: rejected(x, False), change, np.log(low_c / top_b) - 1.0, -np.inf)
    hi = _bisect(lambda x: rejected(x, True), change, np.log(top_c / low_b) + 1.0, np.inf)
    return {"change": change, "lo": lo, "hi": hi, "p": p, "r1": r1, "inflation": widen}


def _bisect(rejected: Callable[[np.ndarray], np.ndarray], inner: np.ndarray,
            outer: np.ndarray, none: float) -> np.ndarray:
    """The scale where the test starts rejecting, between ``inner`` (the estimate) and
    ``outer``; ``none`` where even ``outer`` is not rejected (too few rounds above u for this
    alpha: the smallest p-value is 2^(1 - m))."""
    far = rejected(outer)
    a, b = inner.copy(), outer.copy()
    for _ in range(BISECTIONS):
        mid = (a + b) / 2.0
        hit = rejected(mid)
        b, a = np.where(hit, mid, b), np.where(hit, a, mid)
    return np.where(far, b, none)


def _percentile(values: np.ndarray, q: float) -> np.ndarray:
    """np.percentile per row over the finite values (-inf padding left out)."""
    if np.isfinite(values).all():
        return np.percentile(values, q, axis=1)
    out = np.empty(values.shape[0])
    for i, row in enumerate(values):
        out[i] = np.percentile(row[np.isfinite(row)], q)
    return out


def _paired(base: list[np.ndarray], cand: list[np.ndarray], alpha: float, q: float,
            point: float, units: str) -> Estimate:
    out = {k: float(v[0]) for k, v in
           paired_tail_logs(padded(base)[None], padded(cand)[None], alpha, q).items()}
    # one bound without the other still decides one side (exp(-inf) = 0, exp(inf) = inf)
    ci = (math.exp(out["lo"]), math.exp(out["hi"])) if math.isfinite(out["lo"]) or \
        math.isfinite(out["hi"]) else None
    note = f"lag-1 r {out['r1']:+.2f}" + (f": interval x{out['inflation']:.2f} wider"
                                          if out["inflation"] > 1.0 else "")
    return Estimate(point, out["p"], ci, "exact sign-flip test of p99 exceedances (paired "
                    "cycles)", units, alpha, note)


def _unpaired(base: list[np.ndarray], cand: list[np.ndarray], alpha: float, q: float,
              point: float, units: str, session_sd: float) -> Estimate:
    def jackknife_var(blocks: list[np.ndarray]) -> float:
        k = len(blocks)
        values = np.array([math.log(float(mstats.hdquantiles(
            np.concatenate(blocks[:i] + blocks[i + 1:]), prob=[q / 100.0])[0]))
            for i in range(k)])
        return float((k - 1) / k * ((values - values.mean()) ** 2).sum())

    vb, vc = jackknife_var(base), jackknife_var(cand)
    between = 2.0 * session_sd ** 2
    se = math.sqrt(vb + vc + between)
    diff = math.log(point)
    method = "jackknife over blocks of the Harrell-Davis p99" + (
        f" + session sd {session_sd:.1%}" if session_sd > 0 else "")
    if se == 0.0:
        return Estimate(point, 1.0 if diff == 0 else 0.0, (point, point), method, units, alpha)
    df = satterthwaite(((vb, len(base) - 1), (vc, len(cand) - 1), (between, math.inf)))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Estimate(point, p, (math.exp(diff - half), math.exp(diff + half)), method, units,
                    alpha, df_note(df))
