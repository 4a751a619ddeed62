"""Chart helpers for the Pareto chart: labels that never overprint each other, and an x range
set by the points, not by one very wide interval.

Hand-written: matplotlib has no label placement of its own, and adjustText (the usual library)
is not installed here; a greedy search over a few candidate offsets per label, in display
pixels, is enough for the tens of points of one panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Offsets tried per label, in points, nearest first: right, left, above, below, then farther out
# (a leader line is drawn for those).
STEPS = (0, 12, 24, 36, 48, 60)


def x_range(values: Sequence[float], log: bool, margin: float = 0.08) -> tuple[float, float]:
    """Limits that hold every point with a margin (intervals may run past them: clipped)."""
    low, high = min(values), max(values)
    if log:
        span = math.log10(high) - math.log10(low) or 0.3
        return 10 ** (math.log10(low) - margin * span), 10 ** (math.log10(high) + margin * span)
    span = (high - low) or max(abs(high) * 0.2, 1e-3)
    return max(0.0, low - margin * span), high + margin * span


def place_labels(ax: Any, points: Sequence[tuple[float, float, str]], fontsize: float = 7.0
                 ) -> int:
    """Annotate each (x, y, text) of ``ax`` where its box overlaps no label placed before it and
    no point; returns how many needed a leader line. Call after the axis limits are final."""
    fig = ax.figure
    scale = fig.dpi / 72.0  # points -> pixels
    height = fontsize * 1.25 * scale
    pixels = [ax.transData.transform((x, y)) for x, y, _ in points]
    marks = [(px - 4 * scale, py - 4 * scale, px + 4 * scale, py + 4 * scale) for px, py in pixels]
    placed: list[tuple[float, float, float, float]] = []
    leaders = 0
    for (x, y, text), (px, py) in zip(points, pixels, strict=True):
        width = len(text) * fontsize * 0.56 * scale
        best, best_cost = None, math.inf
        for step in STEPS:
            for dx, dy in ((5, 2 - step), (5, 2 + step), (-5 - width / scale, 2 - step),
                           (-5 - width / scale, 2 + step)):
                box = (px + dx * scale, py + dy * scale, px + dx * scale + width,
                       py + dy * scale + height)
                cost = sum(_overlap(box, other) for other in placed + marks) + step * 0.01
                if cost < best_cost:
                    best, best_cost = (dx, dy, box, step), cost
            if best_cost < 1.0:
                break
        dx, dy, box, step = best
        arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.6} if step >= 24 else None
        leaders += arrow is not None
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                    fontsize=fontsize, arrowprops=arrow, va="bottom")
        placed.append(box)
    return leaders


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Overlapping area of two boxes (x0, y0, x1, y1), in pixels squared."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0
