"""What the plugin keeps in pytest's stashes, and how a test item names its case.

Stage objects and results live in ``config.stash`` (one pytest session) and ``item.stash`` (one
test); the hook modules of this package read them from here, never from each other.
"""

from __future__ import annotations

import pytest

from ..case import Case
from ..config import Settings
from ..results.outcomes import Outcome
from ..results.record import CaseRecord
from ..stages.build import Builder
from ..stages.phase import PhaseResult

CASE_ARG = "pq_case"  # the parametrized argument that carries a test's Case

SETTINGS_KEY = pytest.StashKey[Settings]()
BUILDER_KEY = pytest.StashKey[Builder]()  # the building stage (it holds the preparing stage)
PHASE_KEY = pytest.StashKey[PhaseResult]()  # the timing phase's blocks and pairings
RECORDS_KEY = pytest.StashKey[dict[str, CaseRecord]]()  # case id -> record, in run order
WARNINGS_KEY = pytest.StashKey[list[str]]()  # lines for the end-of-run 'pqbench' section
RECORD_KEY = pytest.StashKey[CaseRecord]()  # item.stash: the case's record
# case id -> outcome (passed, failed, error, skipped), its reason and axes, of every pqbench case
OUTCOMES_KEY = pytest.StashKey[dict[str, Outcome]]()


def case_of(item: pytest.Item) -> Case | None:
    """The case a test item runs, or None for a test that is not a pqbench case."""
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get(CASE_ARG) if callspec is not None else None
    return case if isinstance(case, Case) else None


def selected_cases(items: list[pytest.Item]) -> list[Case]:
    """Cases of the items that will run, in item order, once each (skipped ones left out)."""
    seen: dict[str, Case] = {}
    for item in items:
        case = case_of(item)
        if case is None or case.id in seen:
            continue
        if any(m.name in ("skip", "skipif") for m in item.iter_markers()):
            continue
        seen[case.id] = case
    return list(seen.values())
