"""Group-sequential paired verdicts and the run's false-alarm budget.

**Run level.** A run gates many tests (12 cases x latency and p99 in the default suite); each
false-alarms with probability up to its alpha, so the run's chance of *any* false alarm grows
with their number. The budget ``alpha_run`` (default 1%) is split evenly over the ``tests`` the
run gates (Bonferroni: P(any false alarm) <= sum of the tests' alphas, whatever their
correlation; cases of one session share the host, so independence cannot be assumed). Holm would
be less strict only after other tests had rejected, and needs every test's p-value before any
verdict, while pytest reports each case as its item runs and cannot take a verdict back. The
number of gated tests is known when the timing phase starts (cases x gated timing metrics).

**Looks.** A pair is looked at after ``points[0]`` cycles, then every ``step`` cycles up to the
most; it stops as soon as its latency verdict is reached (``regressed``, ``improved``, or
``unchanged`` by equivalence) and the undecided go on. Each look tests at its share of the test's
alpha (``LookSchedule.alpha_at``); the shares sum to one, so by the union bound a false alarm at
*any* look has probability <= alpha whatever the looks' correlation (no Brownian-motion model of
the rank statistic on serially correlated, heavy-tailed cycles needed). The last look keeps
half of alpha (what the two-look design's second look had: a change that needs every cycle is
tested as before); the other half is spent over the earlier looks by a spending function of
their information fraction (linear by default, so a clear change or a clear equivalence stops
at 20-40 cycles). Chosen by simulation against the two-look design and against spending all
of alpha by O'Brien-Fleming- or Pocock-like shapes, which caught a little (O'Brien-Fleming) or
clearly (Pocock) fewer small changes (``benchmarks/scripts/gate_simulation.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import stats as st

DEFAULT_ALPHA_RUN = 0.01
SETTLED = ("regressed", "improved", "unchanged")
SHAPES = ("power", "pocock")
LOOK_STEP = 10
FIRST_LOOK = 20
SPEND_SHAPE, SPEND_RHO = "power", 1.0
FINAL_SHARE = 0.5


def per_test_alpha(alpha_run: float, tests: int) -> float:
    """Each gated test's alpha so that an A/A run raises any false alarm with probability
    <= ``alpha_run`` (Bonferroni over the run's ``tests``: cases x gated timing metrics)."""
    if not 0.0 < alpha_run < 1.0:
        raise ValueError(f"alpha_run {alpha_run!r}: must be in (0, 1)")
    if tests < 1:
        raise ValueError(f"tests {tests!r}: a run gates at least one test")
    return alpha_run / tests


def spending(tau: np.ndarray, shape: str = SPEND_SHAPE, rho: float = SPEND_RHO) -> np.ndarray:
    """Fraction of alpha spent by information fraction ``tau`` (cycles / most): ``power``
    tau^rho (rho 3 is close to O'Brien-Fleming's shape, 1 spends evenly), ``pocock``
    log(1 + (e - 1) tau)."""
    tau = np.clip(np.asarray(tau, dtype=np.float64), 0.0, 1.0)
    if shape == "power":
        return tau ** rho
    if shape == "pocock":
        return np.log1p((math.e - 1.0) * tau)
    raise ValueError(f"spending shape {shape!r}: choose one of {', '.join(SHAPES)}")


@dataclass(frozen=True)
class LookSchedule:
    """Cycles at each look and the share of the test's alpha each look tests at."""

    points: tuple[int, ...]
    shares: tuple[float, ...]

    @classmethod
    def build(cls, first: int = FIRST_LOOK, most: int = 100, step: int = LOOK_STEP,
              final: float = FINAL_SHARE, shape: str = SPEND_SHAPE,
              rho: float = SPEND_RHO) -> LookSchedule:
        """Looks at ``first``, ``first + step``, ... and ``most`` (one look when ``most <=
        first``: a smoke run). The last look tests at ``final`` of the alpha; the earlier looks
        share the rest by the spending function on their information fraction (``final`` None:
        the spending function over all looks)."""
        if first < 1 or step < 1:
            raise ValueError(f"looks: first {first!r} and step {step!r} must be >= 1")
        points = list(range(first, most, step)) + [most] if most > first else [first]
        if len(points) == 1:
            return cls.single(points[0])
        early = points if final is None else points[:-1]
        cumulative = spending(np.array(early) / early[-1], shape, rho)
        shares = np.diff(np.concatenate([[0.0], cumulative]))
        if final is not None:
            shares = np.append(shares / shares.sum() * (1.0 - final), final)
        return cls(tuple(points), tuple(float(s) for s in shares / shares.sum()))

    @classmethod
    def single(cls, cycles: int) -> LookSchedule:
        return cls((cycles,), (1.0,))

    @property
    def looks(self) -> int:
        return len(self.points)

    def look_of(self, cycles: int) -> int:
        """Index of the look a verdict on ``cycles`` cycles belongs to: the last look point
        reached (the first look for fewer cycles; a pair that lost cycles keeps its look)."""
        return max(0, int(np.searchsorted(self.points, cycles, side="right")) - 1)

    def alpha_at(self, alpha: float, cycles: int) -> float:
        return alpha * self.shares[self.look_of(cycles)]

    def next_point(self, cycles: int) -> int | None:
        """Cycles of the next look after ``cycles``, None after the last."""
        later = [p for p in self.points if p > cycles]
        return later[0] if later else None


def look_alphas(alpha_run: float, tests: int, schedule: LookSchedule) -> tuple[float, ...]:
    """Per-look alpha of each gated test: the run's budget over its tests, then over the
    looks. Their sum over tests and looks is ``alpha_run``."""
    alpha = per_test_alpha(alpha_run, tests)
    return tuple(alpha * s for s in schedule.shares)


def look_verdict(base_ms: Sequence[float], cand_ms: Sequence[float], threshold: float,
                 alpha: float, schedule: LookSchedule) -> tuple[str, st.Estimate | None]:
    """The paired latency verdict on the cycles so far, at this look's alpha."""
    estimate = st.paired(base_ms, cand_ms, schedule.alpha_at(alpha, len(base_ms)))
    return ("cannot decide" if estimate is None else st.decide(estimate, threshold)), estimate


def settled(base_ms: Sequence[float], cand_ms: Sequence[float], threshold: float,
            alpha: float, schedule: LookSchedule) -> bool:
    """What the scheduler asks after each look (per-cycle fastest rounds of the two sides, in
    cycle order): True when the pair's verdict is reached and it can stop."""
    return look_verdict(base_ms, cand_ms, threshold, alpha, schedule)[0] in SETTLED


def sequential_logs(d: np.ndarray, threshold: float, alpha: float,
                    schedule: LookSchedule) -> tuple[np.ndarray, np.ndarray]:
    """The whole schedule on rows of per-cycle log ratios (draws x ``schedule.points[-1]``):
    (verdict codes into ``stats.VERDICT_CODES``, cycles used), as the scheduler and
    ``settled`` reach them. The simulations in the tests and in
    ``benchmarks/scripts/gate_simulation.py`` run this."""
    draws = d.shape[0]
    codes = np.full(draws, st.VERDICT_CODES.index("cannot decide"))
    used = np.full(draws, schedule.points[-1])
    open_rows = np.arange(draws)
    settled_codes = [st.VERDICT_CODES.index(v) for v in SETTLED]
    for look, n in enumerate(schedule.points):
        if not open_rows.size:
            break
        out = st.paired_logs(d[open_rows, :n], alpha * schedule.shares[look])
        verdict = st.decide_logs(out["change"], out["lo"], out["hi"], threshold)
        last = look == schedule.looks - 1
        done = np.isin(verdict, settled_codes) | last
        codes[open_rows[done]] = verdict[done]
        used[open_rows[done]] = n
        open_rows = open_rows[~done]
    return codes, used
