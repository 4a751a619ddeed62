"""``pqbench history``: one row per saved run and case, to follow a metric across commits."""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from ..errors import InputError
from ..results.load import DEFAULT_STORAGE, cases_frame, read_run, saved_runs
from ..results.report import markdown_table
from . import Subcommands

DEFAULT_METRICS = ("p50_ms", "p99_ms", "accuracy", "model_bytes")


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("history", help="a metric per case across the saved runs (commits)")
    p.add_argument("storage", nargs="?", type=Path, default=DEFAULT_STORAGE, metavar="STORAGE",
                   help="pytest-benchmark storage folder (default: .benchmarks)")
    p.add_argument("-k", dest="match", default="", metavar="TEXT",
                   help="only cases whose id contains TEXT")
    p.add_argument("--metric", action="append", metavar="FIELD",
                   help="extra_info field to show (repeatable; default: "
                        + ", ".join(DEFAULT_METRICS) + ")")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.set_defaults(run=run)


def history_frame(storage: Path, metrics: list[str], match: str = "") -> pl.DataFrame:
    if not storage.is_dir():
        raise InputError(f"{storage}: no such folder (pytest-benchmark storage, e.g. .benchmarks)")
    paths = saved_runs(storage)
    if not paths:
        raise InputError(f"{storage}: no saved run in it (pytest --benchmark-autosave saves one)")
    frames = []
    for path in paths:
        frame = cases_frame([read_run(path)])
        frames.append(frame.with_columns(pl.lit(f"{path.parent.name}/{path.stem}").alias("run")))
    frame = pl.concat(frames, how="diagonal_relaxed")
    missing = [m for m in metrics if m not in frame.columns]
    if missing:
        fields = ", ".join(sorted(c for c in frame.columns if frame[c].dtype.is_numeric()))
        raise InputError(f"unknown metric(s) {missing}; numeric fields in these runs: {fields}")
    if match:
        frame = frame.filter(pl.col("case_id").str.contains(match, literal=True))
    return frame.select("run", "commit", "date", "case_id", *metrics).sort("case_id", "run",
                                                                          maintain_order=True)


def run(args: argparse.Namespace) -> int:
    metrics = args.metric or list(DEFAULT_METRICS)
    frame = history_frame(args.storage, metrics, args.match)
    if args.format == "csv":
        print(frame.write_csv(), end="")
        return 0
    rows = [["" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
            for row in frame.iter_rows()]
    print(markdown_table(frame.columns, rows))
    return 0
