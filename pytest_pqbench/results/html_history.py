"""``pqbench history --html``: the history page, one self-contained HTML file.

One chart per case and metric (PNG data URIs, as the report page's): commits on the x axis,
each run's figure with its interval (p50: the 95% interval over its timing blocks), the level
between changes as a grey step line, every change as a vertical line at the commit where the
new level starts, labelled with its size. Confirmed changes (paired re-timing, ``--confirm``)
are solid red; changes not re-timed dashed red; ``not confirmed`` dashed grey; ``cannot
confirm`` dotted orange. A creeping window (``results.changepoints.Window``) is shaded. Above
the charts, every change in one sortable table, confirmed first.
"""

from __future__ import annotations

import html
import io
import math

import numpy as np

from .changepoints import PERMUTATIONS, levels
from .confirm import CANNOT, CONFIRMED, NOT_CONFIRMED
from .history import History, SeriesResult
from .html import SCRIPT, STYLE, png_uri

# metric -> (axis label, factor from the recorded unit)
AXES = {"p50_ms": ("p50 latency (ms)", 1.0), "p99_ms": ("p99 latency (ms)", 1.0),
        "accuracy": ("accuracy (%)", 100.0), "model_bytes": ("model size (MB)", 1e-6)}
# confirmation verdict -> (colour, line style, line width, label)
MARKS = {CONFIRMED: ("#c62828", "-", 2.4, "confirmed"),
         None: ("#c62828", "--", 1.3, "not re-timed"),
         NOT_CONFIRMED: ("#8d8d8d", "--", 1.3, "not confirmed"),
         CANNOT: ("#ef6c00", ":", 1.6, "cannot confirm")}
CHAIN_COLOUR = "#6a1b9a"
EXTRA_STYLE = """
div.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:10px}
tr.confirmed td{background:#fde8e8}tr.not-confirmed td{color:#5b6475}
span.key{display:inline-block;width:26px;height:0;vertical-align:middle;margin:0 4px 0 10px}
"""


def _verdict(result: SeriesResult, index: int) -> str | None:
    found = result.confirmations.get(index)
    return None if found is None else found.verdict


def series_png(result: SeriesResult) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    label, factor = AXES.get(result.metric, (result.metric, 1.0))
    points = result.points
    n = points.height
    x = np.arange(n)
    y = points["value"].to_numpy() * factor
    fig = Figure(figsize=(7.0, 2.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    window = result.window
    if window is not None and window.creeping:
        ax.axvspan(window.first - 0.5, window.last + 0.5, color="#fff1dc", zorder=0)
        end_to_end = result.window_confirmation
        ax.text(window.first - 0.4, 0.03, f"creep {window.trend_total - 1:+.1%} over the last "
                f"{window.size} runs" + (f"; {end_to_end.verdict} end to end" if end_to_end
                                         else ""),
                transform=ax.get_xaxis_transform(), fontsize=7, color="#b35c00",
                fontweight="bold" if end_to_end and end_to_end.verdict == CONFIRMED
                else "normal")
    low, high = points["low"].to_numpy(), points["high"].to_numpy()
    has_span = ~(np.isnan(low) | np.isnan(high)) if low.dtype.kind == "f" else np.zeros(n, bool)
    if has_span.any():
        err = np.vstack([y - low * factor, high * factor - y])
        err[:, ~has_span] = 0
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", ms=3.2, color="tab:blue",
                    ecolor="#9ab8d8", elinewidth=1.2, capsize=2, zorder=3)
    else:
        ax.plot(x, y, "o", ms=3.2, color="tab:blue", zorder=3)
    cuts = [c.index for c in result.changes]
    if cuts:
        fitted = np.asarray(levels(points["value"].to_list(), cuts, result.exact)) * factor
        ax.step(x, fitted, where="mid", color="0.35", lw=1.0, zorder=2)
    for change in result.changes:
        colour, style, width, _ = MARKS[_verdict(result, change.index)]
        ax.axvline(change.index - 0.5, color=colour, ls=style, lw=width, zorder=4)
        verdict = _verdict(result, change.index)
        text = change.size_text(result.metric) + (f"\n{verdict}" if verdict else "")
        ax.annotate(text, (change.index - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -3), textcoords="offset points", va="top", fontsize=7.5,
                    color=colour, fontweight="bold" if verdict == CONFIRMED else "normal",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.85}, zorder=5)
    for link in result.links:  # --chain: an engine change found by paired re-timing
        if link.verdict != CONFIRMED or link.ratio is None:
            continue
        at = link.target.change.index - 0.5
        ax.plot([at], [0.0], marker="^", ms=7, color=CHAIN_COLOUR, clip_on=False, zorder=6,
                transform=ax.get_xaxis_transform())
        ax.annotate(f"engine {link.ratio - 1:+.1%}", (at, 0.0),
                    xycoords=("data", "axes fraction"), xytext=(0, 6),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7,
                    color=CHAIN_COLOUR, zorder=6)
    step = max(1, math.ceil(n / 26))
    ax.set_xticks(x[::step], [str(c or r)[:7] for c, r in zip(points["commit"][::step],
                                                              points["run"][::step],
                                                              strict=True)],
                  rotation=60, fontsize=6.5, ha="right")
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel(label, fontsize=8)
    ax.set_xlabel("commit (oldest left)", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    top = np.nanmax(high * factor) if has_span.any() else np.nanmax(y)
    bottom = np.nanmin(low * factor) if has_span.any() else np.nanmin(y)
    pad = (top - bottom) * 0.35 or abs(top) * 0.05 or 1.0
    ax.set_ylim(bottom - pad * 0.3, top + pad)  # room for the labels above the points
    fig.tight_layout(pad=0.4)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def p_text(value: float | None) -> str:
    """A p-value; 0 from a permutation test is below its resolution, and said so."""
    if value is None:
        return "-"
    return f"<{1 / (PERMUTATIONS + 1):.2g}" if value == 0 else f"{value:.2g}"


def change_table(results: list[SeriesResult], anchors: dict[int, str]) -> str:
    head = "".join(f'<th data-key="{k}">{k}</th>' for k in (
        "case", "metric", "machine", "run", "commit", "change", "p", "confirmation"))
    rows: list[tuple[int, str]] = []
    for number, r in enumerate(results):
        for c in r.changes:
            confirmation = r.confirmations.get(c.index)
            verdict = None if confirmation is None else confirmation.verdict
            text = confirmation.text() if confirmation else ("exact" if r.exact else
                                                             "not re-timed")
            cells = [f'<a href="#{anchors[number]}">{html.escape(r.case_id)}</a>',
                     html.escape(r.metric), html.escape(r.machine), str(c.index + 1),
                     html.escape(str(r.points["commit"][c.index])),
                     html.escape(c.size_text(r.metric)),
                     html.escape(p_text(c.p_value)), html.escape(text)]
            cls = {CONFIRMED: "confirmed", NOT_CONFIRMED: "not-confirmed"}.get(verdict or "", "")
            order = {CONFIRMED: 0, None: 1, CANNOT: 2, NOT_CONFIRMED: 3}[verdict]
            rows.append((order, f'<tr class="{cls}">' + "".join(f"<td>{x}</td>" for x in cells[:-1])
                         + f'<td class="wrap">{cells[-1]}</td></tr>'))
    if not rows:
        return "<p>No change found in any series.</p>"
    body = "".join(row for _, row in sorted(rows, key=lambda item: item[0]))
    return (f'<table class="sortable" id="changes"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def legend() -> str:
    keys = "".join(f'<span class="key" style="border-top:{w:.0f}px '
                   f'{"solid" if s == "-" else "dashed" if s == "--" else "dotted"} {c}">'
                   f"</span>{html.escape(label)}" for c, s, w, label in MARKS.values())
    return (f'<p class="muted">Each point is one run (one commit) on one machine; p50 with its '
            f"95% interval over the run's timing blocks. Grey steps: the level between changes. "
            f"Changes (E-Divisive means, Apache Otava) are drawn where the new level starts, "
            f"labelled with their size:{keys}. A shaded band: the last runs creep (significant "
            f"trend beyond the threshold). A purple triangle at the bottom: an engine change "
            f"found by <code>--chain</code> (the two runs' artefacts re-timed paired), with "
            f"its paired size.</p>")


def render_history_page(history: History, results: list[SeriesResult]) -> str:
    anchors = {i: f"chart-{i}" for i in range(len(results))}
    changes = sum(len(r.changes) for r in results)
    confirmed = sum(c.verdict == CONFIRMED for r in results for c in r.confirmations.values())
    creeping = [f"{r.case_id} {r.metric}" for r in results if r.window and r.window.creeping]
    engine = sum(c.verdict == CONFIRMED for r in results for c in r.links)
    retimed = sum(len(r.links) for r in results)
    runs = len(history.runs)
    summary = (f"{runs} run(s) of branch {history.branch} on {len(history.machines)} "
               f"machine(s); {changes} change(s) in {len(results)} series"
               + (f", {confirmed} confirmed by paired re-timing" if confirmed else "")
               + (f"; {engine} engine change(s) in {retimed} link(s) re-timed by --chain"
                  if retimed else "")
               + (f"; creeping: {', '.join(creeping)}" if creeping else ""))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>pqbench history: {html.escape(history.branch)}</title>",
             f"<style>{STYLE}{EXTRA_STYLE}</style></head><body>",
             f"<h1>pqbench history: branch {html.escape(history.branch)}</h1>",
             f'<p class="{"bad" if changes or creeping else "muted"}">{html.escape(summary)}'
             "</p>", legend(), "<h2>Changes</h2>", change_table(results, anchors)]
    for machine in history.machines:
        parts.append(f"<h2>{html.escape(machine)}</h2>")
        cases: dict[str, list[int]] = {}
        for i, r in enumerate(results):
            if r.machine == machine:
                cases.setdefault(r.case_id, []).append(i)
        for case_id, members in cases.items():
            parts.append(f'<h3>{html.escape(case_id)}</h3><div class="charts">')
            for i in members:
                r = results[i]
                parts.append(f'<img class="chart" id="{anchors[i]}" alt="{html.escape(case_id)}'
                             f' {html.escape(r.metric)} over commits" '
                             f'src="{png_uri(series_png(r))}">')
            parts.append("</div>")
    parts += ['<p class="muted" hidden>charts decoded: <span id="charts-decoded">not yet</span>'
              "</p>", f"<script>{SCRIPT}</script></body></html>", ""]
    return "\n".join(parts)

