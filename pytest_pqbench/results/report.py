"""Render runs and comparisons: the matrix table (markdown / HTML / CSV) and the comparison
table (the Pareto chart is ``chart``). Rendering only; numbers come from ``load`` and
``compare``.

Matrix: rows model / pruner(ratio), columns workflow x precision, one table per batch size;
every selected case has a cell, timed or not (a failed, errored or skipped case shows its
outcome and reason, ``results.outcomes``). A timed cell holds p50 latency, the speed-up vs the
case's baseline (unpruned ``torch`` FP32 at the same batch size) or why it is not meaningful,
accuracy (and before / after fine-tuning), the MACs cut, model size, the share of compute in
the requested precision and whether the case failed its accuracy floor; the notes to read
first (``results.notes``) head the report. ``--format html`` is a whole page (``html``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from ..case import PrunerSpec
from .compare import Comparison, fmt
from .load import Run, cases_frame
from .notes import case_notes, grouped_notes, short_notes
from .outcomes import OUTCOMES, Outcome, run_outcomes
from .record import CaseRecord

FORMATS = ("markdown", "html", "csv")
CSV_COLUMNS = ("case_id", "model", "dataset", "pruner", "ratio", "workflow", "precision",
               "batch_size", "outcome", "reason", "p50_ms", "p99_ms", "speedup", "speedup_low",
               "speedup_high", "speedup_note", "accuracy", "accuracy_metric",
               "accuracy_before_recovery", "accuracy_after_recovery", "model_bytes", "macs",
               "macs_before", "mac_reduction", "params", "precision_engaged", "int8_mac_share",
               "qdq_pairs", "quant_format", "int8_vs_fp32", "prune_scope", "notes", "floor_ok",
               "pareto", "rounds", "timing_profile")


def matrix_frame(runs: list[Run]) -> pl.DataFrame:
    """Every selected case of the runs with its row / column labels, outcome and reason,
    speed-up (with its interval, or why it is not meaningful), notes, floor verdict and Pareto
    flag (speed-up and floor from the case records: ``CaseRecord.speedup_detail`` /
    ``floor_ok``, so runs merged from pytest-split groups, baseline in another file, get it).
    A case that failed, errored or was skipped before it was timed has a row too, with its
    outcome and reason and no figures."""
    outcomes = latest_outcomes(runs)
    records = latest_cases(runs)
    if not records and not outcomes:
        cases_frame(runs)  # raises the error naming the runs
    frame = cases_frame(runs) if records else pl.DataFrame(schema={"case_id": pl.Utf8})
    missing = [o for o in outcomes.values() if o.case_id not in records]
    if missing:
        extra = pl.DataFrame([{"case_id": o.case_id, **o.axes} for o in missing],
                             infer_schema_length=None)
        frame = pl.concat([frame, extra], how="diagonal_relaxed") if frame.height else extra
    for name, dtype in (("p50_ms", pl.Float64), ("accuracy", pl.Float64),
                        ("baseline_case_id", pl.Utf8), ("precision_engaged", pl.Float64),
                        ("model_bytes", pl.Float64), ("timing_profile", pl.Utf8),
                        ("macs", pl.Float64), ("macs_before", pl.Float64),
                        ("accuracy_before_recovery", pl.Float64),
                        ("accuracy_after_recovery", pl.Float64)):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    if outcomes:  # the run's order: a case without figures next to its neighbours
        order = {case_id: i for i, case_id in enumerate(outcomes)}
        frame = frame.with_columns(pl.col("case_id").replace_strict(
            order, default=len(order), return_dtype=pl.Int64).alias("_order")).sort(
            "_order", maintain_order=True).drop("_order")
    ids = frame["case_id"].to_list()
    details = {c: records[c].speedup_detail(records.get(records[c].baseline_case_id))
               for c in ids if c in records}

    def outcome(case_id: str) -> tuple[str, str]:
        found = outcomes.get(case_id)
        return (found.outcome, found.reason) if found is not None else ("passed", "")

    frame = frame.with_columns(
        pl.Series("outcome", [outcome(c)[0] for c in ids], dtype=pl.Utf8),
        pl.Series("reason", [outcome(c)[1] for c in ids], dtype=pl.Utf8),
        pl.Series("speedup", [d.value if d is not None and d.meaningful else None
                              for d in map(details.get, ids)], dtype=pl.Float64),
        pl.Series("speedup_low", [d.low if d is not None and d.meaningful else None
                                  for d in map(details.get, ids)], dtype=pl.Float64),
        pl.Series("speedup_high", [d.high if d is not None and d.meaningful else None
                                   for d in map(details.get, ids)], dtype=pl.Float64),
        pl.Series("speedup_note", [d.not_meaningful if d is not None else ""
                                   for d in map(details.get, ids)], dtype=pl.Utf8),
        pl.Series("notes", ["; ".join(case_notes(records[c], records)) if c in records else ""
                            for c in ids], dtype=pl.Utf8),
        pl.Series("flags", ["; ".join(short_notes(records[c], records)) if c in records
                            else "" for c in ids], dtype=pl.Utf8),
        pl.Series("floor_ok", [records[c].floor_ok() if c in records else None for c in ids],
                  dtype=pl.Boolean),
        pl.struct("pruner", "ratio").map_elements(
            lambda s: pruner_token(s["pruner"], s["ratio"]), return_dtype=pl.Utf8
        ).alias("pruner_token"),
    ).with_columns(
        (pl.col("model") + " / " + pl.col("pruner_token")).alias("row"),
        (pl.col("workflow") + " " + pl.col("precision")).alias("column"),
        pl.when(pl.col("macs_before") > 0).then(1 - pl.col("macs") / pl.col("macs_before"))
        .otherwise(None).alias("mac_reduction"),
    )
    # A front per model, dataset and batch size: top-1 of one model and mAP50 of another are not
    # on one scale, and a batch of 1 is not a batch of 32.
    optimal: dict[str, bool] = {}
    for _, part in frame.group_by(["model", "dataset", "batch_size"], maintain_order=True):
        optimal.update(zip(part["case_id"], pareto_mask(part["p50_ms"].to_list(),
                                                        part["accuracy"].to_list()),
                           strict=True))
    return frame.with_columns(pl.col("case_id").replace_strict(optimal, default=False,
                                                               return_dtype=pl.Boolean)
                              .alias("pareto"))


def latest_outcomes(runs: list[Run]) -> dict[str, Outcome]:
    """case id -> outcome of every selected case, the last run winning."""
    out: dict[str, Outcome] = {}
    for run in runs:
        out.update(run_outcomes(run.data))
    return out


def pruner_token(name: str, ratio: float | None) -> str:
    """The pruner as the case id spells it (``l1_0.3``, never ``l10.3``)."""
    return PrunerSpec(name, float(ratio or 0.0)).token


def latest_cases(runs: list[Run]) -> dict[str, CaseRecord]:
    """case id -> record, the last run winning as in ``cases_frame``."""
    out: dict[str, CaseRecord] = {}
    for run in runs:
        out.update(run.cases)
    return out


def latency_interval(record: CaseRecord) -> tuple[float, float, str] | None:
    """(low, high, what) around a case's p50 in ms: the 95% interval over its timing blocks
    (``CaseRecord.p50_interval``) when it has one, else the 25th-75th percentile of its
    rounds."""
    interval = record.p50_interval()
    if interval is not None:
        return interval[0], interval[1], "95% CI of p50"
    if len(record.samples_s) >= 4:
        lo, hi = np.percentile(np.asarray(record.samples_s) * 1e3, [25, 75])
        return float(lo), float(hi), "p25-p75 of rounds"
    return None


def pareto_mask(latency: Sequence[float | None], accuracy: Sequence[float | None]) -> list[bool]:
    """True where no other case is at least as fast and as accurate and strictly better in one.
    Hand-written: a few lines, and no library installed here offers it."""
    points = [(lat, acc) for lat, acc in zip(latency, accuracy, strict=True)]

    def valid(p: tuple) -> bool:
        return p[0] is not None and p[1] is not None and p[1] == p[1]  # not NaN

    def dominated(p: tuple) -> bool:
        return any(valid(q) and q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])
                   for q in points)

    return [valid(p) and not dominated(p) for p in points]


REASON_IN_CELL = 90  # characters of a reason in a matrix cell (the full one is listed below)


def short(text: str, limit: int = REASON_IN_CELL) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cell(row: dict[str, Any], sep: str) -> str:
    outcome = row.get("outcome") or "passed"
    if row.get("p50_ms") is None and outcome != "passed":  # failed / skipped before timing
        return f"{outcome.upper()}: {short(row.get('reason') or '')}"
    parts = []
    if row.get("p50_ms") is not None:
        parts.append(f"{row['p50_ms']:.3f} ms")
    if row.get("speedup") is not None:
        parts.append(f"{row['speedup']:.2f}x")
    elif row.get("speedup_note"):
        parts.append("speed-up not meaningful")
    acc = row.get("accuracy")
    if acc is not None and acc == acc:
        parts.append(f"{row.get('accuracy_metric') or 'acc'} {acc * 100:.1f}%")
    tuned = fine_tune_text(row)
    if tuned:
        parts.append(tuned)
    zeros = row.get("zero_fraction")
    if row.get("pruner_structure") == "zero-fill" and isinstance(zeros, int | float):
        parts.append(f"{zeros:.0%} zeros, MACs unchanged")  # dense kernels multiply them
    elif row.get("pruner") not in (None, "none") and row.get("mac_reduction") is not None:
        parts.append(f"MACs -{row['mac_reduction']:.0%}")
    if row.get("model_bytes"):
        parts.append(fmt(row["model_bytes"], "bytes"))
    engaged, precision = row.get("precision_engaged"), row.get("precision")
    if engaged is not None:
        text = f"{precision} {engaged:.0%}"
        if precision != "fp32" and engaged < 0.5:
            text += " (NOT engaged)"
        parts.append(text)
    if precision == "int8":
        parts.append(int8_coverage(row))
        ratio = row.get("int8_vs_fp32")
        if isinstance(ratio, int | float) and ratio == ratio and ratio < 1:
            parts.append(f"INT8 {ratio:.2f}x of FP32's speed")
    if row.get("floor_ok") is False:
        parts.append("FLOOR FAIL")
    elif outcome in ("failed", "error"):
        parts.append(f"{outcome.upper()}: {short(row.get('reason') or '')}")
    if row.get("pareto"):
        parts.append("Pareto")
    return sep.join(parts)


def fine_tune_text(row: dict[str, Any]) -> str:
    """``fine-tuned 62.0% -> 91.0%``: accuracy before and after recovery, when it ran."""
    before, after = row.get("accuracy_before_recovery"), row.get("accuracy_after_recovery")
    if isinstance(before, int | float) and isinstance(after, int | float) \
            and before == before and after == after:
        return f"fine-tuned {before * 100:.1f} -> {after * 100:.1f}%"
    return ""


def int8_coverage(row: dict[str, Any]) -> str:
    """Why an INT8 engine is (not) faster: the share of conv / matmul MACs in INT8 kernels, the
    quantize / dequantize pairs left in the executed graph, the quantization format."""
    share, pairs, form = row.get("int8_mac_share"), row.get("qdq_pairs"), row.get("quant_format")
    parts = []
    if isinstance(share, int | float) and share == share:
        parts.append(f"INT8 MACs {share:.0%}")
    if isinstance(pairs, int | float) and pairs == pairs:
        parts.append(f"{int(pairs)} Q/DQ")
    if form:
        parts.append(str(form))
    return ", ".join(parts) or "INT8 coverage not recorded"


def matrix_tables(frame: pl.DataFrame, sep: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per batch size, plus a sweep table when several were run."""
    tables = []
    sizes = sorted(set(frame["batch_size"].to_list()))
    columns = list(dict.fromkeys(frame["column"].to_list()))
    for bs in sizes:
        part = frame.filter(pl.col("batch_size") == bs)
        cells = {(r["row"], r["column"]): cell(r, sep) for r in part.iter_rows(named=True)}
        rows = list(dict.fromkeys(part["row"].to_list()))
        used = [c for c in columns if any((r, c) in cells for r in rows)]
        body = [[r] + [cells.get((r, c), "-") for c in used] for r in rows]
        tables.append((f"batch size {bs}", ["model / pruner"] + used, body))
    if len(sizes) > 1:
        frame = frame.with_columns((pl.col("row") + " / " + pl.col("column")).alias("case"))
        values = {(r["case"], r["batch_size"]): f"{r['p50_ms']:.3f} ms{sep}"
                  f"{r.get('throughput_ips') or 0:.0f} img/s"
                  for r in frame.iter_rows(named=True) if r.get("p50_ms") is not None}
        cases = list(dict.fromkeys(frame["case"].to_list()))
        body = [[c] + [values.get((c, bs), "-") for bs in sizes] for c in cases]
        tables.append(("batch-size sweep: p50 latency and throughput",
                       ["case"] + [f"bs {bs}" for bs in sizes], body))
    return tables


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    def cells(tag: str, values: list[str]) -> str:
        # cells are built with "\n" between lines; <br> is added after escaping
        return "".join(f"<{tag}>{html.escape(v).replace(chr(10), '<br>')}</{tag}>"
                       for v in values)

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>"


def commit_text(run: Run) -> str:
    """``commit 1a2b3c4d5e`` (``, dirty``), or ``not in git`` (pytest-benchmark writes the id
    ``unversioned`` outside a checkout)."""
    info = run.data.get("commit_info") or {}
    commit = str(info.get("id") or "")
    if not commit or commit == "unversioned":
        return "not in git"
    return f"commit {commit[:10]}" + (" (dirty)" if info.get("dirty") else "")


def run_summary(runs: list[Run]) -> list[str]:
    lines = []
    for run in runs:
        pq = run.machine.get("pqbench") or {}
        cpu = pq.get("cpu_model") or (run.machine.get("cpu") or {}).get("brand_raw") or "?"
        gpu = pq.get("gpu")
        profiles = ", ".join(sorted(run.timing_profiles))
        lines.append(f"{run.path}: {commit_text(run)}, {run.date or '?'}, {cpu}"
                     + (f", {gpu}" if gpu else "") + f", timing profile {profiles}")
    return lines


LEGEND = ("cells: p50 latency per batch; speedup vs the unpruned torch fp32 case at the same batch "
          "size; accuracy (metric); model size; share of compute in the requested precision; "
          "for INT8: share of conv / matmul MACs in INT8 kernels, quantize/dequantize pairs left "
          "in the executed graph, quantization format; "
          "'FLOOR FAIL' marks a case below its accuracy floor (min_accuracy, or a drop larger "
          "than max_drop); 'Pareto' marks the latency-vs-accuracy Pareto-optimal cases of that "
          "model and batch size")


def render_report(runs: list[Run], fmt_name: str, comparison: Comparison | None = None) -> str:
    """The report as markdown or CSV (the HTML page is ``html.render_page``); ``comparison``
    adds its verdicts to the markdown."""
    frame = matrix_frame(runs)
    if fmt_name == "csv":
        present = [c for c in CSV_COLUMNS if c in frame.columns]
        return frame.select(present).write_csv()
    sep = "<br>" if fmt_name == "markdown" else "\n"
    tables = matrix_tables(frame, sep)
    if fmt_name == "markdown":
        out = ["## pqbench report", ""] + [f"- {line}" for line in run_summary(runs)]
        out += ["", f"_{LEGEND}_", ""]
        out += [f"{counts_line(frame)}", ""]
        notes = grouped_notes(latest_cases(runs))
        if notes:
            out += ["### Read first", ""] + [f"- **{who}**: {note}" for who, note in notes] + [""]
        for title, header, rows in tables:
            out += [f"### {title}", "", markdown_table(header, rows), ""]
        untimed = untimed_groups(frame)
        if untimed:
            out += ["### Cases without figures", ""]
            out += [f"- **{outcome}** {', '.join(ids)}: {reason}"
                    for outcome, reason, ids in untimed] + [""]
        if comparison is not None:
            out += ["", render_comparison(comparison, "markdown")]
        return "\n".join(out)
    raise ValueError(f"unknown report format {fmt_name!r}; valid formats: {', '.join(FORMATS)}")


def counts_line(frame: pl.DataFrame) -> str:
    """``18 cases: 12 passed, 1 failed, 2 error, 3 skipped``."""
    counts = {name: frame.filter(pl.col("outcome") == name).height for name in OUTCOMES}
    shown = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return f"{frame.height} cases: {shown}"


def untimed_groups(frame: pl.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(outcome, reason, case ids) of the cases without figures (failed, errored or skipped
    before timing), cases with the same outcome and reason together, failures first."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in frame.filter(pl.col("p50_ms").is_null()
                            & (pl.col("outcome") != "passed")).iter_rows(named=True):
        reason = str(row.get("reason") or "no reason recorded")
        reason = reason.removeprefix(f"{row['case_id']}: ").removeprefix("pqbench: ")
        groups.setdefault((row["outcome"], reason), []).append(row["case_id"])
    order = {name: i for i, name in enumerate(OUTCOMES[1:])}
    return [(outcome, reason, ids) for (outcome, reason), ids in
            sorted(groups.items(), key=lambda g: order.get(g[0][0], 9))]


# ---- comparison ---------------------------------------------------------------------------------
def render_comparison(comparison: Comparison, fmt_name: str, undecided: str = "warn") -> str:
    t = comparison.thresholds
    if fmt_name == "json":
        import json

        return json.dumps({"baseline": comparison.baseline, "candidate": comparison.candidate,
                           "normalised_by_control": comparison.scale,
                           "alpha_run": t.alpha, "timing_tests": t.tests,
                           "alpha_per_test": t.test_alpha, "undecided_policy": undecided,
                           "counts": comparison.counts(),
                           "regressed": bool(comparison.regressions),
                           "undecided": len(comparison.undecided),
                           "failed": bool(comparison.failing(undecided)),
                           "notes": comparison.notes,
                           "rows": comparison.frame().to_dicts()}, indent=1)
    counts = ", ".join(f"{n} {v}" for v, n in comparison.counts().items())
    out = ["## pqbench compare", "",
           f"baseline `{comparison.baseline}`, candidate `{comparison.candidate}`"]
    if comparison.scale is not None:
        out.append(f"(different machines: candidate times scaled by {comparison.scale:.3f}, the "
                   "ratio of their control measurements)")
    out += [f"- {note}" for note in comparison.notes]
    status = ("REGRESSED" if comparison.regressions else "UNDECIDED"
              if comparison.failing(undecided) else "OK")
    out += ["", f"**{status}**: {counts}",
            "", f"_false-alarm budget {t.alpha:g} for the comparison, split over {t.tests} "
                f"timing test(s): each at alpha {t.test_alpha:.2g}_", ""]
    if comparison.undecided:
        out += [f"**{len(comparison.undecided)} gated metric(s) undecided** "
                f"(--undecided {undecided}):", ""]
        out += [f"- `{r.case_id}` {r.metric}: {r.verdict}"
                + (f"; to decide: {r.to_decide}" if r.to_decide else "")
                for r in comparison.undecided]
        out.append("")
    header = ["case", "metric", "baseline", "candidate", "change", "threshold", "verdict",
              "detail"]
    rows = []
    for r in sorted(comparison.rows, key=lambda r: r.verdict != "regressed"):
        change = "" if r.change is None else (f"{r.change:+.2f} pp" if r.metric == "accuracy"
                                              else f"x{r.change:.3f}")
        verdict = f"**{r.verdict}**" if r.verdict == "regressed" else r.verdict
        detail = r.detail + (f" (p={r.p_value:.2g})" if r.p_value is not None else "")
        rows.append([r.case_id, r.metric, fmt(r.baseline, r.unit) if r.baseline is not None
                     else "-", fmt(r.candidate, r.unit) if r.candidate is not None else "-",
                     change, r.threshold, verdict, detail])
    return "\n".join(out + [markdown_table(header, rows), ""])
