"""In-pytest regression gate: ``--pqbench-compare=BASELINE [--pqbench-fail-on ...]``.

Each timed case is compared with the same case of the baseline run as soon as its test has run,
with the statistics of ``results.compare``; a case that regressed is reported as a failed test
(its own item, so JUnit XML shows it) with the numbers in the message, instead of one
session-level error. Registered by ``plugin.pytest_configure`` only when a baseline is given.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest

from ..environment import control_measurement, cpu_facts
from ..errors import InputError, UsageError
from ..results.compare import (
    Comparison,
    PairedTiming,
    Row,
    Thresholds,
    compare_case,
    machine_key,
    machine_scale,
)
from ..results.load import DEFAULT_STORAGE, Run, load_one
from ..results.noise import NoiseModel
from .keys import PHASE_KEY, RECORD_KEY, case_of, selected_cases


def storage_of(config: pytest.Config) -> Path:
    """pytest-benchmark's ``--benchmark-storage`` when it is a folder, else ``.benchmarks``."""
    storage = str(config.getoption("benchmark_storage", None) or "")
    if storage.startswith("file://"):
        return Path(storage.removeprefix("file://")).expanduser()
    return DEFAULT_STORAGE


class RegressionGate:
    def __init__(self, baseline: Run, thresholds: Thresholds,
                 noise: NoiseModel | None = None, config: pytest.Config | None = None,
                 undecided: str = "warn") -> None:
        self.baseline = baseline
        self.cases = baseline.cases
        self.comparison = Comparison(str(baseline.path), "this run", thresholds)
        self.noise = noise or NoiseModel()
        self.config = config
        self.undecided = undecided  # fail | warn | pass: what an undecided gated metric does
        self._scale: float | None | bool = False  # False: not decided yet
        self.pairing_notes: dict[str, str] = {}  # case id -> how its latency was compared

    @classmethod
    def from_config(cls, config: pytest.Config, settings: Any) -> RegressionGate:
        try:
            thresholds = Thresholds.parse_fail_on(settings.fail_on)
            noise_path = getattr(settings, "noise", None)
            noise = NoiseModel.load(noise_path) if noise_path else None
            baseline = load_one(settings.compare, storage_of(config))
            matrix = [case.id for case in settings.cases()]
            if not any(case_id in baseline.cases for case_id in matrix):
                theirs = sorted(baseline.cases)
                raise InputError(
                    f"{baseline.path}: no case in common with this run's matrix: every case "
                    "would be 'new' and nothing compared (baseline: "
                    f"{', '.join(theirs[:4])}{' ...' if len(theirs) > 4 else ''}; this run: "
                    f"{', '.join(matrix[:4])}{' ...' if len(matrix) > 4 else ''}); give a "
                    "baseline of the same models, or the matching --pqbench-* options")
            return cls(baseline, thresholds, noise, config, settings.undecided)
        except (InputError, UsageError) as exc:
            raise pytest.UsageError(f"--pqbench-compare / --pqbench-fail-on: {exc}") from None

    def paired_timing(self, case_id: str) -> tuple[PairedTiming | None, str]:
        """The case's alternating blocks with the baseline engine from the timing phase, or
        why there are none."""
        phase = self.config.stash.get(PHASE_KEY, None) if self.config is not None else None
        if phase is None:
            return None, "no timing phase in this session: unpaired verdict"
        pairing = phase.pairings.get(case_id)
        timing = phase.timings.get(case_id)
        if pairing is None or timing is None:
            return None, "not timed in the timing phase: unpaired verdict"
        if not pairing.paired or pairing.baseline is None:
            return None, pairing.note
        own = pairing.candidate or timing  # this run's artefact, when it was the one paired
        return PairedTiming.of(pairing.baseline, own, pairing.note, phase.schedule), ""

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """The run's false-alarm budget is split over the timing tests it will gate: the
        selected cases that are in the baseline, times the gated timing metrics."""
        common = [c for c in selected_cases(session.items) if c.id in self.cases]
        if common:
            self.comparison.thresholds = self.comparison.thresholds.for_run(len(common))

    def scale(self) -> float:
        """Candidate-time factor: the ratio of control measurements when the baseline ran on
        another machine (timed once, on first need), else 1."""
        if self._scale is False:
            here = machine_key({"node": platform.node(),
                                "pqbench": {"cpu_model": cpu_facts()["cpu_model"]}})
            self._scale = machine_scale(self.baseline, here,
                                        lambda: control_measurement()["median_s"])
            self.comparison.scale = self._scale
        return self._scale or 1.0

    def rows_for(self, item: pytest.Item) -> list[Row]:
        case = case_of(item)
        record = item.stash.get(RECORD_KEY, None)
        if case is None or record is None or record.build_only:
            return []  # not a timed pqbench case (skipped, build-only, or another test)
        if case.id not in self.cases:
            return [Row(case.id, "-", "new", detail="not in the baseline")]
        paired, note = self.paired_timing(case.id)
        self.pairing_notes[case.id] = paired.note if paired else note
        return compare_case(case.id, self.cases[case.id], record, self.comparison.thresholds,
                            1.0 if paired else self.scale(), self.noise.sd(case.id), paired, note)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if report.when != "call" or not report.passed:
            return report
        rows = self.rows_for(item)
        self.comparison.rows += rows
        failing = Comparison("", "", self.comparison.thresholds, rows).failing(self.undecided)
        if failing:
            regressed = any(r.verdict == "regressed" for r in failing)
            what = "regressed" if regressed else "could not be decided (--pqbench-undecided=fail)"
            report.outcome = "failed"
            report.longrepr = (f"{rows[0].case_id} {what} against {self.baseline.path}:\n  "
                               + "\n  ".join(r.message() + (f"; to decide: {r.to_decide}"
                                                             if r.to_decide else "")
                                              for r in failing))
        return report

    def as_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"baseline": str(self.baseline.path), "scale": self.comparison.scale,
                "alpha_run": self.comparison.thresholds.alpha,
                "timing_tests": self.comparison.thresholds.tests,
                "alpha_per_test": self.comparison.thresholds.test_alpha,
                "undecided_policy": self.undecided,
                "undecided": len(self.comparison.undecided),
                "counts": self.comparison.counts(),
                "rows": [asdict(r) for r in self.comparison.rows]}

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("pqbench compare")
        counts = ", ".join(f"{n} {v}" for v, n in self.comparison.counts().items()) or "nothing"
        terminalreporter.write_line(f"against {self.baseline.path}: {counts}")
        if self.comparison.scale is not None:
            terminalreporter.write_line(f"times scaled by {self.comparison.scale:.3f} (control "
                                        "measurement: the baseline ran on another machine)")
        paired = [c for c, note in self.pairing_notes.items() if note.startswith("paired")]
        if self.pairing_notes:
            terminalreporter.write_line(
                f"latency: {len(paired)} of {len(self.pairing_notes)} case(s) paired with the "
                "baseline's engine in alternating blocks; the others compared unpaired:")
            for case_id, note in self.pairing_notes.items():
                if case_id not in paired:
                    terminalreporter.write_line(f"  {case_id}: {note}")
        t = self.comparison.thresholds
        terminalreporter.write_line(
            f"false-alarm budget {t.alpha:g} for the run, split over {t.tests} timing test(s): "
            f"each at alpha {t.test_alpha:.2g}")
        undecided = self.comparison.undecided
        if undecided:
            action = {"fail": "they FAIL their cases", "warn": "they do not fail the run "
                      "(--pqbench-undecided=fail makes them fail)", "pass": "ignored"}
            terminalreporter.write_line(
                f"UNDECIDED: {len(undecided)} gated metric(s) the data could not decide; "
                f"{action[self.undecided]}:", yellow=self.undecided != "pass",
                red=self.undecided == "fail")
            for row in undecided:
                terminalreporter.write_line(f"  {row.case_id} {row.metric}: {row.verdict}"
                                            + (f"; to decide: {row.to_decide}"
                                               if row.to_decide else ""))
        for row in self.comparison.regressions:
            terminalreporter.write_line(f"REGRESSED {row.case_id}: {row.message()}", red=True)
