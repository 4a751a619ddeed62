"""What a run adds to pytest-benchmark's JSON (machine facts, run-level ratios and efficiency, the
timing phase, the gate's verdicts, cache figures) and to the terminal (the results table and the
'pqbench' section)."""

from __future__ import annotations

from typing import Any

import pytest

from .. import SCHEMA_VERSION
from ..environment import machine_facts, machine_peaks
from ..errors import StepFailed, UsageError
from ..results.notes import int8_vs_fp32
from ..results.outcomes import Outcome, section
from ..results.record import add_ratio_metrics, efficiency
from .keys import (
    BUILDER_KEY,
    OUTCOMES_KEY,
    PHASE_KEY,
    RECORDS_KEY,
    SETTINGS_KEY,
    WARNINGS_KEY,
    case_of,
)
from .summary import write_summary


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Every pqbench case's outcome, with its reason: the run accounts for each one."""
    report = yield
    case = case_of(item)
    if case is None:
        return report
    outcomes = item.config.stash.setdefault(OUTCOMES_KEY, {})
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        outcomes[case.id] = Outcome.of(case.id, "skipped", str(reason).removeprefix("Skipped: "),
                                       case.axes())
    elif report.failed:
        outcome = "failed" if report.when == "call" else "error"
        outcomes[case.id] = Outcome.of(case.id, outcome, short_reason(report, call),
                                       case.axes())
    elif report.when == "call" and case.id not in outcomes:
        outcomes[case.id] = Outcome.of(case.id, "passed", "", case.axes())
    return report


def short_reason(report: pytest.TestReport, call: pytest.CallInfo | None = None) -> str:
    """The error message of a failure, not the traceback: an error this package raises on
    purpose is its message alone (it names the case and the setting), any other is its type
    and first line."""
    exc = call.excinfo.value if call is not None and call.excinfo is not None else None
    if isinstance(exc, UsageError | StepFailed):
        return str(exc)
    if exc is not None and not isinstance(exc, pytest.fail.Exception):
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).splitlines()[0] if crash.message else ""
    text = str(report.longrepr or "").strip()
    # a one-line mistake (plugin.mistakes) reads "pqbench: <message>"
    return text.splitlines()[-1].removeprefix("pqbench: ") if text else ""


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["pqbench"] = machine_facts(config.stash.get(SETTINGS_KEY, None))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict) -> None:
    records = config.stash.get(RECORDS_KEY, {})
    builder = config.stash.get(BUILDER_KEY, None)
    entries = {b.get("extra_info", {}).get("case_id"): b for b in output_json.get("benchmarks", [])}
    for case_id, ratios in add_ratio_metrics(records).items():
        if case_id in entries:
            entries[case_id]["extra_info"].update(ratios)
    for case_id, facts in int8_vs_fp32(records).items():  # INT8 slower than FP32, said first
        if case_id in entries:
            entries[case_id]["extra_info"].update(facts)
    timed = [r for r in records.values() if r.timed and r.case_id in entries]
    if builder is not None and timed:  # how close to this machine's peak each engine runs
        peaks = machine_peaks(threads=builder.threads)
        output_json.setdefault("machine_info", {}).setdefault("pqbench", {})["peaks"] = peaks
        for record in timed:
            entries[record.case_id]["extra_info"].update(efficiency(record, peaks))
    output_json["pqbench"] = {"schema_version": SCHEMA_VERSION}
    # every selected case with its outcome and reason, timed or not (``results.outcomes``)
    output_json["pqbench"].update(section(config.stash.get(OUTCOMES_KEY, {}).values()))
    gate = config.pluginmanager.get_plugin("pqbench-gate")
    if gate is not None:  # the in-pytest gate's verdicts, with their reasons
        output_json["pqbench"]["compare"] = gate.as_json()
    phase = config.stash.get(PHASE_KEY, None)
    if phase is not None:
        schedule = phase.schedule
        output_json["pqbench"]["timing_phase"] = {
            "cycles": phase.cycles, "most_cycles": phase.most_cycles, "looks": phase.looks,
            "look_points": list(schedule.points) if schedule else [phase.cycles],
            "look_shares": list(schedule.shares) if schedule else [1.0],
            "timed_on": phase.timed_on, "stopped_at": phase.stopped_at,
            "out_of_budget": phase.out_of_budget, "seconds": round(phase.seconds, 3),
            "errors": phase.errors}
    if builder is not None:
        cache = builder.prep.cache
        output_json["pqbench"].update({"cache_dir": str(cache.root),
                                       "cache_hits": cache.stats.hits,
                                       "cache_misses": cache.stats.misses,
                                       "cache_hit_rate": cache.stats.hit_rate})


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    warnings = config.stash.get(WARNINGS_KEY, [])
    builder = config.stash.get(BUILDER_KEY, None)
    if builder is not None:  # the results table: one row per timed case
        write_summary(terminalreporter, config, config.stash.get(RECORDS_KEY, {}),
                      config.stash.get(OUTCOMES_KEY, {}))
    if not warnings and builder is None:
        return
    terminalreporter.section("pqbench")
    for line in warnings:
        terminalreporter.write_line(f"WARNING {line}", yellow=True)
    if builder is not None:
        s = builder.prep.cache.stats
        terminalreporter.write_line(
            f"artefact cache {builder.prep.cache.root}: {s.hits} hits, {s.misses} builds "
            f"(hit rate {s.hit_rate_text}), {s.rebuilt_corrupt} corrupt entries rebuilt")
