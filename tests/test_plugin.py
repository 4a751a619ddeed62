"""The plugin end to end through real pytest runs (pytester): ids, -k, options, errors, floors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SMOKE


def collected(result: pytest.RunResult) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.outlines
            if line.startswith("test_matrix.py::test_inference[")]


def test_ids_carry_one_token_per_axis(bench_pytester):
    result = bench_pytester.runpytest("--collect-only", "-q")
    ids = collected(result)
    assert "shapes_resnet-group0.2-ort-int8-bs32" in ids
    assert "shapes_resnet-none-torch-fp32-bs32" in ids
    assert len(ids) == 8  # 1 model x 2 pruners x 2 workflows x 2 precisions x 1 batch size


@pytest.mark.parametrize(("expr", "check"), [
    ("int8", lambda i: "-int8-" in i),
    ("ort and int8", lambda i: "-ort-int8-" in i),
    ("group", lambda i: "-group0.2-" in i),
])
def test_k_selects_exactly_one_axis_value(bench_pytester, expr, check):
    all_ids = collected(bench_pytester.runpytest("--collect-only", "-q"))
    ids = collected(bench_pytester.runpytest("--collect-only", "-q", "-k", expr))
    assert ids and all(check(i) for i in ids)
    assert sorted(ids) == sorted(i for i in all_ids if check(i))


def test_command_line_beats_ini_beats_pyproject(bench_pytester):
    bench_pytester.makepyprojecttoml(
        '[tool.pqbench]\nprecisions = ["fp32"]\nbatch_sizes = [4, 8]\nworkflows = ["torch"]\n')
    ids = collected(bench_pytester.runpytest("--collect-only", "-q"))
    assert {i.rsplit("-", 1)[1] for i in ids} == {"bs4", "bs8"}
    assert all("-torch-fp32-" in i for i in ids)
    bench_pytester.makeini("[pytest]\npqbench_batch_sizes = 2\n")
    ids = collected(bench_pytester.runpytest("--collect-only", "-q"))
    assert {i.rsplit("-", 1)[1] for i in ids} == {"bs2"}
    ids = collected(bench_pytester.runpytest("--collect-only", "-q", "--pqbench-batch-sizes=16"))
    assert {i.rsplit("-", 1)[1] for i in ids} == {"bs16"}


@pytest.mark.parametrize(("option", "bad", "valid"), [
    ("--pqbench-models", "resnet9000", "shapes_resnet"),
    ("--pqbench-pruners", "prune-it-all", "group"),
    ("--pqbench-workflows", "tensorflow", "ort"),
    ("--pqbench-precisions", "int4", "int8"),
])
def test_unknown_name_is_a_usage_error_naming_value_and_choices(bench_pytester, option, bad,
                                                                valid):
    result = bench_pytester.runpytest("--collect-only", f"{option}={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert repr(bad) in err and valid in err


def test_bad_batch_size_and_ratio_are_usage_errors(bench_pytester):
    result = bench_pytester.runpytest("--collect-only", "--pqbench-batch-sizes=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "batch size 0" in result.stderr.str()
    result = bench_pytester.runpytest("--collect-only", "--pqbench-pruners=group1.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "outside [0, 1)" in result.stderr.str()


def test_unsupported_combination_is_skipped_with_reason(bench_pytester):
    result = bench_pytester.runpytest("-rs", "-q", "-k", "torch and int8", "--pqbench-pruners=none")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*no INT8 kernels*"])


def test_run_records_documented_fields_and_floor_passes(bench_pytester, tmp_path):
    out = tmp_path / "run.json"
    result = bench_pytester.runpytest("-q", "--pqbench-pruners=none", "--pqbench-workflows=ort",
                                      "--pqbench-precisions=fp32,int8", f"--benchmark-json={out}",
                                      *SMOKE)
    result.assert_outcomes(passed=2)
    run = json.loads(out.read_text())
    info = {b["extra_info"]["case_id"]: b["extra_info"] for b in run["benchmarks"]}
    int8 = info["shapes_resnet-none-ort-int8-bs32"]
    for field in ("model", "dataset", "pruner", "ratio", "workflow", "precision", "batch_size",
                  "threads", "accuracy", "params", "macs", "model_bytes", "prep_seconds",
                  "versions", "p50_ms", "precision_engaged"):
        assert field in int8, field
    assert int8["accuracy"] >= 0.9
    assert int8["precision_engaged"] > 0.9
    # INT8 weights take a quarter of the bytes: the file run must be smaller than FP32's.
    assert int8["model_bytes"] < 0.5 * info["shapes_resnet-none-ort-fp32-bs32"]["model_bytes"]
    assert {"torch", "onnxruntime", "torch_pruning"} <= set(int8["versions"])
    assert run["benchmarks"][0]["stats"]["data"], "raw per-round samples must be kept"


def test_floor_failure_names_case_accuracy_and_floor(bench_pytester):
    bench_pytester.makepyfile(test_floor=(
        "import pytest\n"
        "@pytest.mark.pqbench_floor(min_accuracy=1.5)\n"
        "def test_inference(pq_case, pq_engine, pq_data, pq_accuracy, pq_timer,"
        " pq_assert_floor, benchmark):\n"
        "    pq_timer(benchmark, pq_engine, pq_data.batch(pq_case.batch_size))\n"
        "    pq_assert_floor(pq_case, pq_accuracy)\n"))
    result = bench_pytester.runpytest("test_floor.py", "-q", "--pqbench-pruners=none",
                                      "--pqbench-workflows=ort", "--pqbench-precisions=fp32",
                                      "--benchmark-json=floor.json", *SMOKE)
    result.assert_outcomes(failed=1)
    # the timing was recorded before the floor failed, with the accuracy the message names
    info = json.loads((bench_pytester.path / "floor.json").read_text())["benchmarks"][0]
    accuracy = info["extra_info"]["accuracy"]
    result.stdout.fnmatch_lines(
        [f"*shapes_resnet-none-ort-fp32-bs32: top1 {accuracy:.4f} below the absolute floor "
         "min_accuracy=1.5000*"])


def test_max_drop_from_pyproject_fails_pruned_case_without_recovery(bench_pytester):
    bench_pytester.makepyprojecttoml(
        '[tool.pqbench]\nfloors = {shapes_resnet = {max_drop = 0.0}}\n')
    result = bench_pytester.runpytest("-q", "--pqbench-pruners=group0.5",
                                      "--pqbench-workflows=torch", "--pqbench-precisions=fp32",
                                      *SMOKE)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*exceeds max_drop=0.0000*"])


def test_pqbench_list_prints_cases_and_skip_reasons(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest_pqbench.cli", "list", "--config",
                           str(tmp_path / "none.toml"), "--workflows", "torch,ort",
                           "--precisions", "fp32,int8"], capture_output=True, text=True,
                          check=True)
    lines = proc.stdout.splitlines()
    assert any(line.startswith("shapes_resnet-none-ort-int8-bs32") and "runs" in line
               for line in lines)
    assert any("shapes_resnet-none-torch-int8-bs32" in line and "SKIP" in line for line in lines)
    assert lines[-1].startswith("8 cases, 6 run here, 2 skipped")


# ---- options pytest-benchmark also has (issue 16) -----------------------------------------------
def test_benchmark_min_rounds_is_taken_over_and_both_given_is_an_error(bench_pytester,
                                                                        tmp_path):
    """pqbench times its cases in pedantic blocks, where pytest-benchmark's --benchmark-min-rounds
    would be ignored silently: alone it sets pqbench's minimum, with --pqbench-min-rounds it is
    a usage error naming both."""
    args = [a for a in SMOKE if not a.startswith("--pqbench-min-rounds")]
    out = tmp_path / "run.json"
    result = bench_pytester.runpytest(*args, "-k", "none-torch-fp32", "--pqbench-threads=1",
                                      "--benchmark-min-rounds=41", f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    (case,) = [b for b in json.loads(out.read_text())["benchmarks"] if "case_id" in b["extra_info"]]
    assert case["extra_info"]["min_rounds"] == 41 and case["extra_info"]["rounds"] >= 41
    both = bench_pytester.runpytest("--collect-only", "--benchmark-min-rounds=41",
                                    "--pqbench-min-rounds=7")
    assert both.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-min-rounds and --pqbench-min-rounds both given" in both.stderr.str()


def test_benchmark_options_pqbench_ignores_are_named_in_a_warning(bench_pytester):
    result = bench_pytester.runpytest(*SMOKE, "-k", "none-torch-fp32", "--pqbench-threads=1",
                                      "--benchmark-min-time=0.5", "--benchmark-warmup=on")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*WARNING --benchmark-min-time does not apply to pqbench cases*use --pqbench-min-time*",
        "*WARNING --benchmark-warmup does not apply to pqbench cases*--pqbench-warmup-rounds*"])


@pytest.mark.parametrize(("files", "args"), [
    ({"pyproject": '[tool.pytest.ini_options]\npqbench_modles = "shapes_resnet"\n'}, []),
    ({"setup.cfg": "[tool:pytest]\npqbench_modles = shapes_resnet\n"}, []),
    ({}, ["-o", "pqbench_modles=shapes_resnet"]),
])
def test_a_mistyped_ini_key_is_an_error_wherever_pytest_reads_it(bench_pytester, files, args):
    """The keys are read from the file pytest chose (config.inipath) and from -o, not from
    pytest's private storage."""
    if "pyproject" in files:
        bench_pytester.makepyprojecttoml(files["pyproject"])
    if "setup.cfg" in files:
        bench_pytester.makefile(".cfg", setup=files["setup.cfg"])
    result = bench_pytester.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown key(s) ['pqbench_modles']" in result.stderr.str()
    assert "pqbench_models" in result.stderr.str()
