"""Scaling out, through real pytest runs: pytest-split groups, ``pqbench merge``, the build phase
under pytest-xdist with the shared, locked artefact cache."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pytest_pqbench.cache import read_build_log
from pytest_pqbench.case import PrunerSpec, expand
from pytest_pqbench.cli import InputError, main
from pytest_pqbench.config import Settings
from pytest_pqbench.plugin.scale import estimate_seconds
from pytest_pqbench.results.load import read_run
from pytest_pqbench.results.merge import merge_runs
from tests.conftest import SMOKE
from tests.helpers import seeded_cache

# 4 timed cases that share a trained model and an ONNX export; fp32 only, so no calibration
MATRIX = ["--pqbench-pruners=none", "--pqbench-workflows=torch,ort",
          "--pqbench-precisions=fp32", "--pqbench-batch-sizes=4,8"]


def selected(result: pytest.RunResult) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.outlines
            if line.startswith("test_matrix.py::test_inference[")]


def case_ids(path: Path) -> list[str]:
    return [b["extra_info"]["case_id"] for b in json.loads(path.read_text())["benchmarks"]]


# ---- pytest-split ------------------------------------------------------------------------------
def test_splits_partition_the_cases_and_merge_equals_one_unsplit_run(bench_pytester, tmp_path):
    everything = selected(bench_pytester.runpytest("--collect-only", "-q", *MATRIX))
    assert len(everything) == 4
    for algorithm in ("duration_based_chunks", "least_duration"):
        groups = []
        for group in (1, 2, 3):
            result = bench_pytester.runpytest("--collect-only", "-q", *MATRIX, "--splits=3",
                                              f"--group={group}",
                                              f"--splitting-algorithm={algorithm}")
            assert result.ret == 0  # an empty group (possible with chunks) is not an error
            groups.append(selected(result))
            # pytest-split saw our estimates: no stored durations, yet cases are weighed
            result.stdout.fnmatch_lines(["*[[]pqbench[]] pytest-split: estimated durations*"])
        assert sorted(sum(groups, [])) == sorted(everything), algorithm  # every case once

    runs = []
    for group in (1, 2, 3):
        out = tmp_path / f"group{group}.json"
        result = bench_pytester.runpytest("-q", *MATRIX, *SMOKE, "--splits=3",
                                          f"--group={group}", "--splitting-algorithm",
                                          "least_duration", f"--benchmark-json={out}")
        assert result.ret == 0
        assert json.loads(out.read_text())["pqbench"]["split"] == {"splits": 3, "group": group}
        runs.append(str(out))
    whole = tmp_path / "whole.json"
    bench_pytester.runpytest("-q", *MATRIX, *SMOKE, f"--benchmark-json={whole}").assert_outcomes(
        passed=4)

    merged = tmp_path / "merged.json"
    assert main(["merge", *reversed(runs), "-o", str(merged)]) == 0
    assert sorted(case_ids(merged)) == sorted(case_ids(whole))
    data = json.loads(merged.read_text())
    assert [m["group"] for m in data["pqbench"]["merged_from"]] == [1, 2, 3]
    assert data["pqbench"]["split"] is None
    # ratio metrics need each case's baseline (torch fp32, same batch size), now all in one run
    info = {b["extra_info"]["case_id"]: b["extra_info"] for b in data["benchmarks"]}
    assert "latency_speedup" in info["shapes_resnet-none-ort-fp32-bs8"]
    read_run(merged)  # valid for pqbench report / compare ...
    assert main(["report", str(merged), "--format", "csv", "-o", str(tmp_path / "r.csv")]) == 0
    assert "shapes_resnet-none-ort-fp32-bs8" in (tmp_path / "r.csv").read_text()
    # the same engines (the merged groups' artefacts are the whole run's): a paired A/A, which
    # the gate must pass
    assert main(["compare", str(whole), str(merged), "--format", "json",
                 "--timing-profile", "smoke"]) == 0
    # ... and for pytest-benchmark's own reader
    proc = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()",
                           "compare", str(merged)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "shapes_resnet-none-ort-fp32-bs8" in proc.stdout


def test_estimates_weigh_build_cost_and_share_common_artefacts():
    settings = Settings.resolve({"workflows": "torch,ort", "precisions": "fp32,int8",
                                 "pruners": "none,group0.2", "batch_sizes": "1,32"}, {}, {})
    cases = [c for c in settings.cases() if not (c.workflow == "torch" and c.precision == "int8")]
    est = estimate_seconds(cases, settings)
    by = {c.id: est[c.id] for c in cases}
    assert by["shapes_resnet-none-ort-int8-bs32"] > by["shapes_resnet-none-ort-fp32-bs32"]
    assert by["shapes_resnet-none-ort-fp32-bs32"] > by["shapes_resnet-none-torch-fp32-bs32"]
    assert by["shapes_resnet-group0.2-ort-fp32-bs1"] > by["shapes_resnet-none-ort-fp32-bs1"]
    # an artefact shared by more cases costs each of them less
    one = [c for c in cases if c.batch_size == 1]
    alone = estimate_seconds(one, settings)
    assert alone["shapes_resnet-none-ort-int8-bs1"] > by["shapes_resnet-none-ort-int8-bs1"]
    build_only = Settings.resolve({"build_only": "true", "workflows": "torch"}, {}, {})
    only = expand(build_only.model_axis(), [PrunerSpec("none", 0.0)], ["torch"], ["fp32"], [32])
    assert estimate_seconds(only, build_only)[only[0].id] < 1.0  # no timing, no evaluation


def test_estimates_read_each_workflows_declared_cost_and_default_a_user_workflow():
    from pytest_pqbench.case import Case
    from pytest_pqbench.workflows import WORKFLOWS, BuildCost
    from pytest_pqbench.workflows.base import DEFAULT_COST

    class Declared:
        name, precisions, cost = "declared-wf", frozenset({"fp32", "int8"}), BuildCost(
            build_s=500.0, export_s=50.0, calibrate_s={"int8": 30.0})

    class Bare:
        name, precisions = "bare-wf", frozenset({"fp32", "int8"})

    settings = Settings.resolve({"workflows": "torch", "pruners": "none"}, {}, {})
    for wf in (Declared(), Bare()):
        WORKFLOWS.register(wf.name, wf)
    try:
        cases = [Case("shapes_resnet", "shapes", PrunerSpec("none", fixed=True), wf, p, 8)
                 for wf in ("declared-wf", "bare-wf", "torch") for p in ("fp32", "int8")]
        est = estimate_seconds(cases, settings)
    finally:
        WORKFLOWS.unregister("declared-wf")
        WORKFLOWS.unregister("bare-wf")
    by = {(c.workflow, c.precision): est[c.id] for c in cases}
    timing = by[("torch", "fp32")] - 0.2  # torch declares 0.2 s of build
    assert by[("declared-wf", "fp32")] == pytest.approx(timing + 500.0 + 50.0 / 2)
    assert by[("declared-wf", "int8")] - by[("declared-wf", "fp32")] == pytest.approx(30.0)
    assert by[("bare-wf", "fp32")] == pytest.approx(timing + DEFAULT_COST.build_s)
    assert by[("bare-wf", "int8")] - by[("bare-wf", "fp32")] == pytest.approx(
        DEFAULT_COST.calibrate_s["int8"])


# ---- merge refusals -----------------------------------------------------------------------------
def _run_file(tmp_path: Path, name: str, **changes) -> Path:
    data = {"machine_info": {"node": "a", "pqbench": {"gpu": None, "cpu_model": "cpu-x",
                                                      "versions": {"torch": "2.13.0"}}},
            "commit_info": {"id": "abc123"}, "datetime": "2025-01-01T00:00:00",
            "version": "5.2.3",
            "pqbench": {"schema_version": 1, "settings": {"seed": 0}, "split": None,
                        "cache_hits": 1, "cache_misses": 1},
            "benchmarks": [{"name": name, "fullname": name, "stats": {"median": 1.0},
                            "extra_info": {"case_id": name}}]}
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = value
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(("change", "message"), [
    ({"commit_info__id": "def456"}, "different commits"),
    ({"pqbench__settings": {"seed": 1}}, "settings differs"),
    ({"machine_info__pqbench__versions": {"torch": "2.12.0"}}, "versions differs"),
    ({"machine_info__pqbench__cpu_model": "cpu-y"}, "accelerator differs"),
])
def test_merge_refuses_other_commit_or_configuration_unless_forced(tmp_path, capsys, change,
                                                                   message):
    a = _run_file(tmp_path, "a")
    b = _run_file(tmp_path, "b", **change)
    out = tmp_path / "merged.json"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "--force" in err
    assert not out.exists()
    assert main(["merge", str(a), str(b), "-o", str(out), "--force"]) == 0
    assert case_ids(out) == ["a", "b"]


def test_merge_refuses_repeated_case_and_never_overwrites_an_input(tmp_path, capsys):
    a = _run_file(tmp_path, "a")
    again = tmp_path / "again.json"
    shutil.copy(a, again)
    assert main(["merge", str(a), str(again), "-o", str(tmp_path / "m.json")]) == 2
    assert "case a is in both" in capsys.readouterr().err
    before = a.read_bytes()
    assert main(["merge", str(a), "-o", str(a)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert a.read_bytes() == before
    assert main(["merge", str(tmp_path / "nope.json"), "-o", str(tmp_path / "m.json")]) == 2


def test_merge_warns_about_missing_groups(tmp_path):
    runs = [read_run(_run_file(tmp_path, name, pqbench__split={"splits": 3, "group": g}))
            for name, g in (("a", 1), ("b", 3))]
    merged, warnings = merge_runs(runs)
    assert any("[2] of 3 are missing" in w for w in warnings)
    assert merged["pqbench"]["cache_hits"] == 2
    with pytest.raises(InputError, match="appear in more than one run"):
        merge_runs([runs[0], read_run(_run_file(tmp_path, "c",
                                                pqbench__split={"splits": 3, "group": 1}))])


# ---- build phase under xdist ------------------------------------------------------------------
def test_build_only_under_xdist_builds_each_artefact_once(bench_pytester, tmp_path, monkeypatch):
    root = seeded_cache(tmp_path / "cache")
    monkeypatch.setenv("PQBENCH_CACHE_DIR", str(root))
    # ort fp32 + int8 of two pruned models at two batch sizes: 8 cases, 4 artefacts, each
    # needed by cases that the two workers share out between them
    result = bench_pytester.runpytest("-n", "2", "--pqbench-build-only",
                                      "--pqbench-pruners=none,group0.2",
                                      "--pqbench-workflows=ort", "--pqbench-precisions=fp32,int8",
                                      "--pqbench-batch-sizes=8,32", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    builds = read_build_log(root)
    per_key = Counter((b["kind"], b["key"]) for b in builds)
    assert all(n == 1 for n in per_key.values()), per_key
    assert Counter(kind for kind, _ in per_key) == {"onnx": 2, "ort-int8": 2}
    assert {b["worker"] for b in builds} <= {"gw0", "gw1"}
    # the controller sums what the workers did
    result.stdout.fnmatch_lines(["*artefact cache over 2 workers: * 4 builds*"])
    assert not re.search(r"Benchmark fixture was not used", result.stdout.str())

    # a second build-only run finds everything: 100% hits, nothing built
    again = bench_pytester.runpytest("--pqbench-build-only", "--pqbench-pruners=none,group0.2",
                                     "--pqbench-workflows=ort", "--pqbench-precisions=fp32,int8",
                                     "--pqbench-batch-sizes=8,32", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=8)
    again.stdout.fnmatch_lines(["*0 builds (hit rate 100%)*"])
    assert len(read_build_log(root)) == len(builds)
