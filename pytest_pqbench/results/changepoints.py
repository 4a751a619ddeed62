"""Where a series changed level, and how much it moved over the last runs (the creep).

Timing series (p50, p99): E-Divisive means with a permutation significance test (Matteson and
James 2014, as MongoDB's and DataStax's performance teams use it), from Apache Otava (formerly
Hunter): ``otava.analysis.compute_change_points_orig``, on the log of each run's figure, so a
change is relative. Chosen over signal-processing-algorithms (the same test; it installs only on
Python 3.11 with numpy < 2), Otava's windowed t-test variant (9% false alarms on A/A histories
with one slow session in ten) and ruptures (no significance test: a penalty stands in for one)
by measurement: docs/how-to/history.md, ``benchmarks/scripts/changepoint_libraries.py``. None of the
detection is written here; this module cuts the series at the points the library returns and
reports the segments' levels.

Exact series (accuracy, model size): a session reproduces them, so every change of value is a
change and no test is needed.

A creep (ten changes of 2%, each under a 3% gate) shows as one or several steps, or none when
each is within the noise. So every series also gets its ``Window``: the level change over the
last N runs (the product of the changes inside it) and the trend over them (Theil-Sen slope
per run with its interval; Mann-Kendall's test, Kendall's tau against the run order, both from
scipy), flagged ``creeping`` when the trend is significant and adds up to more than a threshold
over the window, whatever its shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError

ALPHA = 0.01  # permutation test: 100 permutations resolve p down to 1/101
PERMUTATIONS = 100  # Otava's own count for the original E-Divisive
MIN_POINTS = 5  # fewer runs than this give no test
WINDOW = 10  # runs the creep is measured over (``--window``)
CREEP_THRESHOLD = 0.03  # the default latency gate: a creep beyond it over the window is flagged
RAMP_GAP = 3  # changes this close (runs) and of one sign are reported as one ramp
INSTALL = "pip install --no-deps apache-otava==0.8.0"


@dataclass(frozen=True)
class Change:
    """A new level from series row ``index`` on. ``before`` / ``after``: the levels of the
    segments either side (geometric means for timings), in the metric's unit."""

    index: int
    before: float
    after: float
    p_value: float | None = None
    exact: bool = False

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else math.inf

    def size_text(self, metric: str) -> str:
        if metric == "accuracy":
            return f"{(self.after - self.before) * 100:+.2f} pp"
        return f"{self.ratio - 1:+.1%}"


@dataclass(frozen=True)
class Window:
    """The last ``size`` runs (rows ``first``..``last``): the level change across them (the
    changes inside, multiplied), and the trend (per run) with its test."""

    first: int
    last: int
    change: float  # level at the last run / level just before the window
    steps: tuple[Change, ...] = ()
    slope: float | None = None  # Theil-Sen, relative change per run (0.01: 1% per run)
    slope_ci: tuple[float, float] | None = None
    p_value: float | None = None  # Mann-Kendall trend test
    creeping: bool = False

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def trend_total(self) -> float | None:
        """The trend's change across the window (a ratio), or None without a trend test."""
        return None if self.slope is None else (1 + self.slope) ** self.size


@dataclass(frozen=True)
class Ramp:
    """Consecutive changes of one sign, each within ``RAMP_GAP`` runs of the last: one slowdown
    (or speed-up) that the detector saw as several steps."""

    steps: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def first(self) -> int:
        return self.steps[0].index

    @property
    def last(self) -> int:
        return self.steps[-1].index

    @property
    def ratio(self) -> float:
        return self.steps[-1].after / self.steps[0].before


def _otava():
    try:
        from otava.analysis import compute_change_points_orig
    except ImportError:
        raise UsageError("changepoints need Apache Otava's E-Divisive: install it with "
                         f"`{INSTALL}` (its declared pins would downgrade numpy and scipy and "
                         "pull in database clients; its algorithms need only numpy and scipy)"
                         ) from None
    return compute_change_points_orig


def available() -> bool:
    try:
        _otava()
    except UsageError:
        return False
    return True


def _logs(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.log(np.maximum(arr, np.finfo(np.float64).tiny))


def levels(values: Sequence[float], cuts: Sequence[int], exact: bool = False) -> list[float]:
    """The level of each point's segment (segments start at 0 and at every cut)."""
    arr = np.asarray(values, dtype=np.float64)
    bounds = [0, *sorted(cuts), arr.size]
    out: list[float] = []
    for start, stop in zip(bounds, bounds[1:], strict=False):
        part = arr[start:stop]
        level = float(part.mean()) if exact else float(np.exp(_logs(part).mean()))
        out += [level] * part.size
    return out


def find_changes(values: Sequence[float], exact: bool = False, alpha: float = ALPHA,
                 seed: int = 0) -> list[Change]:
    """Changes of level, oldest first. Timings: E-Divisive means at ``alpha`` (seeded
    permutations: the same series always gives the same answer); exact figures: every change
    of value."""
    arr = np.asarray(values, dtype=np.float64)
    if exact:
        cuts = [i for i in range(1, arr.size)
                if abs(arr[i] - arr[i - 1]) > 1e-12 * max(abs(arr[i]), abs(arr[i - 1]), 1.0)]
        p_values: dict[int, float | None] = dict.fromkeys(cuts)
    elif arr.size < MIN_POINTS or np.ptp(_logs(arr)) < 1e-9:
        # fewer points than a test needs, or one level up to rounding (figures computed from
        # the same numbers in another order): E-Divisive would rank rounding noise
        return []
    else:
        detect = _otava()
        points, _ = detect(_logs(arr), max_pvalue=alpha, seed=seed)
        p_values = {int(p.index): float(p.stats.pvalue) for p in points}
        cuts = sorted(p_values)
    level = levels(arr, cuts, exact)
    return [Change(i, level[i - 1], level[i], p_values[i], exact) for i in cuts]


def window_of(values: Sequence[float], changes: Sequence[Change], size: int = WINDOW,
              exact: bool = False, alpha: float = ALPHA,
              threshold: float = CREEP_THRESHOLD) -> Window | None:
    """The last ``size`` runs: level change and trend. None with fewer than 3 runs."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 3:
        return None
    first = max(0, arr.size - size)
    last = arr.size - 1
    level = levels(arr, [c.index for c in changes], exact)
    anchor = level[first - 1] if first > 0 else level[0]
    change = level[last] / anchor if anchor else math.inf
    steps = tuple(c for c in changes if c.index >= first)
    if exact or last - first + 1 < MIN_POINTS:
        return Window(first, last, change, steps)
    y = _logs(arr[first:])
    x = np.arange(y.size, dtype=np.float64)
    slope, _, low, high = stats.theilslopes(y, x, alpha=1 - alpha)
    tau = stats.kendalltau(x, y)
    p = float(tau.pvalue) if tau.pvalue == tau.pvalue else 1.0
    total = math.expm1(slope * y.size)
    creeping = p <= alpha and abs(total) >= threshold
    return Window(first, last, change, steps, math.expm1(slope),
                  (math.expm1(low), math.expm1(high)), p, creeping)


def ramps(changes: Sequence[Change], gap: int = RAMP_GAP) -> list[Ramp]:
    """Runs of two or more same-sign changes, each within ``gap`` rows of the previous."""
    out: list[Ramp] = []
    group: list[Change] = []
    for change in changes:
        if group and (change.index - group[-1].index > gap
                      or (change.ratio > 1) != (group[-1].ratio > 1)):
            if len(group) > 1:
                out.append(Ramp(tuple(group)))
            group = []
        group.append(change)
    if len(group) > 1:
        out.append(Ramp(tuple(group)))
    return out
