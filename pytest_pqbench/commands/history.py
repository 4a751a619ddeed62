"""``pqbench history``: a branch's saved runs as series over commits: where each case got slower
or faster (changepoints), how far it moved over the last runs (creep), and, with ``--confirm``,
each p50 change re-timed paired from the two runs' artefacts.

``--format csv`` is the run-by-run table (one row per run and case); ``--html`` the history
page; ``--write-noise`` / ``--drift`` what the gate learns from the last ``--last`` runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import InputError
from ..results import changepoints as cp
from ..results.history import (
    SERIES_METRICS,
    History,
    SeriesResult,
    analyse,
    attach,
    chain_creep_targets,
    chain_targets,
    confirmation_targets,
    read_history,
)
from ..results.load import DEFAULT_STORAGE
from ..results.report import markdown_table
from . import Subcommands

DEFAULT_METRICS = SERIES_METRICS


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("history", help="changes and creep of each case across the saved runs "
                                       "(commits), optionally confirmed by paired re-timing")
    p.add_argument("storage", nargs="?", type=Path, default=DEFAULT_STORAGE, metavar="STORAGE",
                   help="pytest-benchmark storage folder (default: .benchmarks)")
    p.add_argument("-k", dest="match", default="", metavar="TEXT",
                   help="only cases whose id contains TEXT")
    p.add_argument("--metric", action="append", metavar="FIELD",
                   help="extra_info field to follow (repeatable; default: "
                        + ", ".join(DEFAULT_METRICS) + ")")
    p.add_argument("--relative-to", metavar="CASE",
                   help="timings as ratios to this case's p50 in the same run: a case no change "
                        "touches takes out the speed a session shares with every case")
    p.add_argument("--branch", metavar="NAME",
                   help="the branch whose runs form the history (commit_info.branch; default: "
                        "the newest run's)")
    p.add_argument("--machine", metavar="TEXT", help="only machines whose label contains TEXT")
    p.add_argument("--window", type=int, default=cp.WINDOW, metavar="N",
                   help=f"runs the creep is measured over (default: {cp.WINDOW})")
    p.add_argument("--alpha", type=float, default=cp.ALPHA, metavar="A",
                   help=f"significance of changes and trends (default: {cp.ALPHA})")
    p.add_argument("--latency", default="3%", metavar="FACTOR",
                   help="creep worth flagging over the window, and the gate threshold that "
                        "decides whether a --confirm pair is timed on (default: 3%%)")
    p.add_argument("--confirm", action="store_true",
                   help="re-time the artefacts of the runs either side of each p50 change, "
                        "paired, here: confirmed / not confirmed / cannot confirm")
    p.add_argument("--chain", action="store_true",
                   help="re-time, paired, every two consecutive runs whose artefacts differ "
                        "(the engine changed): each case's own history, free of the sessions' "
                        "speed; runs of one artefact are not timed")
    p.add_argument("--html", type=Path, metavar="FILE", help="write the history page here")
    p.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    p.add_argument("--last", type=int, default=20, metavar="N",
                   help="runs --write-noise and --drift learn from (default: 20)")
    p.add_argument("--write-noise", type=Path, metavar="FILE",
                   help="write each case's between-session sd over the last N runs as a noise "
                        "file (pqbench compare --noise, --pqbench-noise)")
    p.add_argument("--drift", metavar="RUN",
                   help="compare RUN with the last N runs (drift and creep); exit 1 if either "
                        "regressed")
    p.set_defaults(run=run)


def run_table(history: History, metrics: list[str]) -> pl.DataFrame:
    """One row per run and case (the CSV), runs in commit order."""
    wide = history.frame.pivot(on="metric", index=["machine", "position", "run", "commit",
                                                   "time", "case_id"], values="value")
    for m in metrics:
        if m not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    return (wide.sort("case_id", "machine", "position", maintain_order=True)
            .rename({"time": "date"}).select("run", "commit", "date", "case_id", *metrics,
                                             "machine"))


def _p(value: float | None) -> str:
    from ..results.html_history import p_text

    return p_text(value)


def change_rows(results: list[SeriesResult]) -> list[list[str]]:
    rows = []
    for r in results:
        ramp_of = {c.index: ramp for ramp in r.ramps for c in ramp.steps}
        for c in r.changes:
            row = r.points.row(c.index, named=True)
            confirmation = r.confirmations.get(c.index)
            note = confirmation.text() if confirmation is not None else (
                "exact" if r.exact else "-")
            ramp = ramp_of.get(c.index)
            if ramp is not None:
                note += (f"; one of {len(ramp.steps)} steps over runs {ramp.first + 1}-"
                         f"{ramp.last + 1}: {ramp.ratio - 1:+.1%} in all")
            rows.append([r.case_id, r.metric, str(c.index + 1), row["commit"] or row["run"],
                         f"{c.before:.4g} -> {c.after:.4g}", c.size_text(r.metric),
                         _p(c.p_value), note])
    return rows


def window_rows(results: list[SeriesResult]) -> list[list[str]]:
    rows = []
    for r in results:
        w = r.window
        if r.exact or w is None:
            continue
        trend = "-" if w.slope is None else (
            f"{w.slope:+.2%}/run ({w.slope_ci[0]:+.2%}..{w.slope_ci[1]:+.2%}); "
            f"{w.trend_total - 1:+.1%} over the window")
        flag = "**creeping**" if w.creeping else ""
        if r.window_confirmation is not None:
            flag += ("; end to end " if w.creeping else
                     f"the chain's links multiply to {r.window_links_total() - 1:+.1%}; "
                     "re-timed end to end ") + r.window_confirmation.text()
        rows.append([r.case_id, r.metric, f"{w.first + 1}-{w.last + 1}",
                     f"{w.change - 1:+.1%}" + (f" ({len(w.steps)} change(s))" if w.steps else ""),
                     trend, _p(w.p_value), flag])
    return rows


def link_rows(results: list[SeriesResult]) -> list[list[str]]:
    """One row per re-timed link of the chain (``--chain``)."""
    rows = []
    for r in results:
        ramp_of = {c.index: ramp for ramp in cp.ramps(r.link_changes()) for c in ramp.steps}
        for c in r.links:
            index = c.target.change.index
            note = c.text()
            ramp = ramp_of.get(index)
            if ramp is not None:
                note += (f"; one of {len(ramp.steps)} steps over runs {ramp.first + 1}-"
                         f"{ramp.last + 1}: {ramp.ratio - 1:+.1%} in all")
            row = r.points.row(index, named=True)
            rows.append([r.case_id, f"{index} -> {index + 1}", row["commit"] or row["run"],
                         note])
    return rows


def chain_totals(results: list[SeriesResult]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.metric != "p50_ms" or not (r.links or r.unchanged_links):
            continue
        total = r.link_total()
        found = r.link_changes()
        window = r.window_links_total()
        rows.append([r.case_id, str(len(r.links)), str(r.unchanged_links), str(len(found)),
                     "-" if total is None else f"{total - 1:+.1%}",
                     "-" if window is None else f"{window - 1:+.1%}"])
    return rows


def render_markdown(history: History, results: list[SeriesResult], alpha: float) -> str:
    out = [f"## pqbench history: branch {history.branch}", ""]
    if history.skipped:
        other = ", ".join(f"{b}: {n}" for b, n in sorted(history.skipped.items()))
        out.append(f"Runs of other branches left out ({other}); choose one with --branch.")
    if history.reference:
        out.append(f"Timings relative to {history.reference}'s p50 in the same run (a change "
                   "that slows it too does not show)"
                   + (f"; {history.without_reference} run(s) without it left out."
                      if history.without_reference else "."))
    out.append(f"Changes: E-Divisive means (Apache Otava) at alpha {alpha:g} on each run's log "
               "figure for timings; every change of value for exact figures (accuracy, size). "
               "Creep: the last runs' level change and trend (Theil-Sen, Mann-Kendall).")
    for machine in history.machines:
        mine = [r for r in results if r.machine == machine]
        runs = history.machine_runs(machine)
        out += ["", f"### {machine}: {len(runs)} runs", ""]
        changes = change_rows(mine)
        out += ["Changes:", "", markdown_table(
            ["case", "metric", "at run", "commit", "level", "change", "p", "confirmation"],
            changes) if changes else "Changes: none found.", ""]
        windows = window_rows(mine)
        if windows:
            size = max(r.window.size for r in mine if r.window is not None)
            out += [f"Creep over the last {size} runs:", "", markdown_table(
                ["case", "metric", "runs", "level change", "trend", "trend p", ""], windows)]
        totals = chain_totals(mine)
        if totals:
            links = link_rows(mine)
            out += ["", "The chain (`--chain`): consecutive runs whose artefacts differ, "
                    "re-timed paired here (runs of one artefact ran one engine: not timed):",
                    "", markdown_table(["case", "runs", "commit", "paired re-timing"], links)
                    if links else "No two consecutive runs ran different artefacts.", "",
                    markdown_table(["case", "links re-timed", "links of one artefact",
                                    "changes", "in all (product of the re-timed links)",
                                    "over the last window"],
                                   totals)]
    return "\n".join(out) + "\n"


def confirmation_json(confirmation: Any) -> dict[str, Any] | None:
    if confirmation is None:
        return None
    return {"verdict": confirmation.verdict, "ratio": confirmation.ratio, "ci": confirmation.ci,
            "p_value": confirmation.p_value, "detail": confirmation.detail}


def as_json(history: History, results: list[SeriesResult]) -> dict[str, Any]:
    def change(r: SeriesResult, c: Any) -> dict[str, Any]:
        return {"index": c.index, "run": r.run_at(c.index),
                "commit": r.points["commit"][c.index], "before": c.before, "after": c.after,
                "ratio": c.ratio, "p_value": c.p_value, "exact": c.exact,
                "confirmation": confirmation_json(r.confirmations.get(c.index))}

    series = []
    for r in results:
        w = r.window
        series.append({"machine": r.machine, "case_id": r.case_id, "metric": r.metric,
                       "runs": r.points.height, "changes": [change(r, c) for c in r.changes],
                       "ramps": [{"first": g.first, "last": g.last, "ratio": g.ratio,
                                  "steps": len(g.steps)} for g in r.ramps],
                       "window": None if w is None else {
                           "first": w.first, "last": w.last, "change": w.change,
                           "slope": w.slope, "slope_ci": w.slope_ci, "p_value": w.p_value,
                           "creeping": w.creeping, "confirmation": confirmation_json(
                               r.window_confirmation)},
                       "chain": None if not (r.links or r.unchanged_links) else {
                           "unchanged_links": r.unchanged_links, "total": r.link_total(),
                           "window_total": r.window_links_total(),
                           "links": [{"index": c.target.change.index,
                                      "before": c.target.before, "after": c.target.after,
                                      **confirmation_json(c)} for c in r.links],
                           "ramps": [{"first": g.first, "last": g.last, "ratio": g.ratio,
                                      "steps": len(g.steps)}
                                     for g in cp.ramps(r.link_changes())]}})
    return {"branch": history.branch, "skipped_branches": history.skipped,
            "relative_to": history.reference, "without_reference": history.without_reference,
            "machines": history.machines, "series": series}


def learn(args: argparse.Namespace, thresholds: Any) -> int:
    """``--write-noise`` and ``--drift``: the gate's view of the last N runs."""
    from ..cache import atomic_write_text
    from ..results.compare import Comparison
    from ..results.history import machine_label
    from ..results.history_gate import drift, noise_from_history, recent_runs
    from ..results.load import load_one
    from ..results.noise import NOISE_SCHEMA
    from ..results.report import render_comparison
    from . import check_output_file

    candidate = load_one(args.drift, args.storage) if args.drift else None
    machine = args.machine or (machine_label(candidate.machine) if candidate else None)
    runs = recent_runs(args.storage, args.branch or "main", args.last, machine)
    noise = noise_from_history(runs, f"branch {args.branch or 'main'}")
    status = 0
    if args.write_noise is not None:
        check_output_file(args.write_noise, "--write-noise", "noise.json")
        atomic_write_text(args.write_noise, json.dumps({
            "pqbench_noise": NOISE_SCHEMA, "runs": len(runs), "source": noise.source,
            "files": [str(r.path) for r in runs], "default_sd": noise.default_sd,
            "session_sd": noise.per_case}, indent=1))
        print(f"noise of {len(noise.per_case)} case(s) from the last {len(runs)} runs written "
              f"to {args.write_noise} (median sd {noise.default_sd:.1%})")
    if candidate is not None:
        gates = thresholds.for_run(len(candidate.cases))
        rows = drift(candidate, runs, noise, gates.latency, gates.test_alpha)
        comparison = Comparison(f"the last {len(runs)} runs of {args.branch or 'main'}",
                                str(candidate.path), thresholds, rows)
        print(render_comparison(comparison, "json" if args.format == "json" else "markdown")
              .replace("## pqbench compare", "## pqbench history --drift", 1))
        status = 1 if comparison.regressions else 0
    return status


def run(args: argparse.Namespace) -> int:
    from ..results.compare import Thresholds, parse_alpha, parse_relative

    thresholds = Thresholds(latency=parse_relative(args.latency))
    alpha = parse_alpha(str(args.alpha))
    if args.window < 3:
        raise InputError(f"--window {args.window}: give at least 3 runs")
    if args.write_noise is not None or args.drift:
        return learn(args, thresholds)
    if args.html is not None:
        from . import check_output_file

        check_output_file(args.html, "--html", "history.html")
    metrics = args.metric or list(DEFAULT_METRICS)
    history = read_history(args.storage, args.branch, tuple(metrics), args.match, args.machine,
                           args.relative_to)
    if args.format == "csv":
        print(run_table(history, metrics).write_csv(), end="")
        return 0
    results = analyse(history, args.window, alpha, thresholds.latency)
    if args.confirm or args.chain:
        from ..results.confirm import confirm_changes

        def say(line: str) -> None:
            print(line, file=sys.stderr)

        targets = ((confirmation_targets(results) if args.confirm else [])
                   + (chain_targets(results, history.runs) if args.chain else []))
        attach(results, targets, confirm_changes(targets, history.runs, thresholds, say=say))
        creeps = chain_creep_targets(results, thresholds.latency) if args.chain else []
        if creeps:  # a creep of small engine changes, re-timed end to end
            attach(results, creeps, confirm_changes(creeps, history.runs, thresholds, say=say))
    if args.html is not None:
        from ..cache import atomic_write_text
        from ..results.html_history import render_history_page

        atomic_write_text(args.html, render_history_page(history, results))
        print(f"history page written to {args.html}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(as_json(history, results), indent=1, default=str))
    else:
        print(render_markdown(history, results, alpha), end="")
    return 0
