"""``pqbench report --format html``: one self-contained page (no network needed to view it).

The cases as a sortable table, the Pareto chart and a latency distribution per case (PNG data
URIs), the matrix view of the markdown report, the machine and package versions of each run,
and, for a comparison, every verdict with its reason. Sorting is a few lines of inline script;
a sort order lives in the address (``report.html#sort=p50_ms`` or ``#sort=accuracy:desc``), so a
sorted view can be linked.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import polars as pl

from .chart import pareto_png
from .compare import Comparison, fmt
from .load import Run
from .notes import grouped_notes
from .record import CaseRecord, finite
from .report import (
    LEGEND,
    commit_text,
    counts_line,
    fine_tune_text,
    html_table,
    latency_interval,
    latest_cases,
    matrix_frame,
    matrix_tables,
)

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px auto;
 max-width:1440px;padding:0 12px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d5d9e2;padding:3px 6px;vertical-align:top}
th{background:#eef1f6;text-align:left}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable th[data-dir=asc]::after{content:" \\25B2"}
table.sortable th[data-dir=desc]::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable td{white-space:nowrap}table.sortable td.wrap{white-space:normal;min-width:150px}
table#cases{width:100%;font-size:12px}table#cases th,table#cases td{padding:3px 5px}
table#cases td.wrap{color:#3b4252;overflow-wrap:anywhere}
tr.fail td{background:#fde8e8}tr.skip td{color:#6b7385;background:#f6f7f9}
tr.pareto td:first-child{font-weight:600}
.muted{color:#5b6475;font-size:12px}.bad{color:#b3261e;font-weight:600}
img.chart{max-width:100%;border:1px solid #e3e6ee}div.scroll{overflow-x:auto}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:6px 0}
dl.facts dt{color:#5b6475}dl.facts dd{margin:0}
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-v');
    if (v === null) return cell.textContent.trim().toLowerCase();
    return v === '' ? null : (isNaN(+v) ? v.toLowerCase() : +v);
  }
  function sortBy(table, th, dir) {
    var col = th.cellIndex, body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) return (x === null) - (y === null);  // blanks last
      var c = x < y ? -1 : x > y ? 1 : 0;
      return dir === 'desc' ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute('data-dir');
    });
    th.setAttribute('data-dir', dir);
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.title = 'sort';
      th.addEventListener('click', function () {
        var dir = th.getAttribute('data-dir') === 'asc' ? 'desc' : 'asc';
        sortBy(table, th, dir);
        if (table.id !== 'cases') return;
        history.replaceState(null, '', '#sort=' + th.dataset.key + ':' + dir);
      });
    });
  });
  var wanted = /^#sort=([\\w-]+)(?::(asc|desc))?$/.exec(location.hash);
  var cases = document.getElementById('cases');
  if (wanted && cases) {
    var th = cases.querySelector('th[data-key="' + wanted[1] + '"]');
    if (th) sortBy(cases, th, wanted[2] || 'asc');
  }
  window.addEventListener('load', function () {
    var shown = Array.prototype.filter.call(document.images, function (img) {
      return img.complete && img.naturalWidth > 0;
    }).length;
    var check = document.getElementById('charts-decoded');
    if (check) check.textContent = shown + '/' + document.images.length;
    // whether anything runs past the window's width (a laptop's 1400 px must not scroll)
    document.body.setAttribute('data-overflow',
      document.documentElement.scrollWidth > window.innerWidth ? 'yes' : 'no');
  });
})();
"""

# (key, header, numeric) of the sortable cases table. The case id names model, pruner, runtime,
# precision and batch size; the columns after it fit a 1400 px window (the notes column wraps).
COLUMNS = (("case_id", "case", False), ("outcome", "outcome", False),
           ("accuracy", "accuracy", True), ("fine_tune", "fine-tuned", False),
           ("mac_reduction", "MACs cut", True),
           ("p50_ms", "p50 ms", True), ("interval", "interval ms", False),
           ("noise_pct", "noise %", True), ("speedup", "speed-up", True),
           ("model_bytes", "size MB", True), ("precision_engaged", "engaged", True),
           ("floor_ok", "floor", False), ("pareto", "Pareto", False),
           ("notes", "notes", False))


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def case_cells(row: dict[str, Any], record: CaseRecord | None
               ) -> list[tuple[str, str | None]]:
    """(text, sort value) per column of one case."""
    span = latency_interval(record) if record is not None else None
    accuracy, engaged = finite(row.get("accuracy")), finite(row.get("precision_engaged"))
    size, speed = finite(row.get("model_bytes")), finite(row.get("speedup"))
    p50 = finite(row.get("p50_ms"))
    noise = record.noise_pct() if record is not None else None
    floor = row.get("floor_ok")
    metric = row.get("accuracy_metric") or "acc"
    cut = finite(row.get("mac_reduction")) if row.get("pruner") not in (None, "none") else None
    low, high = finite(row.get("speedup_low")), finite(row.get("speedup_high"))
    outcome = row.get("outcome") or "passed"
    notes = row.get("flags") or ""  # a few words each; the full notes are under "Read first"
    if outcome != "passed":
        notes = "; ".join(n for n in (row.get("reason") or "", notes) if n)

    def n(value: float | None, text: str) -> tuple[str, str]:
        return ("-", "") if value is None else (text, repr(value))

    if speed is not None:
        speed_cell = n(speed, f"{speed:.2f}x" + (f" ({low:.2f}-{high:.2f})"
                                                 if low is not None and high is not None
                                                 else ""))
    else:
        speed_cell = ("not meaningful", "") if row.get("speedup_note") else ("-", "")
    return [
        (row["case_id"], None), (outcome, None),
        n(accuracy, f"{metric} {(accuracy or 0) * 100:.1f}%"),
        (fine_tune_text(row).removeprefix("fine-tuned ") or "-", None),
        n(cut, f"{(cut or 0):.0%}"),
        n(p50, f"{p50 or 0:.3f}"),
        ((f"{span[0]:.3f} - {span[1]:.3f}", None) if span else ("-", None)),
        n(noise, f"{noise or 0:.1f}"),
        speed_cell,
        n(size, f"{(size or 0) / 1e6:.3f}"),
        n(engaged, f"{row['precision']} {(engaged or 0):.0%}"
          + (" (not engaged)" if engaged is not None and engaged < 0.5
             and row["precision"] != "fp32" else "")),
        ("-" if floor is None else "ok" if floor else "FAIL", None),
        ("yes" if row.get("pareto") else "", None),
        (notes, None),
    ]


def cases_table(frame: pl.DataFrame, records: dict[str, CaseRecord]) -> str:
    head = "".join(f'<th data-key="{k}">{html.escape(h)}</th>' for k, h, _ in COLUMNS)
    body = []
    for row in frame.iter_rows(named=True):
        outcome = row.get("outcome") or "passed"
        classes = [c for c, on in (("fail", row.get("floor_ok") is False
                                    or outcome in ("failed", "error")),
                                   ("skip", outcome == "skipped"),
                                   ("pareto", row.get("pareto"))) if on]
        cells = []
        for (key, _, numeric), (text, value) in zip(COLUMNS, case_cells(row, records.get(
                row["case_id"])), strict=True):
            css = "n" if numeric else "wrap" if key == "notes" else ""
            attrs = (f' class="{css}"' if css else "") + \
                (f' data-v="{html.escape(value)}"' if value is not None else "")
            cells.append(f"<td{attrs}>{html.escape(text)}</td>")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<table class="sortable" id="cases"><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def latency_png(runs: list[Run]) -> bytes:
    """One box per case of its recorded rounds (ms), a panel per model and batch size; the
    medians of its timing blocks as dots where the record has blocks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = matrix_frame(runs)
    records = latest_cases(runs)
    panels = []
    for (model, batch), part in frame.group_by(["model", "batch_size"], maintain_order=True):
        cases = [(c, np.asarray(records[c].samples_s, float) * 1e3,
                  [b.median_ms for b in records[c].blocks]) for c in part["case_id"]
                 if c in records]
        cases = [c for c in cases if c[1].size]
        if cases:
            panels.append((f"{model}, batch size {batch}", cases))
    rows = sum(len(c) for _, c in panels)
    fig = Figure(figsize=(9, 1.2 + 0.42 * rows + 0.9 * len(panels)), dpi=110)
    FigureCanvasAgg(fig)
    if not panels:
        fig.text(0.5, 0.5, "no recorded rounds (stats.data) in these runs", ha="center")
    heights = [len(c) + 1 for _, c in panels] or [1]
    axes = fig.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, cases) in zip(axes, panels, strict=False):
        labels = [c[0] for c in cases][::-1]
        data = [c[1] for c in cases][::-1]
        ax.boxplot(data, orientation="horizontal", tick_labels=labels, whis=(1, 99),
                   showfliers=True, flierprops={"markersize": 2, "alpha": 0.4},
                   medianprops={"color": "tab:red"})
        for y, case in enumerate(cases[::-1], start=1):
            if case[2]:
                ax.scatter(case[2], [y] * len(case[2]), s=14, marker="D", color="tab:blue",
                           alpha=0.7, zorder=3, label="block median" if y == 1 else None)
        high = max(float(np.max(d)) for d in data)
        low = min(float(np.min(d)) for d in data)
        if low > 0 and high / low > 20:  # cases an order of magnitude apart: log scale
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latency per batch (ms); box p25-p75, whiskers p1-p99, red: median")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
        if any(c[2] for c in cases):
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def machine_facts(run: Run) -> str:
    machine = run.machine
    pq = machine.get("pqbench") or {}
    cpu = pq.get("cpu_model") or (machine.get("cpu") or {}).get("brand_raw") or "?"
    cores = pq.get("physical_cores")
    facts = [("run", str(run.path)), ("commit", commit_text(run)), ("date", run.date or "?"),
             ("machine", " ".join(str(machine.get(k, "")) for k in ("system", "release",
                                                                       "machine")).strip()
              or "?"),
             ("CPU", f"{cpu}" + (f", {cores} physical cores" if cores else "")),
             ("GPU", str(pq.get("gpu") or "none")),
             ("Python", f"{machine.get('python_implementation', '')} "
                        f"{machine.get('python_version', '?')}"),
             ("timing profile", ", ".join(sorted(run.timing_profiles)))]
    versions = pq.get("versions") or {}
    if versions:
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    control = pq.get("control") or {}
    if finite(control.get("median_s")) is not None:
        facts.append(("control kernel", f"{control.get('kernel', '?')}: "
                                        f"{control['median_s'] * 1e3:.2f} ms"))
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def comparison_section(comparison: Comparison) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in comparison.counts().items()) or "nothing compared"
    state = '<span class="bad">REGRESSED</span>' if comparison.regressions else "OK"
    parts = [f"<h2>Comparison</h2><p>{state}: {html.escape(counts)}. Baseline "
             f"<code>{html.escape(comparison.baseline)}</code>, candidate "
             f"<code>{html.escape(comparison.candidate)}</code>.</p>"]
    if comparison.scale is not None:
        parts.append(f"<p>Different machines: candidate times scaled by {comparison.scale:.3f}, "
                     "the ratio of their control measurements.</p>")
    head = "".join(f'<th data-key="{k}">{k}</th>' for k in (
        "case", "metric", "baseline", "candidate", "change", "threshold", "verdict", "reason"))
    body = []
    for r in sorted(comparison.rows, key=lambda r: (r.verdict != "regressed", r.case_id)):
        change = "" if r.change is None else (f"{r.change:+.2f} pp" if r.metric == "accuracy"
                                              else f"x{r.change:.3f}")
        reason = r.detail + (f" (p={r.p_value:.2g})" if r.p_value is not None else "")
        cells = [r.case_id, r.metric, fmt(r.baseline, r.unit), fmt(r.candidate, r.unit), change,
                 r.threshold, r.verdict, reason]
        cls = ' class="fail"' if r.verdict == "regressed" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells[:-1])
                    + f'<td class="wrap">{html.escape(reason)}</td></tr>')
    parts.append(f'<table class="sortable" id="verdicts"><thead><tr>{head}</tr></thead>'
                 f"<tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)


def notes_section(records: dict[str, CaseRecord]) -> str:
    """"Read first": what a reader must know before the figures (``results.notes``)."""
    notes = grouped_notes(records)
    if not notes:
        return ""
    items = "".join(f"<li><b>{html.escape(who)}</b>: {html.escape(note)}</li>"
                    for who, note in notes)
    return f'<h2>Read first</h2><ul class="notes">{items}</ul>'


def render_page(runs: list[Run], comparison: Comparison | None = None) -> str:
    frame = matrix_frame(runs)
    records = latest_cases(runs)
    failed = frame.filter(pl.col("floor_ok").eq(False))["case_id"].to_list()
    summary = (f"{counts_line(frame)}, from {len(runs)} run(s); "
               + (f"{len(failed)} below their accuracy floor: {', '.join(failed)}" if failed
                  else "every measured case meets its accuracy floor"))
    broken = frame.filter(pl.col("outcome").is_in(["failed", "error"])).height
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>pqbench report</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>pqbench report</h1>",
        f'<p class="{"bad" if failed or broken else "muted"}">{html.escape(summary)}</p>',
        notes_section(records),
        "<h2>Cases</h2>",
        '<p class="muted">Click a column to sort. Every selected case is listed, timed or not '
        "(outcome; a failed, errored or skipped case gives its reason under notes). "
        "fine-tuned: accuracy before -> after recovery; MACs cut: reduction against the "
        "unpruned model (a zero-fill pruner cuts none: its zeros are still multiplied); p50: "
        "median latency of one batch; interval: the record's 95% interval of p50 over its "
        "timing blocks, else p25-p75 of its rounds; noise: spread of the block medians; "
        "speed-up vs the unpruned torch fp32 case of the same model and batch size, with its "
        "95% interval ('not meaningful' when that spans more than x1.5); engaged: share of "
        "compute in the requested precision; floor: accuracy floor (min_accuracy and "
        "max_drop).</p>",
        cases_table(frame, records),
        "<h2>Latency vs accuracy</h2>",
        f'<img class="chart" id="pareto" alt="Pareto chart: latency vs accuracy per model" '
        f'src="{png_uri(pareto_png(runs))}">',
        "<h2>Latency distribution per case</h2>",
        f'<img class="chart" id="latency" alt="latency distribution per case" '
        f'src="{png_uri(latency_png(runs))}">',
    ]
    if comparison is not None:
        parts.append(comparison_section(comparison))
    parts += ["<h2>Matrix</h2>", f'<p class="muted">{html.escape(LEGEND)}</p>']
    for title, header, rows in matrix_tables(frame, "\n"):
        parts.append(f"<h3>{html.escape(title)}</h3>{html_table(header, rows)}")
    parts.append("<h2>Machine and versions</h2>")
    parts += [machine_facts(run) for run in runs]
    parts += ['<p class="muted" hidden>charts decoded: <span id="charts-decoded">not yet</span>'
              "</p>", f"<script>{SCRIPT}</script></body></html>", ""]
    return "\n".join(parts)
