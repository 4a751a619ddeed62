"""Confirm a change found in history by re-timing, paired, the engines of the runs either side.

A changepoint in a history of separate sessions rests on figures whose between-session spread
is often larger than the change. Each run recorded the portable artefact its engine ran
(``extra_info.artefact``: the ONNX file or exported program, with its sha256, in the artefact
cache). ``confirm_changes`` loads the artefacts of the run just before and just after each p50
change (for a creeping window: the run before the window and its last run, so the whole creep
is re-timed, not one commit of it) into this process and times them in alternating blocks with
the gate's own machinery (``results.paired.pair_runs``: two looks, Wilcoxon signed-rank on the
per-cycle ratios, ``results.compare.PairedTiming``): ``confirmed`` when the paired change is
significant at ``alpha`` in the change's direction, else ``not confirmed``, with the paired
change and its interval either way. Changes between the same two runs are timed together,
interleaved.

How long artefacts last: the artefact cache (``pytest_pqbench.cache``) never expires an entry;
it is content-addressed, so a run's file stays until its cache folder is removed (or the entry
is found corrupt and rebuilt, when a non-reproducible build gets another sha256). In CI the
folder lives in the actions cache, whose entries are evicted after 7 days unused or under its
10 GB limit. A run whose artefact is gone says so: ``cannot confirm: artefact gone`` with the
path; the change then rests on the history's own test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .changepoints import Change
from .compare import Thresholds
from .load import Run, read_run
from .sequential import LookSchedule

CONFIRMED, NOT_CONFIRMED, CANNOT = "confirmed", "not confirmed", "cannot confirm"


@dataclass(frozen=True)
class Target:
    """A p50 change of one case between two runs, to be re-timed. ``creep``: the change across
    a creeping window, between the run before the window and its last run."""

    machine: str
    case_id: str
    change: Change
    before: str  # path of the run just before the change
    after: str  # path of the run where the new level starts (a creep: the window's last)
    creep: bool = False
    link: bool = False  # a link of the chain (--chain): two consecutive runs, either direction


@dataclass(frozen=True)
class Confirmation:
    target: Target
    verdict: str  # CONFIRMED, NOT_CONFIRMED or CANNOT
    ratio: float | None = None  # paired after / before
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    detail: str = ""

    def text(self) -> str:
        if self.verdict == CANNOT:
            return f"cannot confirm: {self.detail}"
        verdict = self.verdict
        if self.target.link:  # a link of the chain is not a change to confirm: any change counts
            verdict = {CONFIRMED: "changed", NOT_CONFIRMED: "no change found"}[verdict]
        if self.ratio is None:
            return f"{verdict}: {self.detail}"
        span = f", CI {self.ci[0] - 1:+.1%}..{self.ci[1] - 1:+.1%}" if self.ci else ""
        p = f", p={self.p_value:.2g}" if self.p_value is not None else ""
        return f"{verdict}: paired {self.ratio - 1:+.1%}{span}{p}"


def artefact_problem(run: Run, case_id: str) -> str | None:
    """Why the case's engine of ``run`` cannot be loaded again, or None."""
    record = run.cases.get(case_id)
    if record is None:
        return f"{case_id} is not in {run.path}"
    artefact = record.fact("artefact")
    if not isinstance(artefact, dict) or not artefact.get("path"):
        return (f"{run.path} recorded no artefact for {case_id} (workflow "
                f"{record.workflow!r} keeps none to re-time)")
    path = Path(str(artefact["path"]))
    if not path.is_file():
        return f"artefact gone: {path} (of {run.path}; removed from the artefact cache)"
    return None


def only_cases(run: Run, case_ids: list[str]) -> Run:
    """The run with only these cases (``pair_runs`` times every case two runs share)."""
    data = copy.copy(run.data)
    data["benchmarks"] = [b for b in run.data["benchmarks"]
                          if (b.get("extra_info") or {}).get("case_id") in case_ids]
    return Run(run.path, data)


def confirm_changes(targets: list[Target], runs: dict[str, Run] | None = None,
                    thresholds: Thresholds | None = None, alpha: float | None = None,
                    schedule: LookSchedule | None = None,
                    say: Callable[[str], Any] | None = None,
                    pair: Callable[..., Any] | None = None) -> list[Confirmation]:
    """One confirmation per target, in the targets' order. ``thresholds``: the latency gate
    that decides whether a pair is timed on past a look (default: the gate's default);
    ``alpha``: the significance level of each confirmation (default: the gate's per-test
    alpha over the targets)."""
    from .paired import pair_runs

    pair = pair or pair_runs
    thresholds = (thresholds or Thresholds.default()).for_run(max(1, len(targets)))
    alpha = thresholds.test_alpha if alpha is None else alpha
    runs = dict(runs or {})
    out: dict[int, Confirmation] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, target in enumerate(targets):
        for path in (target.before, target.after):
            if path not in runs:
                runs[path] = read_run(path)
        problem = (artefact_problem(runs[target.before], target.case_id)
                   or artefact_problem(runs[target.after], target.case_id))
        if problem:
            out[i] = Confirmation(target, CANNOT, detail=problem)
            continue
        groups.setdefault((target.before, target.after), []).append(i)
    for (before, after), members in groups.items():
        cases = sorted({targets[i].case_id for i in members})
        if say is not None:
            say(f"pqbench history: re-timing {len(cases)} case(s) of {Path(before).name} and "
                f"{Path(after).name}, paired")
        paired, notes = pair(only_cases(runs[before], cases), only_cases(runs[after], cases),
                             thresholds=thresholds, schedule=schedule, say=say)
        for i in members:
            case_id = targets[i].case_id
            out[i] = judge(targets[i], paired.get(case_id), notes.get(case_id, ""), alpha,
                           same_artefact(runs[before], runs[after], case_id))
    return [out[i] for i in range(len(targets))]


def digest(run: Run, case_id: str) -> str | None:
    """The sha256 of the artefact ``run`` recorded for the case, or None."""
    record = run.cases.get(case_id)
    artefact = record.fact("artefact") if record is not None else None
    if not isinstance(artefact, dict):
        return None
    return str(artefact.get("sha256") or "") or None


def same_artefact(before: Run, after: Run, case_id: str) -> str:
    """A note when both runs ran the very same file (same sha256): the engine did not change
    between them, so a step in their figures came from the sessions, not the code."""
    digests = [digest(r, case_id) for r in (before, after)]
    if digests[0] and digests[0] == digests[1]:
        return f"both runs ran the same artefact (sha256 {str(digests[0])[:12]})"
    return ""


def judge(target: Target, timing: Any, note: str, alpha: float, same: str = "") -> Confirmation:
    """``confirmed`` when the paired change is significant (at alpha split over the looks) and
    goes the way the history's change does."""
    if timing is None:
        return Confirmation(target, CANNOT, detail=note or "the engines could not be paired")
    estimate = timing.estimate(alpha)
    if estimate is None:
        return Confirmation(target, CANNOT, detail="too few paired cycles for a test")
    significant = estimate.p_value is not None and estimate.p_value <= timing.alpha(alpha)
    same_way = target.link or (estimate.ratio > 1) == (target.change.ratio > 1)
    verdict = CONFIRMED if significant and same_way else NOT_CONFIRMED
    why = estimate.describe()
    if significant and not same_way:
        why = "the paired change goes the other way; " + why
    return Confirmation(target, verdict, estimate.ratio, estimate.ci, estimate.p_value,
                        "; ".join(x for x in (why, same) if x))

