"""The ``pq_*`` fixtures: each asks one stage for its part of a case.

``pq_case`` (parametrized by the plugin) -> ``pq_data`` / ``pq_pruned`` (preparing) ->
``pq_engine`` / ``pq_accuracy`` (building) -> ``pq_timer`` (timing + recording: the case's
``CaseRecord``) -> ``pq_assert_floor``. A test that times its engine itself
(``benchmark.pedantic(pq_engine, ...)``, as DESIGN.md's outline does) gets its record from its own
rounds after it ran (``pytest_runtest_call`` below), so it is reported and gated like the others.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from ..case import Case
from ..config import Settings
from ..datasets import Dataset
from ..errors import NothingPruned
from ..results.record import CaseRecord, floor_problems
from ..stages.build import Builder
from ..stages.limits import time_limit
from ..stages.prepare import Pruned
from ..stages.record import CaseFacts, make_record, record_from_rounds, time_final_block
from . import get_builder
from .keys import PHASE_KEY, RECORD_KEY, RECORDS_KEY, SETTINGS_KEY, WARNINGS_KEY, case_of


@pytest.fixture(scope="session")
def pq_settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def pq_builder(pytestconfig: pytest.Config) -> Builder:
    """The session's building stage; ``pq_builder.prep`` is its preparing stage."""
    return get_builder(pytestconfig)


@pytest.fixture
def pq_data(pq_builder: Builder, pq_case: Case) -> Dataset:
    """The case's dataset (evaluation split for batches, calibration split for INT8)."""
    return pq_builder.prep.dataset(pq_case)


@pytest.fixture
def pq_pruned(pq_builder: Builder, pq_case: Case) -> Pruned:
    try:
        return pq_builder.prep.pruned(pq_case)
    except NothingPruned as exc:  # the pruner would leave the model as it is: not a case
        pytest.skip(str(exc))


@pytest.fixture
def pq_prune_report(pq_pruned: Pruned) -> dict[str, Any]:
    return {**pq_pruned.report.as_dict(), **pq_pruned.recovery}


@pytest.fixture
def pq_engine(pq_builder: Builder, pq_case: Case):
    reason = pq_builder.skip_reason(pq_case)
    if reason:
        pytest.skip(reason)
    try:
        return pq_builder.engine_guarded(pq_case)  # built by the timing phase, or now
    except NothingPruned as exc:
        pytest.skip(str(exc))


def accuracy_of(builder: Builder, case: Case) -> dict[str, Any]:
    """The engine's accuracy, under the time limit (a forward that hangs fails its case)."""
    if builder.settings.build_only:
        return {}
    with time_limit(builder.settings.build_timeout, f"{case.id}: evaluation",
                    option="--pqbench-build-timeout"):
        return builder.accuracy(case)


@pytest.fixture
def pq_accuracy(pq_builder: Builder, pq_case: Case, pq_engine) -> dict[str, Any]:
    return accuracy_of(pq_builder, pq_case)


def floor_for(item: pytest.Item, builder: Builder, case: Case) -> dict[str, float]:
    """The case's accuracy floor: its model spec's, then ``[tool.pqbench] floors``, then a
    ``pqbench_floor`` marker on the test."""
    spec = builder.prep.spec(case)
    floor = {"min_accuracy": spec.min_accuracy, "max_drop": spec.max_drop}
    floor.update(builder.settings.floors.get(case.model, {}))
    marker = item.get_closest_marker("pqbench_floor")
    if marker is not None:
        floor.update({k: v for k, v in marker.kwargs.items() if v is not None})
    return {k: float(v) for k, v in floor.items()}


@pytest.fixture
def pq_floor(request: pytest.FixtureRequest, pq_builder: Builder, pq_case: Case
             ) -> dict[str, float]:
    return floor_for(request.node, pq_builder, pq_case)


@pytest.fixture
def pq_assert_floor(pq_builder: Builder, pq_floor: dict[str, float]
                    ) -> Callable[[Case, dict[str, Any]], None]:
    """``pq_assert_floor(case, accuracy)``: fail (after timing was recorded) below the floor."""

    def check(case: Case, accuracy: dict[str, Any]) -> None:
        if not accuracy:  # build-only run, or an untrained model: nothing measured
            return
        value = float(accuracy["accuracy"])
        reference = float(pq_builder.prep.reference_accuracy(case)["accuracy"])
        problems = floor_problems(value, reference, pq_floor["min_accuracy"],
                                  pq_floor["max_drop"])
        if problems:
            metric = accuracy.get("accuracy_metric", "accuracy")
            pytest.fail(f"{case.id}: {metric} {value:.4f} " + "; ".join(problems), pytrace=False)

    return check


def keep(config: pytest.Config, item: pytest.Item, record: CaseRecord, benchmark: Any) -> None:
    """The record stage's result: in the item's stash (the gate reads it), in the session's
    records (summary, ratio metrics) and, once, in pytest-benchmark's ``extra_info``."""
    item.stash[RECORD_KEY] = record
    config.stash[RECORDS_KEY][record.case_id] = record
    benchmark.extra_info.update(record.extra_info())
    engaged = record.precision_engaged
    if record.precision != "fp32" and engaged is not None and engaged < 0.5:
        config.stash[WARNINGS_KEY].append(
            f"precision not engaged: {record.case_id}: {record.precision} requested but only "
            f"{engaged:.0%} of compute runs in {record.precision} ({record.fact('provider')}); "
            f"its figures are not {record.precision}")


@pytest.fixture
def pq_timer(request: pytest.FixtureRequest, pq_builder: Builder, pq_case: Case, pq_engine,
             pq_accuracy, pq_floor) -> Callable[[Any, Any, Any], CaseRecord]:
    """``pq_timer(benchmark, engine, batch)``: the case's blocks (timed in the session's timing
    phase, or here), a final block through pytest-benchmark, and its ``CaseRecord``."""
    config = request.config

    def run(benchmark: Any, engine: Any, batch: Any) -> CaseRecord:
        facts = CaseFacts.gather(pq_case, pq_builder, pq_accuracy, pq_floor)
        if pq_builder.settings.build_only:
            record = make_record(facts, None, build_only=True)
        else:
            timed = time_final_block(pq_case, benchmark, engine, batch, pq_builder.settings,
                                     config.stash.get(PHASE_KEY, None), pq_builder.device)
            record = make_record(facts, timed)
        keep(config, request.node, record, benchmark)
        return record

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """After a pqbench test that timed its engine with ``benchmark`` itself (no ``pq_timer``):
    its record from its own rounds, so it is reported and gated like the others."""
    try:
        return (yield)
    finally:
        record_own_rounds(item)


def record_own_rounds(item: pytest.Item) -> None:
    case = case_of(item)
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    stats = getattr(benchmark, "stats", None)
    if case is None or RECORD_KEY in item.stash or stats is None or not stats.stats.data:
        return
    builder = get_builder(item.config)
    if builder.engine_key(case) in builder.failures:
        return
    facts = CaseFacts.gather(case, builder, accuracy_of(builder, case),
                             floor_for(item, builder, case))
    record = record_from_rounds(facts, [float(s) for s in stats.stats.data], builder.settings)
    keep(item.config, item, record, benchmark)
