"""Render runs and comparisons: the matrix table (markdown / HTML / CSV), a Pareto chart, and
the comparison table. Rendering only; numbers come from ``load`` and ``compare``.

Matrix: rows model / pruner(ratio), columns workflow x precision, one table per batch size;
each cell holds p50 latency, speedup vs the case's baseline (unpruned ``torch`` FP32 at the
same batch size), accuracy, model size, the share of compute in the requested precision and
whether the case failed its accuracy floor. ``--format html`` is a whole page (``html``).
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from ..case import PrunerSpec
from .compare import Comparison, fmt
from .load import Run, cases_frame
from .record import CaseRecord

FORMATS = ("markdown", "html", "csv")
CSV_COLUMNS = ("case_id", "model", "dataset", "pruner", "ratio", "workflow", "precision",
               "batch_size", "p50_ms", "p99_ms", "speedup", "accuracy", "accuracy_metric",
               "model_bytes", "macs", "params", "precision_engaged", "int8_mac_share",
               "qdq_pairs", "quant_format", "floor_ok", "pareto", "rounds", "timing_profile")


def matrix_frame(runs: list[Run]) -> pl.DataFrame:
    """Every case of the runs with its row / column labels, speedup, floor verdict and Pareto
    flag (speed-up and floor from the case records: ``CaseRecord.speedup_over`` /
    ``floor_ok``, so runs merged from pytest-split groups, baseline in another file, get it)."""
    frame = cases_frame(runs)
    for name, dtype in (("p50_ms", pl.Float64), ("accuracy", pl.Float64),
                        ("baseline_case_id", pl.Utf8), ("precision_engaged", pl.Float64),
                        ("model_bytes", pl.Float64), ("timing_profile", pl.Utf8)):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    records = latest_cases(runs)
    ids = frame["case_id"].to_list()
    speedups = [records[c].speedup_over(records.get(records[c].baseline_case_id)) for c in ids]
    frame = frame.with_columns(
        pl.Series("speedup", speedups, dtype=pl.Float64),
        pl.Series("floor_ok", [records[c].floor_ok() for c in ids], dtype=pl.Boolean),
        pl.struct("pruner", "ratio").map_elements(
            lambda s: pruner_token(s["pruner"], s["ratio"]), return_dtype=pl.Utf8
        ).alias("pruner_token"),
    ).with_columns(
        (pl.col("model") + " / " + pl.col("pruner_token")).alias("row"),
        (pl.col("workflow") + " " + pl.col("precision")).alias("column"),
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


def cell(row: dict[str, Any], sep: str) -> str:
    parts = []
    if row.get("p50_ms") is not None:
        parts.append(f"{row['p50_ms']:.3f} ms")
    if row.get("speedup") is not None:
        parts.append(f"{row['speedup']:.2f}x")
    acc = row.get("accuracy")
    if acc is not None and acc == acc:
        parts.append(f"{row.get('accuracy_metric') or 'acc'} {acc * 100:.1f}%")
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
    if row.get("floor_ok") is False:
        parts.append("FLOOR FAIL")
    if row.get("pareto"):
        parts.append("Pareto")
    return sep.join(parts)


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
        for title, header, rows in tables:
            out += [f"### {title}", "", markdown_table(header, rows), ""]
        if comparison is not None:
            out += ["", render_comparison(comparison, "markdown")]
        return "\n".join(out)
    raise ValueError(f"unknown report format {fmt_name!r}; valid formats: {', '.join(FORMATS)}")


def pareto_png(runs: list[Run]) -> bytes:
    """Latency-vs-accuracy charts, one panel per model (its own accuracy metric), one colour per
    batch size, Pareto-optimal cases marked and joined; a horizontal bar through each point is
    its latency interval (``latency_interval``), so cases within noise of each other show it.
    matplotlib's object API with the Agg canvas: no pyplot, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = matrix_frame(runs).filter(pl.col("p50_ms").is_not_null()
                                      & pl.col("accuracy").is_not_nan())
    entries = latest_cases(runs)
    intervals = {c: latency_interval(entries[c]) for c in frame["case_id"]}
    kinds = sorted({i[2] for i in intervals.values() if i})
    panels = frame.select("model", "dataset").unique(maintain_order=True).rows()
    fig = Figure(figsize=(8, 4.5 * max(len(panels), 1)), dpi=110)
    FigureCanvasAgg(fig)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    sizes = sorted(set(frame["batch_size"].to_list()))
    for k, (model, dataset) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        panel = frame.filter((pl.col("model") == model) & (pl.col("dataset") == dataset))
        for bs in sizes:
            part = panel.filter(pl.col("batch_size") == bs).sort("p50_ms")
            if part.is_empty():
                continue
            colour = colours[sizes.index(bs) % len(colours)]
            for r in part.iter_rows(named=True):
                span = intervals.get(r["case_id"])
                if span:
                    ax.errorbar([r["p50_ms"]], [r["accuracy"] * 100], fmt="none", ecolor=colour,
                                alpha=0.7, capsize=3, xerr=[[max(0.0, r["p50_ms"] - span[0])],
                                                            [max(0.0, span[1] - r["p50_ms"])]])
            rest, best = part.filter(~pl.col("pareto")), part.filter(pl.col("pareto"))
            ax.scatter(rest["p50_ms"], rest["accuracy"] * 100, color=colour, alpha=0.5,
                       marker="o", label=f"bs {bs}")
            ax.scatter(best["p50_ms"], best["accuracy"] * 100, color=colour, marker="*", s=160,
                       edgecolors="black", label=f"bs {bs} Pareto-optimal")
            ax.step(best["p50_ms"], best["accuracy"] * 100, where="post", color=colour, alpha=0.6)
            for j, r in enumerate(part.iter_rows(named=True)):
                # alternate label offsets so neighbouring cases stay readable
                ax.annotate(f"{r['pruner_token']} {r['column']}",
                            (r["p50_ms"], r["accuracy"] * 100), fontsize=7,
                            xytext=(4, 4 if j % 2 else -10), textcoords="offset points")
        metrics = panel["accuracy_metric"].to_list() if "accuracy_metric" in panel.columns else []
        metric = next((m for m in metrics if m), "accuracy")
        latencies = panel["p50_ms"].to_list()
        if min(latencies) > 0 and max(latencies) / min(latencies) > 8:
            ax.set_xscale("log")  # an order of magnitude apart: the fast cases stay readable
        bars = f"; bars: {' or '.join(kinds)}" if kinds else ""
        ax.set_xlabel(f"p50 latency per batch (ms){bars}")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{model} on {dataset}: latency vs {metric} (up and left is better)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


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
