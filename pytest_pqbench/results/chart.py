"""The latency-vs-accuracy (Pareto) chart of ``pqbench report --plot`` and the HTML page, with
labels that never overprint each other and an x range set by the points, not by one very wide
interval.

Label placement is hand-written: matplotlib has none of its own, and adjustText (the usual
library) is not installed here; a greedy search over a few candidate offsets per label, in
display pixels, is enough for the tens of points of one panel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import polars as pl

from .load import Run
from .record import SPEEDUP_MAX_SPREAD
from .report import latency_interval, latest_cases, matrix_frame

# Offsets tried per label, in points, nearest first: right, left, above, below, then farther out
# (a leader line is drawn for those).
STEPS = (0, 12, 24, 36)
PAD = 3.0  # pixels kept free around a label


def x_range(values: Sequence[float], log: bool, margin: float = 0.08) -> tuple[float, float]:
    """Limits that hold every point with a margin (intervals may run past them: clipped)."""
    low, high = min(values), max(values)
    if log:
        span = math.log10(high) - math.log10(low) or 0.3
        return 10 ** (math.log10(low) - margin * span), 10 ** (math.log10(high) + margin * span)
    span = (high - low) or max(abs(high) * 0.2, 1e-3)
    return max(0.0, low - margin * span), high + margin * span


def place_labels(ax: Any, points: Sequence[tuple[float, float, str, bool]],
                 fontsize: float = 7.0) -> int:
    """Annotate each (x, y, text, must) of ``ax`` where its box overlaps no label placed before
    it and no point, trying offsets farther out (with a leader line) when the near ones are
    taken. A label that finds no free place is left out, unless ``must`` (the Pareto-optimal
    points, placed first); returns how many were left out. Call after the axis limits are
    final."""
    fig = ax.figure
    scale = fig.dpi / 72.0  # points -> pixels
    height = fontsize * 1.25 * scale
    order = sorted(points, key=lambda p: not p[3])
    pixels = [ax.transData.transform((x, y)) for x, y, _, _ in order]
    marks = [(px - 4 * scale, py - 4 * scale, px + 4 * scale, py + 4 * scale) for px, py in pixels]
    placed: list[tuple[float, float, float, float]] = []
    left_out = 0
    for (x, y, text, must), (px, py) in zip(order, pixels, strict=True):
        width = len(text) * fontsize * 0.6 * scale
        best, best_cost = None, math.inf
        for step in STEPS:
            for dx, dy in ((5, 2 - step), (5, 2 + step), (-5 - width / scale, 2 - step),
                           (-5 - width / scale, 2 + step)):
                box = (px + dx * scale - PAD, py + dy * scale - PAD,
                       px + dx * scale + width + PAD, py + dy * scale + height + PAD)
                cost = sum(_overlap(box, other) for other in placed + marks)
                if cost < best_cost:
                    best, best_cost = (dx, dy, box, step), cost
            if best_cost < 1.0:
                break
        if best_cost >= 1.0 and not must:
            left_out += 1  # no free place: better no label than an unreadable blob
            continue
        dx, dy, box, step = best
        arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.6} if step >= 24 else None
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                    fontsize=fontsize, arrowprops=arrow, va="bottom")
        placed.append(box)
    return left_out


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Overlapping area of two boxes (x0, y0, x1, y1), in pixels squared."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def pareto_png(runs: list[Run]) -> bytes:
    """Latency-vs-accuracy charts, one panel per model (its own accuracy metric), one colour per
    batch size, Pareto-optimal cases marked and joined; a horizontal bar through each point is
    its latency interval (``latency_interval``), so cases within noise of each other show it.
    The x range is set by the points: an interval that runs past it is clipped and ends in an
    arrow (one very wide interval no longer squashes every other point); a case whose own
    interval spans more than ``SPEEDUP_MAX_SPREAD`` is drawn hollow ("noisy"). Labels are placed
    where they overprint nothing (``chart.place_labels``). matplotlib's object API with the Agg
    canvas: no pyplot, no global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    full = matrix_frame(runs)
    frame = full.filter(pl.col("p50_ms").is_not_null() & pl.col("accuracy").is_not_null()
                        & pl.col("accuracy").is_not_nan())
    entries = latest_cases(runs)
    intervals = {c: latency_interval(entries[c]) for c in frame["case_id"]}
    kinds = sorted({i[2] for i in intervals.values() if i})
    panels = frame.select("model", "dataset").unique(maintain_order=True).rows()
    fig = Figure(figsize=(9, 5 * max(len(panels), 1)), dpi=110)
    FigureCanvasAgg(fig)
    if not panels:
        fig.text(0.5, 0.5, "no case with both a latency and an accuracy", ha="center")
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    sizes = sorted(set(frame["batch_size"].to_list()))
    for k, (model, dataset) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        panel = frame.filter((pl.col("model") == model) & (pl.col("dataset") == dataset))
        latencies = panel["p50_ms"].to_list()
        log = min(latencies) > 0 and max(latencies) / min(latencies) > 8
        if log:
            ax.set_xscale("log")  # an order of magnitude apart: the fast cases stay readable
        limits = x_range(latencies, log)
        labels, clipped, noisy_shown = [], 0, False
        for bs in sizes:
            part = panel.filter(pl.col("batch_size") == bs).sort("p50_ms")
            if part.is_empty():
                continue
            colour = colours[sizes.index(bs) % len(colours)]
            for r in part.iter_rows(named=True):
                x, y = r["p50_ms"], r["accuracy"] * 100
                span = intervals.get(r["case_id"])
                noisy = bool(span) and span[0] > 0 and span[1] / span[0] > SPEEDUP_MAX_SPREAD
                if span:
                    low, high = max(span[0], limits[0]), min(span[1], limits[1])
                    ax.plot([low, high], [y, y], color=colour, alpha=0.6, lw=1.2)
                    for end, edge, marker in ((span[0], limits[0], "<"),
                                              (span[1], limits[1], ">")):
                        if (end < edge) if marker == "<" else (end > edge):
                            ax.plot([edge], [y], marker=marker, color=colour, ms=5)
                            clipped += 1
                star = bool(r["pareto"])
                ax.scatter([x], [y], marker="*" if star else "o", s=160 if star else 36,
                           facecolors="none" if noisy else colour, edgecolors=(
                               colour if noisy else "black" if star else colour),
                           linewidths=1.4 if noisy else 0.8, alpha=1.0 if star else 0.75,
                           zorder=3)
                noisy_shown |= noisy
                labels.append((x, y, f"{r['pruner_token']} {r['column']}"
                               + (f" bs{bs}" if len(sizes) > 1 else ""), star))
            best = part.filter(pl.col("pareto"))
            ax.step(best["p50_ms"], best["accuracy"] * 100, where="post", color=colour,
                    alpha=0.6, label=f"bs {bs}: Pareto front (stars)")
        ax.set_xlim(*limits)
        accuracy = panel["accuracy"].to_list()
        spread = (max(accuracy) - min(accuracy)) * 100 or 1.0
        ax.set_ylim(min(accuracy) * 100 - 0.15 * spread, max(accuracy) * 100 + 0.25 * spread)
        metrics = panel["accuracy_metric"].to_list() if "accuracy_metric" in panel.columns else []
        metric = next((m for m in metrics if m), "accuracy")
        bars = f"; bars: {' or '.join(kinds)}" if kinds else ""
        if clipped:
            bars += " (arrows: runs past the axis)"
        ax.set_xlabel(f"p50 latency per batch (ms){bars}")
        ax.set_ylabel(f"{metric} (%)")
        missing = full.filter((pl.col("model") == model) & pl.col("p50_ms").is_null()).height
        ax.set_title(f"{model} on {dataset}: latency vs {metric} (up and left is better)"
                     + (f"\n{missing} case(s) without figures not shown" if missing else ""),
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if noisy_shown:
            ax.scatter([], [], marker="o", facecolors="none", edgecolors="0.3",
                       label=f"hollow: noisy (interval wider than x{SPEEDUP_MAX_SPREAD})")
        ax.legend(fontsize=7, loc="lower right")
        if log:  # plain numbers, not 3x10^-1 crowding each other
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        left_out = place_labels(ax, labels)
        if left_out:
            ax.text(0.01, 0.02, f"{left_out} crowded labels left out (every case is in the "
                                "cases table)", transform=ax.transAxes, fontsize=7,
                    color="0.35")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
