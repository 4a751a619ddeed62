"""The results table at the end of a run (``pqbench results`` section of the terminal summary):
real pytest runs through pytester, the expected values read back from the JSON each run wrote."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from pqbench_runs import produce_real_run

from pytest_pqbench.case import PrunerSpec
from pytest_pqbench.plugin.summary import WIDTH, summary_lines
from pytest_pqbench.results.compare import VERDICTS
from pytest_pqbench.results.record import CaseRecord
from tests.conftest import SMOKE

RUN = ["--pqbench-models=shapes_resnet", "--pqbench-pruners=none", "--pqbench-threads=1",
       "--pqbench-workflows=torch,ort", "--pqbench-precisions=fp32", "--pqbench-batch-sizes=8",
       *SMOKE, "-q"]


def section(lines: list[str], title: str) -> list[str]:
    """The lines of one ``==== title ====`` section of pytest's terminal summary."""
    start = next(i for i, line in enumerate(lines) if re.match(rf"^=+ {title} =+$", line))
    rest = lines[start + 1:]
    end = next((i for i, line in enumerate(rest) if re.match(r"^=+ .* =+$", line)), len(rest))
    return rest[:end]


def label(info: dict) -> str:
    pruner = PrunerSpec(info["pruner"], info["ratio"]).token
    return f"{pruner} {info['workflow']} {info['precision']}"


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    """case label -> cells, split on runs of two or more spaces (as the table aligns them)."""
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    rows = {}
    for line in lines[header + 1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def expected_cells(info: dict) -> list[str]:
    return [label(info), f"{info['accuracy'] * 100:.2f}%", f"{info['p50_ms']:.3f}",
            f"±{info['noise_pct']:.1f}%" if "noise_pct" in info else None,
            # a speed-up the record's interval cannot support is not printed (issue 27)
            "noisy" if "latency_speedup_not_meaningful" in info
            else f"{info['latency_speedup']:.2f}x", f"{info['model_bytes'] / 1e6:.2f} MB",
            f"{info['precision']} {info['precision_engaged']:.0%}"]


def test_summary_has_one_row_per_case_with_the_recorded_values(bench_pytester):
    out = bench_pytester.path / "run.json"
    result = bench_pytester.runpytest(*RUN, f"--benchmark-json={out}")
    result.assert_outcomes(passed=2)
    infos = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]
             if "case_id" in b["extra_info"]]
    lines = section(result.outlines, "pqbench results")
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    assert lines[0] == "shapes_resnet on shapes, batch size 8 (top1)"
    rows = table_rows(lines)
    assert sorted(rows) == sorted(label(i) for i in infos)
    for info in infos:
        want = [c for c in expected_cells(info) if c is not None]
        assert rows[label(info)][:len(want)] == want
        assert rows[label(info)][len(want)] == "ok"  # floor: the run passed, so it held


def test_summary_shows_the_gate_verdict_under_compare(bench_pytester):
    first = bench_pytester.path / "first.json"
    bench_pytester.runpytest(*RUN, f"--benchmark-json={first}").assert_outcomes(passed=2)
    result = bench_pytester.runpytest(*RUN, f"--pqbench-compare={first}",
                                      "--pqbench-fail-on=accuracy:0.5pp")
    lines = section(result.outlines, "pqbench results")
    header = next(line for line in lines if line.startswith("case "))
    assert header.split()[-1] == "verdict"
    rows = table_rows(lines)
    assert len(rows) == 2
    for cells in rows.values():
        # same model, same data: the only gate (accuracy) finds it unchanged
        assert cells[-1] == "unchanged" and cells[-1] in VERDICTS


@pytest.fixture(scope="module")
def real_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaseRecord]:
    run = produce_real_run(tmp_path_factory)
    return {b["extra_info"]["case_id"]: CaseRecord.from_benchmark(b) for b in run["benchmarks"]}


def info_of(record: CaseRecord) -> dict:
    return {"pruner": record.pruner, "ratio": record.ratio, "workflow": record.workflow,
            "precision": record.precision}


def test_floor_failure_is_marked_and_table_fits_100_columns(real_records):
    records = dict(real_records)
    victim = next(iter(records.values()))
    # a floor above what it scored
    records[victim.case_id] = replace(victim, min_accuracy=victim.accuracy + 0.01)
    lines = summary_lines(records)
    assert all(len(line) <= WIDTH for line, _ in lines)
    failed = [line for line, flagged in lines if flagged]
    assert len(failed) == 1 and failed[0].startswith(label(info_of(victim)))
    assert " FAIL" in failed[0]
    other = next(r for k, r in records.items() if k != victim.case_id)
    passed = [line for line, _ in lines if line.startswith(label(info_of(other)))]
    assert passed and " ok" in passed[0]


def test_long_case_labels_still_fit(real_records):
    records = {}
    for case_id, record in real_records.items():
        # the widest pruner, workflow and precision names there are; a 12.3% noise figure
        p50 = record.p50_ms
        records[case_id] = replace(record, pruner="l1-global", ratio=0.123456,
                                   workflow="torch-trt", blocks=()).with_facts(
            p50_ci_ms=[p50 * (1 - 0.123), p50 * (1 + 0.123)])
    verdicts = {case_id: "not significant: latency,p99" for case_id in records}
    lines = summary_lines(records, verdicts)
    assert lines and all(len(line) <= WIDTH for line, _ in lines)
    assert any("±12.3%" in line for line, _ in lines)


def test_nothing_timed_gives_no_table():
    untimed = CaseRecord.from_benchmark({"stats": {}, "extra_info": {"case_id": "x",
                                                                      "accuracy": 0.9}})
    assert summary_lines({"x": untimed}) == []
