"""Simulated timing data like the 2-vCPU VM's, and the gate design that the group-sequential
one replaced, for ``test_gate_stats.py`` and ``benchmarks/scripts/gate_simulation.py``.

The noise (README, "Regression gate: calibration"; ``benchmarks/scripts/paired_noise.py``):
per-cycle ratios of a pair's blocks are mostly within a few percent, with a heavy tail when the
host changed regime between the two blocks of a cycle (a vCPU taken away: one block 25-30% off),
and such changes come in bursts lasting several cycles; a side's blocks also drift (memory
placement, a thread pool's state), so neighbouring cycles' ratios are correlated. Calls of a
short INT8 engine are bimodal (one or both vCPUs), with rare spikes of 1.5-3x (descheduled).
All draws are vectorised: a row is one pair's whole timing.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

JUMPS = (math.log(1.3), math.log(0.75))


def bursts(rng: np.random.Generator, draws: int, cycles: int, rate: float = 0.06,
           stay: float = 0.7, inside: float = 0.3, calm: float = 0.02) -> np.ndarray:
    """Cycles whose two blocks fell in different host regimes (bool, draws x cycles): a
    two-state chain (calm / turbulent, turbulent spells lasting 1 / (1 - ``stay``) cycles)
    whose stationary jump rate is ``rate``."""
    share = (rate - calm) / (inside - calm)  # time in the turbulent state
    enter = share * (1 - stay) / (1 - share)
    state = rng.random(draws) < share
    out = np.empty((draws, cycles), dtype=bool)
    for i in range(cycles):
        state = np.where(state, rng.random(draws) < stay, rng.random(draws) < enter)
        out[:, i] = rng.random(draws) < np.where(state, inside, calm)
    return out


def ar1(rng: np.random.Generator, draws: int, cycles: int, sd: float, rho: float,
        df: float = 4.0) -> np.ndarray:
    """AR(1) series with marginal sd ``sd``, lag-1 correlation ``rho`` and Student-t
    (``df``) innovations: heavy-tailed and serially correlated."""
    shocks = rng.standard_t(df, (draws, cycles)) * math.sqrt((df - 2) / df)
    out = np.empty((draws, cycles))
    level = shocks[:, 0] * sd
    scale = sd * math.sqrt(1 - rho ** 2)
    for i in range(cycles):
        level = level if i == 0 else rho * level + scale * shocks[:, i]
        out[:, i] = level
    return out


def vm_log_ratios(rng: np.random.Generator, draws: int, cycles: int, sd: float = 0.03,
                  rho: float = 0.3, rate: float = 0.06, change: float = 0.0) -> np.ndarray:
    """Per-cycle log ratios (candidate / baseline block figure) of a pair whose true change is
    ``change`` (0.05: 5% slower): AR(1) drift + bursts of regime jumps on either side."""
    jumps = bursts(rng, draws, cycles, rate)
    size = np.where(rng.random((draws, cycles)) < 0.5, *JUMPS)
    side = np.where(rng.random((draws, cycles)) < 0.5, 1.0, -1.0)
    return math.log1p(change) + ar1(rng, draws, cycles, sd, rho) + np.where(jumps, size * side,
                                                                             0.0)


def vm_rounds(rng: np.random.Generator, draws: int, cycles: int, rounds: int,
              drift_sd: float = 0.02, rho: float = 0.5, change: float = 0.0,
              tail_change: float = 0.0, centre_ms: float = 4.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Rounds (ms) of a pair's blocks: (baseline, candidate), each draws x cycles x rounds.
    Shared per-cycle host regime; per-side AR(1) drift; regime jumps in bursts on one side;
    per round a bimodal speed (30% of calls on one vCPU, x1.6) and 2% spikes of 1.5-3x.
    ``change`` slows every round, ``tail_change`` only the spikes (a heavier tail)."""
    regime = np.exp(rng.normal(0, 0.1, (draws, cycles, 1)))
    jumps = bursts(rng, draws, cycles)
    jump_side = rng.random((draws, cycles)) < 0.5
    jump_size = np.where(rng.random((draws, cycles)) < 0.5, *JUMPS)

    def side(is_cand: bool, slower: float, tail: float) -> np.ndarray:
        mine = jumps & (jump_side == is_cand)
        block = np.exp(ar1(rng, draws, cycles, drift_sd, rho) + np.where(mine, jump_size, 0.0))
        calls = np.exp(rng.normal(0, 0.03, (draws, cycles, rounds)))
        calls *= np.where(rng.random((draws, cycles, rounds)) < 0.3, 1.6, 1.0)
        spikes = rng.random((draws, cycles, rounds)) < 0.02
        calls = np.where(spikes, calls * rng.uniform(1.5, 3.0, calls.shape) * (1 + tail), calls)
        return centre_ms * (1 + slower) * regime * block[:, :, None] * calls

    return side(False, 0.0, 0.0), side(True, change, tail_change)


# ---- the design it replaced: two looks (40, 100) at alpha / 2, normal-approximation interval,
# ``unchanged`` when the test's MDE <= threshold (pytest_pqbench before issue 22) -------------
def legacy_verdicts(d: np.ndarray, threshold: float, alpha: float) -> np.ndarray:
    """The old ``stats.decide(stats.paired(...))`` on rows of log ratios: indices into
    ("regressed", "improved", "unchanged", "not significant", "cannot decide")."""
    draws, n = d.shape
    i, j = np.triu_indices(n)
    walsh = np.sort((d[:, i] + d[:, j]) / 2, axis=1)
    total = walsh.shape[1]
    change = (walsh[:, (total - 1) // 2] + walsh[:, total // 2]) / 2
    p = stats.wilcoxon(d, axis=1).pvalue  # scipy's default: exact to 50 cycles, then normal
    z = stats.norm.ppf(1 - alpha / 2)
    rank = int(math.floor(total / 2 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)))
    if rank < 1:
        mde = np.full(draws, np.inf)
    else:
        se = (walsh[:, total - rank] - walsh[:, rank - 1]) / (2 * z)
        mde = np.expm1((z + stats.norm.ppf(0.8)) * se)
    edge = math.log1p(threshold)
    worse, better, significant = change > edge, change < -edge, p <= alpha
    out = np.full(draws, 2)
    out[worse | better] = 3
    out[mde > threshold] = 4
    out[significant & better] = 1
    out[significant & worse] = 0
    return out


def legacy_two_looks(d: np.ndarray, threshold: float, alpha: float, first: int = 40,
                     most: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(verdict codes, cycles used) of the old two-look design."""
    codes = legacy_verdicts(d[:, :first], threshold, alpha / 2)
    used = np.full(d.shape[0], first)
    again = codes >= 3
    if again.any():
        codes[again] = legacy_verdicts(d[again, :most], threshold, alpha / 2)
        used[again] = most
    return codes, used


# ---- a whole run of the default suite ----------------------------------------------------------
# The default suite's 12 cases: per-side drift sd (sets the per-cycle noise of the fastest-round
# ratio, about sqrt(2) x drift: 0.7-4.2%, so the two-look design's MDE at 40 cycles spans the
# 0.5-2.9% measured on host B, README "Regression gate: calibration, host B") and rounds per
# paired block (3 ms INT8 engines fill a 50 ms block with 17 calls; slower ones get the 5 that
# min-rounds / cycles asks for).
SUITE = tuple(zip(np.geomspace(0.005, 0.03, 12), (17, 5) * 6, strict=True))


def run_alarms(rng: np.random.Generator, runs: int, alpha_test: float, schedule,
               latency: float = 0.03, p99: float = 0.2, suite=SUITE,
               neighbour: float = 1.0) -> np.ndarray:
    """Whether each of ``runs`` simulated A/A runs of ``suite`` raised any false alarm
    (``regressed`` or ``improved``) on latency (the group-sequential paired test) or p99 (the
    exact tail test at the look where the pair stopped), each test at ``alpha_test``.
    ``neighbour`` scales the noise (a loaded host)."""
    from pytest_pqbench.results.sequential import sequential_logs
    from pytest_pqbench.results.stats import decide_logs
    from pytest_pqbench.results.tail import paired_tail_logs

    alarms = np.zeros(runs, dtype=bool)
    most = schedule.points[-1]
    edge = math.log1p(p99)
    for drift, rounds in suite:
        base, cand = vm_rounds(rng, runs, most, rounds, drift_sd=drift * neighbour)
        d = np.log(cand.min(axis=2)) - np.log(base.min(axis=2))
        codes, used = sequential_logs(d, latency, alpha_test, schedule)
        alarms |= codes <= 1
        for look, n in enumerate(schedule.points):
            rows = np.flatnonzero(used == n)
            if not rows.size:
                continue
            out = paired_tail_logs(base[rows, :n], cand[rows, :n],
                                   alpha_test * schedule.shares[look], grid=(-edge, 0.0, edge))
            alarms[rows] |= decide_logs(out["change"], out["lo"], out["hi"], p99) <= 1
    return alarms
