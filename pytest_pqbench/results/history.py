"""A branch's saved runs as series over commits: one point per run, per machine, case and metric.

Runs come from pytest-benchmark storage (``.benchmarks/<machine>/NNNN_<name>.json``, written by
``--benchmark-autosave``). They are kept to one branch (``commit_info.branch``; by default the
branch of the newest run), ordered by commit time (``commit_info.time``; the run's own
``datetime`` breaks ties and stands in when a run has no commit time) and split by machine: a
series never mixes two machines, whose speeds differ. A machine is named by what sets its
speed, its CPU model, core count and GPU, not by its host name: CI runners get a new host name
every run yet are the same kind of machine.

``History.frame`` is one long polars frame (a row per run x case x metric); ``History.series``
is the frame of one machine, case and metric in commit order: ``value`` and, for p50, the run's
interval over its timing blocks (``low`` / ``high``: ``extra_info.p50_ci_ms``, else p25-p75 of
its rounds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ..errors import InputError
from .load import Run, read_run, saved_runs
from .report import latency_interval

if TYPE_CHECKING:
    from .changepoints import Change, Ramp, Window
    from .confirm import Confirmation, Target

SERIES_METRICS = ("p50_ms", "p99_ms", "accuracy", "model_bytes")
# Figures a session reproduces exactly (the same artefact gives the same accuracy and size):
# any change of value is a change, no test needed. Every other metric is a timing.
EXACT_METRICS = frozenset({"accuracy", "model_bytes", "macs", "params", "pruned_model_bytes",
                           "accuracy_drop", "precision_engaged", "int8_mac_share"})
SCHEMA = {"machine": pl.Utf8, "position": pl.Int32, "run": pl.Utf8, "path": pl.Utf8,
          "commit": pl.Utf8, "branch": pl.Utf8, "time": pl.Utf8, "case_id": pl.Utf8,
          "metric": pl.Utf8, "value": pl.Float64, "low": pl.Float64, "high": pl.Float64}
NO_BRANCH = "(no branch)"


def machine_label(machine_info: dict[str, Any], fallback: str = "") -> str:
    """``AMD EPYC, 2 cores`` (``, GPU ...``): what sets a machine's speed, not its host name."""
    pq = machine_info.get("pqbench") or {}
    cpu = pq.get("cpu_model") or (machine_info.get("cpu") or {}).get("brand_raw") or ""
    if not cpu:
        return fallback or str(machine_info.get("node") or "unknown machine")
    cores = pq.get("physical_cores") or pq.get("logical_cores")
    gpu = pq.get("gpu")
    return f"{cpu}" + (f", {cores} cores" if cores else "") + (f", {gpu}" if gpu else "")


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def branch_of(run: Run) -> str:
    return str((run.data.get("commit_info") or {}).get("branch") or NO_BRANCH)


def order_key(run: Run) -> tuple[datetime, datetime, str]:
    """Commit time, then the run's own time, then its saved name."""
    commit = run.data.get("commit_info") or {}
    made = _time(run.data.get("datetime")) or datetime.min.replace(tzinfo=UTC)
    return _time(commit.get("time")) or made, made, run.path.name


@dataclass
class History:
    """The runs of one branch in commit order and their figures as one long frame."""

    frame: pl.DataFrame
    runs: dict[str, Run] = field(repr=False)  # path -> run
    branch: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # other branch -> runs left out
    # latency figures divided by this case's p50 of the same run (``relative_rows``)
    reference: str | None = None
    without_reference: int = 0  # runs left out: the reference case is not in them

    @property
    def machines(self) -> list[str]:
        return self.frame["machine"].unique(maintain_order=True).to_list()

    def keys(self) -> list[tuple[str, str, str]]:
        """(machine, case id, metric) of every series, in the frame's order."""
        keys = self.frame.select("machine", "case_id", "metric").unique(maintain_order=True)
        return [tuple(row) for row in keys.iter_rows()]  # type: ignore[misc]

    def series(self, machine: str, case_id: str, metric: str) -> pl.DataFrame:
        """One machine's points of a case and metric, oldest commit first."""
        return self.frame.filter((pl.col("machine") == machine) & (pl.col("case_id") == case_id)
                                 & (pl.col("metric") == metric)).sort("position")

    def run_of(self, path: str) -> Run:
        return self.runs[path]

    def machine_runs(self, machine: str) -> list[Run]:
        """One machine's runs of this branch, oldest commit first."""
        paths = (self.frame.filter(pl.col("machine") == machine)
                 .select("position", "path").unique().sort("position")["path"])
        return [self.runs[p] for p in paths]


def point_rows(run: Run, machine: str, position: int, metrics: tuple[str, ...],
               match: str = "") -> list[dict[str, Any]]:
    commit = run.data.get("commit_info") or {}
    base = {"machine": machine, "position": position,
            "run": f"{run.path.parent.name}/{run.path.stem}", "path": str(run.path),
            "commit": str(commit.get("id") or "")[:10], "branch": branch_of(run),
            "time": str(commit.get("time") or run.data.get("datetime") or "")}
    rows = []
    for case_id, record in run.cases.items():
        if match and match not in case_id:
            continue
        for metric in metrics:
            value = record.number(metric)
            if value is None:
                continue
            low = high = None
            if metric == "p50_ms":
                span = latency_interval(record)
                if span is not None:
                    low, high = span[0], span[1]
            rows.append({**base, "case_id": case_id, "metric": metric, "value": float(value),
                         "low": low, "high": high})
    return rows


RELATIVE_METRICS = ("p50_ms", "p99_ms")  # timings that share a session's speed


def relative_rows(run: Run, rows: list[dict[str, Any]], reference: str
                  ) -> list[dict[str, Any]] | None:
    """``rows`` of ``run`` with every timing divided by the reference case's p50 in the same
    run, the reference's own rows dropped; None when the run has no usable reference. A
    session's speed is largely shared by its cases (on the 2-vCPU VM two cases of one run moved
    together by 3-4% from run to run), so a case that a change does not touch, used as the
    reference, takes that shared part out of every other case's series; a change that slows
    the reference too (a runtime upgrade) is then invisible in the relative series."""
    record = run.cases.get(reference)
    base = record.number("p50_ms") if record is not None else None
    if not base or base <= 0:
        return None
    out = []
    for row in rows:
        if row["case_id"] == reference:
            continue
        if row["metric"] in RELATIVE_METRICS:
            row = {**row, **{k: (row[k] / base if row[k] is not None else None)
                             for k in ("value", "low", "high")}}
        out.append(row)
    return out


def check_metrics(runs: Iterable[Run], metrics: tuple[str, ...]) -> None:
    """Every metric asked for is a numeric field of some case (``InputError`` listing them)."""
    fields: set[str] = set()
    for run in runs:
        for record in run.cases.values():
            fields |= {k for k, v in record.row().items()
                       if isinstance(v, int | float) and not isinstance(v, bool)}
    missing = [m for m in metrics if m not in fields]
    if missing:
        raise InputError(f"unknown metric(s) {missing}; numeric fields in these runs: "
                         + ", ".join(sorted(fields)))


def read_history(storage: Path | str, branch: str | None = None,
                 metrics: tuple[str, ...] = SERIES_METRICS, match: str = "",
                 machine: str | None = None, reference: str | None = None) -> History:
    """Every saved run of ``branch`` (default: the newest run's) as series; ``machine``: only the
    machines whose label contains it; ``reference``: timings relative to that case's p50 in each
    run (``relative_rows``). ``InputError`` naming the folder when nothing is there."""
    storage = Path(storage)
    if not storage.is_dir():
        raise InputError(f"{storage}: no such folder (pytest-benchmark storage, e.g. .benchmarks)")
    paths = saved_runs(storage)
    if not paths:
        raise InputError(f"{storage}: no saved run in it (pytest --benchmark-autosave saves one)")
    runs = sorted((read_run(p) for p in paths), key=order_key)
    branches = [branch_of(r) for r in runs]
    chosen = branch or branches[-1]
    if chosen not in branches:
        names = ", ".join(sorted(set(branches)))
        raise InputError(f"branch {chosen!r}: no saved run in {storage}/ is from it; "
                         f"branches there: {names}")
    skipped: dict[str, int] = {}
    for name in branches:
        if name != chosen:
            skipped[name] = skipped.get(name, 0) + 1
    rows: list[dict[str, Any]] = []
    positions: dict[str, int] = {}
    kept: dict[str, Run] = {}
    without_reference = 0
    for run in runs:
        if branch_of(run) != chosen:
            continue
        label = machine_label(run.machine, run.path.parent.name)
        if machine and machine not in label:
            continue
        position = positions.get(label, 0)
        points = point_rows(run, label, position, metrics, match)
        if reference:
            relative = relative_rows(run, points, reference)
            if relative is None:
                without_reference += 1
                continue
            points = relative
        positions[label] = position + 1
        kept[str(run.path)] = run
        rows += points
    if reference and not kept:
        cases = sorted({c for r in runs for c in r.cases})
        raise InputError(f"--relative-to {reference!r}: no run of branch {chosen!r} has that case "
                         f"with a p50; cases: {', '.join(cases[:12])}"
                         + (" ..." if len(cases) > 12 else ""))
    check_metrics(kept.values(), metrics)
    frame = pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    if frame.is_empty():
        what = f"cases matching {match!r}" if match else "pqbench cases"
        raise InputError(f"{storage}: no {what} with {', '.join(metrics)} in the runs of branch "
                         f"{chosen!r}" + (f" on machines matching {machine!r}" if machine else ""))
    return History(frame, kept, chosen, skipped, reference, without_reference)


@dataclass
class SeriesResult:
    """One series with what was found in it; ``confirmations``: change index -> its
    ``results.confirm.Confirmation`` (p50 changes re-timed with ``--confirm``)."""

    machine: str
    case_id: str
    metric: str
    points: pl.DataFrame
    changes: list[Change]
    window: Window | None
    ramps: list[Ramp]
    confirmations: dict[int, Confirmation] = field(default_factory=dict)
    window_confirmation: Confirmation | None = None  # the creep re-timed end to end
    links: list[Confirmation] = field(default_factory=list)  # --chain, in run order
    unchanged_links: int = 0  # consecutive runs that ran the very same artefact (not timed)

    def link_changes(self) -> list[Change]:
        """The chain's significant links as changes (the paired ratio, from 1.0)."""
        from .changepoints import Change
        from .confirm import CONFIRMED

        return [Change(c.target.change.index, 1.0, c.ratio) for c in self.links
                if c.verdict == CONFIRMED and c.ratio is not None]

    def link_total(self, first: int = 0, last: int | None = None) -> float | None:
        """The product of the paired ratios of the re-timed links into rows ``first``..``last``
        (default: all): the engine's own change over them, free of the sessions' speed (None:
        nothing re-timed there)."""
        last = self.points.height if last is None else last
        ratios = [c.ratio for c in self.links
                  if c.ratio is not None and first <= c.target.change.index <= last]
        return float(np.prod(ratios)) if ratios else None

    def window_links_total(self) -> float | None:
        """The product of the re-timed links inside the last window (from the run before it to
        its last run), or None."""
        w = self.window
        return None if w is None else self.link_total(w.first, w.last)

    @property
    def exact(self) -> bool:
        return self.metric in EXACT_METRICS

    def run_at(self, index: int) -> str:
        """Path of the run at row ``index`` of the series."""
        return str(self.points["path"][index])


def analyse(history: History, window: int | None = None, alpha: float | None = None,
            threshold: float | None = None) -> list[SeriesResult]:
    """Changes, the last window and ramps of every series (``results.changepoints``)."""
    from . import changepoints as cp

    window = cp.WINDOW if window is None else window
    alpha = cp.ALPHA if alpha is None else alpha
    threshold = cp.CREEP_THRESHOLD if threshold is None else threshold
    out = []
    for machine, case_id, metric in history.keys():
        points = history.series(machine, case_id, metric)
        values = points["value"].to_list()
        exact = metric in EXACT_METRICS
        changes = cp.find_changes(values, exact, alpha)
        out.append(SeriesResult(machine, case_id, metric, points, changes,
                                cp.window_of(values, changes, window, exact, alpha, threshold),
                                cp.ramps(changes)))
    return out


def confirmation_targets(results: list[SeriesResult]) -> list[Target]:
    """The p50 changes to re-time, each between the run before it and the run where it starts;
    and each creeping p50 window, between the run before it and its last run."""
    from .changepoints import Change
    from .confirm import Target

    targets = []
    for r in results:
        if r.metric != "p50_ms":
            continue
        targets += [Target(r.machine, r.case_id, c, r.run_at(c.index - 1), r.run_at(c.index))
                    for c in r.changes]
        w = r.window
        if w is not None and w.creeping and w.first > 0 and w.trend_total is not None:
            total = Change(w.last, 1.0, w.trend_total)
            targets.append(Target(r.machine, r.case_id, total, r.run_at(w.first - 1),
                                  r.run_at(w.last), creep=True))
    return targets


def chain_targets(results: list[SeriesResult], runs: dict[str, Run]) -> list[Target]:
    """``--chain``: every two consecutive runs of each p50 series whose artefacts differ (the
    engine changed between them), to be re-timed paired. Runs that ran the very same artefact
    (one sha256) are counted on the series and not timed: their engines are one engine, so
    any step between them came from the sessions. Runs without an artefact on either side are
    left out (a workflow that keeps none cannot be re-timed)."""
    from .changepoints import Change
    from .confirm import Target, digest

    targets = []
    for r in results:
        if r.metric != "p50_ms":
            continue
        for index in range(1, r.points.height):
            before, after = r.run_at(index - 1), r.run_at(index)
            for path in (before, after):
                if path not in runs:
                    runs[path] = read_run(path)
            digests = [digest(runs[p], r.case_id) for p in (before, after)]
            if digests[0] is not None and digests[0] == digests[1]:
                r.unchanged_links += 1
            elif digests != [None, None]:
                targets.append(Target(r.machine, r.case_id, Change(index, 1.0, 1.0), before,
                                      after, link=True))
    return targets


def chain_creep_targets(results: list[SeriesResult], threshold: float) -> list[Target]:
    """After ``--chain``: each p50 window whose re-timed links multiply to more than
    ``threshold`` either way (a creep of steps each too small to be significant alone), to be
    re-timed end to end, the run before the window against its last run: one paired test of
    the whole creep. Windows already re-timed end to end (creeping in the recorded series)
    are left out."""
    import math

    from .changepoints import Change
    from .confirm import Target

    targets = []
    for r in results:
        total, w = r.window_links_total(), r.window
        if (r.metric != "p50_ms" or total is None or w is None or w.first == 0
                or r.window_confirmation is not None
                or abs(math.log(total)) <= math.log1p(threshold)):
            continue
        targets.append(Target(r.machine, r.case_id, Change(w.last, 1.0, total),
                              r.run_at(w.first - 1), r.run_at(w.last), creep=True))
    return targets


def attach(results: list[SeriesResult], targets: list[Target],
           found: list[Confirmation]) -> None:
    """Put each confirmation on its series: on its change, or on the creeping window."""
    by_key = {(r.machine, r.case_id, r.metric): r for r in results}
    for target, confirmation in zip(targets, found, strict=True):
        series = by_key[(target.machine, target.case_id, "p50_ms")]
        if target.link:
            series.links.append(confirmation)
        elif target.creep:
            series.window_confirmation = confirmation
        else:
            series.confirmations[target.change.index] = confirmation
