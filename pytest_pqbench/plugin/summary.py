"""The results table at the end of a run: one row per timed case, grouped by model and batch size,
with accuracy, p50 (and its noise figure when the record has one), speed-up against the run's
baseline case, model size, the precision that engaged, the accuracy floor and, under
``--pqbench-compare``, the gate's verdict. Fits 100 columns; latencies in milliseconds.

Rendering only: the figures are the case records' (``results.record.CaseRecord``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..case import PrunerSpec
from ..results.notes import grouped_notes
from ..results.outcomes import Outcome, counts_text
from ..results.record import CaseRecord

WIDTH = 100
# Worst first: a case shows the most serious verdict among its metrics.
VERDICT_ORDER = ("regressed", "improved", "not significant", "too few rounds", "unchanged", "new",
                 "missing")
LEGEND = ("p50: median latency of one batch; noise: spread of the p50 across the case's timing "
          "blocks (noise_pct; else half the width of p50_ci_ms, in % of p50); speed-up: the "
          "baseline's p50 / this p50 (baseline: unpruned torch fp32, same model and batch size; "
          "'noisy': its 95% interval spans more than x1.5, so no figure is shown); "
          "size: bytes of the model as executed; precision: share of compute in the requested "
          "precision (! below half); floor: accuracy >= min_accuracy and drop vs unpruned eager "
          "fp32 <= max_drop")


def case_verdicts(rows: Iterable[Any]) -> dict[str, str]:
    """case id -> its worst verdict, with the metrics that gave it ('regressed: p99')."""
    by_case: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        case_id, verdict = getattr(row, "case_id", None), getattr(row, "verdict", None)
        if case_id and verdict:
            by_case.setdefault(case_id, []).append((verdict, str(getattr(row, "metric", ""))))
    out = {}
    for case_id, found in by_case.items():
        rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
        worst = min((v for v, _ in found), key=lambda v: rank.get(v, len(rank)))
        metrics = [m for v, m in found if v == worst and m and m != "-"]
        shown = worst if worst in ("unchanged", "new", "missing") or not metrics else \
            f"{worst}: {','.join(metrics)}"
        out[case_id] = shown
    return out


def group_rows(records: Mapping[str, CaseRecord], verdicts: Mapping[str, str] | None
               ) -> list[tuple[str, list[list[str]], list[bool]]]:
    """(group title, cell rows, floor-failed flags) per model, dataset and batch size."""
    groups: dict[tuple, list[CaseRecord]] = {}
    for record in records.values():
        groups.setdefault((record.model, record.dataset, record.batch_size), []).append(record)
    out = []
    for (model, dataset, batch), members in groups.items():
        metric = next((r.accuracy_metric for r in members if r.accuracy is not None),
                      "accuracy")
        rows, failed = [], []
        for r in members:
            noise, ratio = r.noise_pct(), r.speedup_detail(records.get(r.baseline_case_id))
            engaged, size = r.precision_engaged, r.model_bytes
            shown = "-" if engaged is None else f"{r.precision} {engaged:.0%}" + (
                " !" if r.precision != "fp32" and engaged < 0.5 else "")
            ok = r.floor_ok()
            pruner = PrunerSpec(r.pruner, r.ratio)
            row = [f"{pruner.token} {r.workflow} {r.precision}",
                   "-" if r.accuracy is None else f"{r.accuracy * 100:.2f}%",
                   "-" if r.p50_ms is None else f"{r.p50_ms:.3f}",
                   "-" if noise is None else f"±{noise:.1f}%",
                   "-" if ratio is None else ratio.text() if ratio.meaningful else "noisy",
                   "-" if size is None else f"{size / 1e6:.2f} MB",
                   shown, "-" if ok is None else "ok" if ok else "FAIL"]
            if verdicts is not None:
                row.append(verdicts.get(r.case_id, "-"))
            rows.append(row)
            failed.append(ok is False)
        out.append((f"{model} on {dataset}, batch size {batch} ({metric})", rows, failed))
    return out


HEADER = ["case", "accuracy", "p50 ms", "noise", "speed-up", "size", "precision", "floor"]
RIGHT = {1, 2, 3, 4, 5}  # numbers align right


def layout(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Lines of an aligned table, at most ``width`` wide: two spaces between columns, one when
    that is too wide, and the first column shortened (ending in '~') as a last resort."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    sep = "  " if sum(widths) + 2 * (len(widths) - 1) <= width else " "
    excess = sum(widths) + len(sep) * (len(widths) - 1) - width
    if excess > 0:
        widths[0] = max(8, widths[0] - excess)

    def cell(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[:widths[i] - 1] + "~"
        return text.rjust(widths[i]) if i in RIGHT else text.ljust(widths[i])

    return [sep.join(cell(v, i) for i, v in enumerate(r)).rstrip() for r in [header, *rows]]


def wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def summary_lines(records: Mapping[str, CaseRecord],
                  verdicts: Mapping[str, str] | None = None,
                  width: int = WIDTH) -> list[tuple[str, bool]]:
    """(line, is a floor failure) of the whole table, legend last; empty when nothing was
    timed (build-only, --benchmark-disable)."""
    timed = {k: v for k, v in records.items() if v.timed}
    if not timed:
        return []
    groups = group_rows(timed, verdicts)
    header = HEADER + (["verdict"] if verdicts is not None else [])
    show_noise = any(r.noise_pct() is not None for r in timed.values())
    keep = [i for i in range(len(header)) if show_noise or header[i] != "noise"]
    out: list[tuple[str, bool]] = []
    for title, rows, failed in groups:
        lines = layout([header[i] for i in keep], [[r[i] for i in keep] for r in rows], width)
        out.append((title, False))
        out += [(lines[0], False)] + list(zip(lines[1:], failed, strict=True))
        out.append(("", False))
    return out + [(line, False) for line in wrap(LEGEND, width)]


def note_lines(records: Mapping[str, CaseRecord], width: int = WIDTH) -> list[str]:
    """What to read before the figures (``results.notes.grouped_notes``), one item each."""
    lines = []
    for who, note in grouped_notes(records):
        wrapped = wrap(f"{who}: {note}", width - 2)
        lines += [("- " if k == 0 else "  ") + line for k, line in enumerate(wrapped)]
    return lines


def untimed_lines(outcomes: Mapping[str, Outcome], records: Mapping[str, Any],
                  width: int = WIDTH) -> list[str]:
    """Every case of the run that has no row (failed or errored before timing, or skipped),
    with its reason; cases with the same outcome and reason are listed together."""
    groups: dict[tuple[str, str], list[str]] = {}
    for outcome in outcomes.values():
        if outcome.case_id in records:
            continue
        reason = outcome.reason.removeprefix(f"{outcome.case_id}: ").removeprefix("pqbench: ")
        groups.setdefault((outcome.outcome, reason or "no reason given"), []).append(
            outcome.case_id)
    if not groups:
        return []
    missing = [o for o in outcomes.values() if o.case_id not in records]
    lines = [f"not in the table: {counts_text(missing)}"]
    order = {name: i for i, name in enumerate(("failed", "error", "skipped"))}
    for (outcome, reason), ids in sorted(groups.items(), key=lambda g: order.get(g[0][0], 9)):
        shown = ", ".join(ids) if len(ids) <= 3 else f"{', '.join(ids[:2])} +{len(ids) - 2} more"
        lines += wrap(f"{outcome.upper()} {shown}: {reason}", width)
    return lines


def write_summary(terminalreporter: Any, config: Any, records: Mapping[str, CaseRecord],
                  outcomes: Mapping[str, Outcome]) -> None:
    """The 'pqbench results' section of the terminal summary."""
    gate = config.pluginmanager.get_plugin("pqbench-gate")
    rows = getattr(getattr(gate, "comparison", None), "rows", None)
    verdicts = case_verdicts(rows) if gate is not None and rows is not None else None
    lines = summary_lines(records, verdicts)
    terminalreporter.section("pqbench results")
    if not lines:
        terminalreporter.write_line("no case was timed in this run")
    for line, floor_failed in lines:
        terminalreporter.write_line(line, red=floor_failed)
    notes = note_lines({k: v for k, v in records.items() if v.timed})
    if notes:
        terminalreporter.write_line("notes (read before the figures):")
        for line in notes:
            terminalreporter.write_line(line, yellow=True)
    for line in untimed_lines(outcomes, records):
        terminalreporter.write_line(line, red=line.startswith(("FAILED", "ERROR")))

