"""What the regression gate learns from the main branch's history.

- ``noise_from_history``: each case's between-session spread measured on the last N main-branch
  runs, as a ``NoiseModel`` the unpaired test uses instead of the constant 9%
  (``DEFAULT_SESSION_SD``). Those runs are of different commits, so a real step among them must
  not read as noise: the spread is taken from run-to-run differences with a robust scale (the
  median absolute deviation, scipy), which one step moves by one difference only.
- ``drift_rows``: a candidate run against the last N main runs, not only the last one. ``drift``
  compares its centre with main's current level (the mean of the centres since the last change
  E-Divisive finds among the N, else of all N); ``creep`` with the mean of the oldest three,
  i.e. how far main plus this change has moved over the window (ten changes of 2% that each
  pass a 3% gate add up to 20% here). Both are ``compare.Row``s decided by the gate's own
  ``stats.decide`` (significant *and* beyond the threshold; ``cannot decide`` when the spread
  hides a change of the threshold's size), with the between-session sd as the uncertainty of
  every centre.

A session's centre is the mean of its log block medians (``results.noise.session_centres``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import InputError
from .compare import Row
from .history import machine_label, read_history
from .load import Run
from .noise import MIN_RUNS, NoiseModel
from .record import CaseRecord, log_spread
from .stats import DEFAULT_SESSION_SD, Estimate, decide

LAST_RUNS = 20  # main-branch runs the gate learns from (``--last``)
CREEP_BASE = 3  # oldest runs of the window the creep is measured from


def centre_of(record: CaseRecord) -> float | None:
    """Log centre of one case's session: the mean of its log block medians."""
    spread = log_spread(record.timing_blocks()[1])
    return spread[0] if spread is not None else None


def recent_runs(storage: Path | str, branch: str = "main", last: int = LAST_RUNS,
                machine: str | None = None) -> list[Run]:
    """The last ``last`` runs of ``branch`` in commit order, from the machine of the newest
    (a window never mixes machines)."""
    history = read_history(storage, branch, metrics=("p50_ms",), machine=machine)
    newest = list(history.runs.values())[-1]
    label = machine or machine_label(newest.machine, newest.path.parent.name)
    chosen = next((m for m in history.machines if label in m), None)
    if chosen is None:
        raise InputError(f"no run of branch {branch!r} in {storage} is from machine {label!r}; "
                         f"machines there: {', '.join(history.machines)}")
    return history.machine_runs(chosen)[-last:]


def current_level(centres: Sequence[float]) -> tuple[list[float], str]:
    """The centres since main's last change (E-Divisive on the window, when the changepoint
    library is installed and the last level holds two runs or more), and what they are."""
    from .changepoints import available, find_changes

    if not available():
        return list(centres), f"the last {len(centres)} main runs"
    changes = find_changes(np.exp(centres))
    start = changes[-1].index if changes else 0
    if len(centres) - start < 2:
        return list(centres), f"the last {len(centres)} main runs"
    if start == 0:
        return list(centres), f"the last {len(centres)} main runs (no change among them)"
    return list(centres[start:]), (f"main's current level: its last {len(centres) - start} "
                                   f"runs, since a change {len(centres) - start} runs ago")


def session_sd(centres: Sequence[float]) -> float | None:
    """Between-session sd of log centres from run-to-run differences (robust to a step: it is
    one difference); None with fewer than ``MIN_RUNS`` centres."""
    if len(centres) < MIN_RUNS:
        return None
    diffs = np.diff(np.asarray(centres, dtype=np.float64))
    return float(stats.median_abs_deviation(diffs, scale="normal")) / math.sqrt(2.0)


def noise_from_history(runs: Sequence[Run], label: str = "") -> NoiseModel:
    """Per case, the between-session sd over ``runs`` (at least ``MIN_RUNS`` of them holding
    the case); cases seen fewer times keep the default, the median of the measured ones."""
    per_case: dict[str, float] = {}
    ids = sorted({c for run in runs for c in run.cases})
    for case_id in ids:
        centres = [centre_of(run.cases[case_id]) for run in runs if case_id in run.cases]
        sd = session_sd([c for c in centres if c is not None])
        if sd is not None:
            per_case[case_id] = sd
    default = float(np.median(list(per_case.values()))) if per_case else DEFAULT_SESSION_SD
    source = f"history: {len(runs)} runs" + (f" ({label})" if label else "")
    return NoiseModel(default, per_case, source)


def _estimate(diff: float, se: float, df: int, alpha: float, units: str, what: str) -> Estimate:
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else float(diff == 0)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return Estimate(math.exp(diff), p, (math.exp(diff - half), math.exp(diff + half)), what,
                    units, alpha)


def drift_rows(case_id: str, candidate: CaseRecord, history: Sequence[CaseRecord],
               sd: float, threshold: float, alpha: float) -> list[Row]:
    """``drift`` and ``creep`` rows of one case: ``candidate`` and ``history`` are its records,
    the history oldest first; ``sd``: the between-session sd. No row with fewer than
    ``MIN_RUNS`` history centres."""
    centres = [c for c in (centre_of(b) for b in history) if c is not None]
    mine = centre_of(candidate)
    if mine is None or len(centres) < MIN_RUNS:
        return []
    n, limit = len(centres), f"{threshold:.0%}"
    rows = []
    k = min(CREEP_BASE, n)
    level, level_text = current_level(centres)
    for metric, ref, count, what in (
            ("drift", float(np.mean(level)), len(level), level_text),
            ("creep", float(np.mean(centres[:k])), k,
             f"the oldest {k} of the last {n} main runs")):
        # every centre is one session: the candidate's and the reference mean's spread
        se = sd * math.sqrt(1.0 + 1.0 / count)
        estimate = _estimate(mine - ref, se, max(n - 1, 1), alpha, f"1 vs {count} sessions",
                             f"t on log session centres, session sd {sd:.1%} from history")
        verdict = decide(estimate, threshold, alpha)
        detail = f"against {what}; {estimate.describe(threshold)}"
        rows.append(Row(case_id, metric, verdict, math.exp(ref), math.exp(mine),
                        estimate.ratio, "ms", limit, estimate.p_value, detail,
                        estimate.mde_at(threshold)))
    return rows


def drift(candidate: Run, runs: Sequence[Run], noise: NoiseModel | None = None,
          threshold: float = 0.03, alpha: float = 0.002) -> list[Row]:
    """Every case of ``candidate`` against ``runs`` (the last N main runs, oldest first)."""
    noise = noise or noise_from_history(runs)
    rows = []
    for case_id, record in candidate.cases.items():
        history = [run.cases[case_id] for run in runs if case_id in run.cases]
        rows += drift_rows(case_id, record, history, noise.sd(case_id), threshold, alpha)
    return rows
