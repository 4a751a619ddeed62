"""Every selected case of a run with its outcome and the reason for it: passed, failed, error
(before the test body: a build, a fine-tune, a parity check) or skipped.

pytest-benchmark's ``benchmarks`` list holds only the cases that were timed; a case that failed
before timing or was skipped would vanish from the results. The run's ``pqbench.cases`` section
lists each one (``Outcome.as_json``), and every report reads it back here (``run_outcomes``) to
show the cases without a record next to the others, with their reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

OUTCOMES = ("passed", "failed", "error", "skipped")
AXES = ("model", "dataset", "pruner", "ratio", "workflow", "precision", "batch_size")
REASON_CHARS = 500  # one line, not a traceback


@dataclass(frozen=True)
class Outcome:
    """One selected case: its outcome, a one-line reason (empty when it passed) and its axes."""

    case_id: str
    outcome: str
    reason: str = ""
    model: str = "?"
    dataset: str = "?"
    pruner: str = "?"
    ratio: float = 0.0
    workflow: str = "?"
    precision: str = "?"
    batch_size: int = 1

    @classmethod
    def of(cls, case_id: str, outcome: str, reason: str, axes: Mapping[str, Any]) -> Outcome:
        return cls(case_id, outcome, one_line(reason),
                   **{k: axes[k] for k in AXES if k in axes})

    @classmethod
    def parse(cls, raw: Any) -> Outcome | None:
        """An entry of ``pqbench.cases``; None for one that is not usable (read leniently: an
        outcome list never makes a run unreadable)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("case_id"), str) \
                or raw.get("outcome") not in OUTCOMES:
            return None
        axes = {k: raw[k] for k in AXES if isinstance(raw.get(k), str | int | float)
                and not isinstance(raw.get(k), bool)}
        if "batch_size" in axes:
            axes["batch_size"] = int(axes["batch_size"])
        if "ratio" in axes:
            axes["ratio"] = float(axes["ratio"])
        return cls(raw["case_id"], raw["outcome"], one_line(str(raw.get("reason") or "")),
                   **{k: v for k, v in axes.items()})

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def axes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in AXES}


def one_line(text: str) -> str:
    """The first non-empty line of ``text``, at most ``REASON_CHARS`` characters."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= REASON_CHARS else line[:REASON_CHARS - 1] + "…"


def section(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """The run's ``pqbench.cases`` list and ``pqbench.outcomes`` counts."""
    listed = list(outcomes)
    counts = {name: sum(o.outcome == name for o in listed) for name in OUTCOMES}
    return {"cases": [o.as_json() for o in listed],
            "outcomes": {k: v for k, v in counts.items() if v}}


def run_outcomes(data: Mapping[str, Any]) -> dict[str, Outcome]:
    """case id -> outcome from a run's JSON (empty for a run written before the section)."""
    meta = data.get("pqbench")
    raw = meta.get("cases") if isinstance(meta, Mapping) else None
    if not isinstance(raw, list):
        return {}
    parsed = (Outcome.parse(item) for item in raw)
    return {o.case_id: o for o in parsed if o is not None}


def without_record(outcomes: Mapping[str, Outcome], records: Mapping[str, Any]
                   ) -> list[Outcome]:
    """The cases of a run that have no record: failed or errored before timing, or skipped."""
    return [o for o in outcomes.values() if o.case_id not in records]


def counts_text(outcomes: Iterable[Outcome]) -> str:
    """``12 passed, 2 failed, 1 error, 3 skipped`` (outcomes that occur)."""
    listed = list(outcomes)
    parts = [f"{n} {name}" for name in OUTCOMES
             if (n := sum(o.outcome == name for o in listed))]
    return ", ".join(parts) or "no case"
