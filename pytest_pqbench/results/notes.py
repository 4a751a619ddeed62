"""What a reader must know about a case before its figures, in one line each: INT8 slower than
FP32 for the same model, pruner and runtime; a speed-up the data cannot support; a precision
that did not engage; what the pruner did not prune; torch-pruning's remarks.

Computed from the records of a run (so a report of an older run gets them too) and written into
each case's ``extra_info`` by the plugin (``int8_vs_fp32``, ``int8_note``). Every renderer
(terminal summary, markdown, CSV, HTML) shows them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..case import PrunerSpec
from .record import CaseRecord

# An INT8 engine this much slower than its FP32 twin, interval entirely below 1, is "slower".
INT8_SLOWER = 1.0
INT8_SLOWER_NOTE = "INT8 slower than FP32 here"
LISTED = 6  # cases named in a grouped note


def fp32_twin(record: CaseRecord, records: Mapping[str, CaseRecord]) -> CaseRecord | None:
    """The FP32 case of the same model, dataset, pruner, workflow and batch size."""
    if record.precision == "fp32":
        return None
    for other in records.values():
        if (other.precision == "fp32" and other.model == record.model
                and other.dataset == record.dataset and other.pruner == record.pruner
                and other.ratio == record.ratio and other.workflow == record.workflow
                and other.batch_size == record.batch_size
                and other.fact("input_size") == record.fact("input_size")):
            return other
    return None


def int8_vs_fp32(records: Mapping[str, CaseRecord]) -> dict[str, dict[str, Any]]:
    """Per INT8 case with a timed FP32 twin: ``int8_vs_fp32`` (FP32 p50 / INT8 p50: above 1
    INT8 is faster) and, when INT8 is slower beyond its interval, ``int8_note``."""
    out: dict[str, dict[str, Any]] = {}
    for case_id, record in records.items():
        if record.precision != "int8" or not record.timed:
            continue
        twin = fp32_twin(record, records)
        detail = record.speedup_detail(twin) if twin is not None and twin.timed else None
        if detail is None:
            continue
        facts: dict[str, Any] = {"int8_vs_fp32": detail.value}
        # slower when the ratio's whole interval lies below 1: then a wide interval (a noisy
        # FP32 twin) makes the size uncertain, not the direction; without an interval, only a
        # meaningful ratio says so
        below = detail.high < 1.0 if detail.high is not None else detail.meaningful
        if detail.value < INT8_SLOWER and below:
            facts["int8_note"] = (f"{INT8_SLOWER_NOTE}: {detail.value:.2f}x the speed "
                                  f"of {twin.case_id} ({record.p50_ms:.3g} vs "
                                  f"{twin.p50_ms:.3g} ms)")
        out[case_id] = facts
    return out


def case_notes(record: CaseRecord, records: Mapping[str, CaseRecord]) -> list[str]:
    """The notes of one case, most important first."""
    notes = []
    int8 = int8_vs_fp32({record.case_id: record, **_twins(record, records)}).get(
        record.case_id, {})
    if int8.get("int8_note"):
        notes.append(str(int8["int8_note"]))
    speedup = record.speedup_detail(records.get(record.baseline_case_id))
    if speedup is not None and not speedup.meaningful:
        notes.append(f"speed-up not meaningful: {speedup.not_meaningful}")
    engaged = record.precision_engaged
    if record.precision != "fp32" and engaged is not None and engaged < 0.5:
        notes.append(f"{record.precision} not engaged: {engaged:.0%} of compute in "
                     f"{record.precision}")
    return notes + pruner_notes(record)


def pruner_notes(record: CaseRecord) -> list[str]:
    """What the pruner left whole and what it remarked (``prune_scope``, ``prune_note``)."""
    notes = []
    scope = record.fact("prune_scope")
    if isinstance(scope, str) and "not pruned:" in scope:
        notes.append(scope)
    note = record.fact("prune_note")
    if isinstance(note, str) and note:
        notes.append(note)
    return notes


def _twins(record: CaseRecord, records: Mapping[str, CaseRecord]) -> dict[str, CaseRecord]:
    twin = fp32_twin(record, records)
    return {twin.case_id: twin} if twin is not None else {}


def grouped_notes(records: Mapping[str, CaseRecord]) -> list[tuple[str, str]]:
    """(who, note) of every note of the run, each said once: INT8 slower than FP32 once per
    model and workflow (first), a pruner's notes once per model and pruner, a note several
    cases share (a noisy baseline's) with the first case and a count."""
    slower: dict[str, list[str]] = {}  # "model workflow" -> "pruner 0.62x"
    items: dict[str, list[str]] = {}  # note -> the cases or model-and-pruner it concerns
    for record in records.values():
        if not record.timed:
            continue
        token = PrunerSpec(record.pruner, record.ratio).token
        by_pruner = pruner_notes(record)
        for note in case_notes(record, records):
            if note.startswith(INT8_SLOWER_NOTE):
                ratio = int8_vs_fp32({record.case_id: record, **_twins(record, records)})[
                    record.case_id]["int8_vs_fp32"]
                slower.setdefault(f"{record.model} {record.workflow}", []).append(
                    f"{token} {ratio:.2f}x")
                continue
            who = f"{record.model} {token}" if note in by_pruner else record.case_id
            if who not in items.setdefault(note, []):
                items[note].append(who)
    out = [(who, f"INT8 slower than FP32 in {len(cases)} case(s), INT8's speed as a share of "
                 f"FP32's: {', '.join(cases[:LISTED])}"
                 + (f" +{len(cases) - LISTED} more" if len(cases) > LISTED else ""))
           for who, cases in slower.items()]
    return out + [(", ".join(who) if len(who) <= 4 else
                   f"{', '.join(who[:3])} and {len(who) - 3} more", note)
                  for note, who in items.items()]


def short_notes(record: CaseRecord, records: Mapping[str, CaseRecord]) -> list[str]:
    """A few words per note, for a table cell (the full notes: ``grouped_notes``)."""
    out = []
    int8 = int8_vs_fp32({record.case_id: record, **_twins(record, records)}).get(
        record.case_id, {})
    if int8.get("int8_note"):
        out.append(f"INT8 slower than FP32 ({int8['int8_vs_fp32']:.2f}x)")
    speedup = record.speedup_detail(records.get(record.baseline_case_id))
    if speedup is not None and not speedup.meaningful:
        out.append("speed-up: noisy " + ("baseline" if speedup.not_meaningful.startswith(
            "baseline") else "p50"))
    engaged = record.precision_engaged
    if record.precision != "fp32" and engaged is not None and engaged < 0.5:
        out.append(f"{record.precision} not engaged ({engaged:.0%})")
    layers = record.fact("pruned_layers")
    if isinstance(layers, Mapping):
        left = [kind for kind, counts in layers.items()
                if isinstance(counts, list | tuple) and len(counts) == 2 and counts[0] == 0]
        if left:
            out.append(f"{', '.join(left)} not pruned")
    note = record.fact("prune_note")
    if isinstance(note, str) and "outside any layer" in note:
        out.append("unwrapped parameters pruned")
    return out
