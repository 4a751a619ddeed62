"""A/A calibration: how much a case's latency moves between sessions of one commit, here.

``pqbench noise RUN RUN [RUN...]`` reads several runs of the same commit (the same cases) and
measures, per case, the between-session spread of its latency (standard deviation of the log
session centres, each the mean of its log block medians) and the within-session block spread.
From that it prints the smallest latency threshold that keeps A/A false alarms under a target
rate, and writes a noise file the gate reads (``pqbench compare --noise FILE``,
``--pqbench-noise FILE``) in place of the built-in ``DEFAULT_SESSION_SD``.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..errors import InputError
from .load import Run
from .record import log_spread
from .stats import DEFAULT_SESSION_SD

NOISE_SCHEMA = 1
MIN_RUNS = 5  # fewer runs give a session sd too uncertain to set a threshold by


@dataclass
class NoiseModel:
    """Between-session log-scale sd per case; ``default_sd`` for cases it has not seen."""

    default_sd: float = DEFAULT_SESSION_SD
    per_case: dict[str, float] = field(default_factory=dict)
    source: str = "built-in default"

    def sd(self, case_id: str) -> float:
        return self.per_case.get(case_id, self.default_sd)

    @classmethod
    def load(cls, path: str | Path) -> NoiseModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such noise file (write one with pqbench noise "
                             "RUN RUN ... --write FILE)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a pqbench noise file ({exc})") from None
        if not isinstance(data, dict) or data.get("pqbench_noise") != NOISE_SCHEMA:
            raise InputError(f"{path}: not a pqbench noise file (no 'pqbench_noise': "
                             f"{NOISE_SCHEMA})")
        per_case = data.get("session_sd") or {}
        default = data.get("default_sd", DEFAULT_SESSION_SD)
        values = [default, *per_case.values()] if isinstance(per_case, dict) else [None]
        if not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values):
            raise InputError(f"{path}: session_sd values must be finite numbers >= 0")
        return cls(float(default), {str(k): float(v) for k, v in per_case.items()},
                   f"{path} ({data.get('runs', '?')} runs)")


@dataclass(frozen=True)
class CaseNoise:
    case_id: str
    runs: int
    p50_ms: tuple[float, ...]  # each run's centre (geometric mean of block medians)
    session_sd: float  # log-scale sd between runs
    block_sd: float  # median within-run log sd of block medians
    threshold: float  # relative threshold keeping A/A false alarms under the target rate
    pairs_beyond: int  # A/A pairs of these runs whose ratio already exceeds the threshold
    pairs: int


def session_centres(run: Run) -> dict[str, tuple[float, float]]:
    """case id -> (log centre of the session, within-session sd of log block medians)."""
    out = {}
    for case_id, record in run.cases.items():
        spread = log_spread(record.timing_blocks()[1])
        if spread is not None:
            out[case_id] = spread[:2]
    return out


def analyse(runs: list[Run], false_alarm_rate: float = 0.01) -> list[CaseNoise]:
    """Per case in at least two runs: the between-session sd and the threshold whose A/A
    two-sided exceedance probability is ``false_alarm_rate`` (a normal model of the log ratio
    of two sessions, variance 2 sd^2). The sd of few runs is itself uncertain: the command warns
    below ``MIN_RUNS`` runs."""
    if len(runs) < 2:
        raise InputError("pqbench noise needs at least two runs of the same commit")
    centres = [session_centres(run) for run in runs]
    ids = sorted(set().union(*centres))
    out = []
    for case_id in ids:
        present = [c[case_id] for c in centres if case_id in c]
        if len(present) < 2:
            continue
        logs = np.array([p[0] for p in present])
        sd = float(logs.std(ddof=1))
        quantile = float(stats.norm.ppf(1 - false_alarm_rate / 2))
        threshold = math.expm1(quantile * math.sqrt(2.0) * sd)
        ratios = [abs(a - b) for a, b in itertools.combinations(logs, 2)]
        beyond = sum(r > math.log1p(threshold) for r in ratios)
        out.append(CaseNoise(case_id, len(present), tuple(float(np.exp(x)) for x in logs), sd,
                             float(np.median([p[1] for p in present])), threshold, beyond,
                             len(ratios)))
    if not out:
        raise InputError("no case appears in two of the runs: give runs of the same cases")
    return out


def noise_file(cases: list[CaseNoise], runs: list[Run]) -> dict[str, Any]:
    sds = [c.session_sd for c in cases]
    return {"pqbench_noise": NOISE_SCHEMA, "runs": len(runs),
            "files": [str(r.path) for r in runs],
            "default_sd": float(np.median(sds)) if sds else DEFAULT_SESSION_SD,
            "session_sd": {c.case_id: c.session_sd for c in cases}}
