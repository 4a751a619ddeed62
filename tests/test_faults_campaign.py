"""Issue 13's fault campaign, one class at a time, through real pytest runs and real files:
training that depends on the clock, NaN / negative / mistyped values in runs, results lost at the
last step, cache damage that never heals, bad settings, unclear messages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from pqbench_runs import produce_real_run, write

from pytest_pqbench.cache import MANIFEST, ArtefactCache, CacheError, CacheStats, read_build_log
from pytest_pqbench.cli import main as pqbench
from pytest_pqbench.datasets.synthetic import shapes_dataset
from pytest_pqbench.errors import BuildTimeout, TimeLimitExceeded
from pytest_pqbench.models import ModelSpec, load_model
from pytest_pqbench.models.classifiers import ResNetSmall
from pytest_pqbench.models.training import TrainingCut, train_classifier
from pytest_pqbench.results.load import read_run
from pytest_pqbench.stages.limits import build_time_limit, time_limit
from tests.conftest import SMOKE


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return produce_real_run(tmp_path_factory)


def pqbench_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_pqbench.cli", *args],
                          capture_output=True, text=True, timeout=300)


# ---- 1. a trained model is a function of its cache key, never of the clock ----------------------
TINY = {"seed": 3, "size": 16, "train": 256, "evaluation": 64, "calibration": 8}


def tiny_spec(**train_options) -> ModelSpec:
    return ModelSpec(name="tiny_resnet", task="classify", input_shape=(3, 16, 16),
                     builder=lambda n: ResNetSmall(n, widths=(8, 16)), default_dataset="shapes",
                     trainer=train_classifier, train_options=train_options)


def test_training_is_the_same_under_load_and_a_time_cap_caches_nothing(tmp_path):
    data = shapes_dataset(**TINY)
    options = {"epochs": 2, "target": 1.01, "batch_size": 64}
    quiet, _ = load_model(tiny_spec(**options), data, ArtefactCache(tmp_path / "a"))
    # the same training while two processes keep both cores busy: the clock must not matter
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded, info = load_model(tiny_spec(**options), data, ArtefactCache(tmp_path / "b"))
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    assert info["epochs"] == 2
    for (name, a), b in zip(quiet.state_dict().items(), loaded.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name

    # a time cap that stops training: an error saying so, and nothing in the cache
    cache = ArtefactCache(tmp_path / "c")
    with pytest.raises(TrainingCut, match=r"time budget \(1e-09 s\) after epoch 1 of 2.*"
                                          "not cached"):
        load_model(tiny_spec(**options, time_budget_s=1e-9), data, cache)
    assert not [p for p in (tmp_path / "c" / "trained").iterdir() if p.is_dir()]
    assert read_build_log(tmp_path / "c") == []


# ---- 2. non-finite, negative or mistyped values in a run are input errors -----------------------
def damaged(run: dict, where: str, field: str, value) -> dict:
    out = json.loads(json.dumps(run))
    bench = out["benchmarks"][0]
    (bench["stats"] if where == "stats" else bench["extra_info"])[field] = value
    return out


@pytest.mark.parametrize(("where", "field", "value", "says"), [
    ("extra_info", "accuracy", float("nan"), "extra_info.accuracy is nan, not a finite number"),
    ("extra_info", "p50_ms", -1.5, "extra_info.p50_ms is -1.5, negative"),
    ("extra_info", "p99_ms", float("inf"), "extra_info.p99_ms is inf"),
    ("extra_info", "model_bytes", "big", "extra_info.model_bytes is str 'big', not a number"),
    ("extra_info", "macs", None, "extra_info.macs is NoneType None"),
    ("stats", "median", float("nan"), "stats.median is nan"),
    ("stats", "data", [0.001, -0.002], "stats.data[1] is -0.002, negative"),
])
def test_bad_values_in_a_run_are_input_errors(real_run, tmp_path, capsys, where, field, value,
                                              says):
    good = write(tmp_path / "good.json", real_run)
    bad = write(tmp_path / "bad.json", damaged(real_run, where, field, value))
    case = real_run["benchmarks"][0]["extra_info"]["case_id"]
    for command in (["compare", str(good), str(bad)], ["compare", str(bad), str(good)],
                    ["report", str(bad)], ["merge", str(bad), "-o", str(tmp_path / "m.json")]):
        assert pqbench(command) == 2, command  # never 0 (a pass), never 1 (a regression)
        assert f"{bad}: case {case}: {says}" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_compare_with_a_nan_run_exits_2_from_the_console_script(real_run, tmp_path):
    good = write(tmp_path / "good.json", real_run)
    nan = write(tmp_path / "nan.json", damaged(real_run, "extra_info", "accuracy", float("nan")))
    proc = pqbench_cli("compare", str(good), str(nan))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "extra_info.accuracy is nan" in proc.stderr and "Traceback" not in proc.stderr


def test_accuracy_not_measured_may_be_nan(real_run, tmp_path):
    run = damaged(real_run, "extra_info", "accuracy", float("nan"))
    run["benchmarks"][0]["extra_info"]["accuracy_metric"] = "not measured"
    assert read_run(write(tmp_path / "build-only.json", run)).cases


def test_gate_against_a_nan_baseline_is_a_usage_error(bench_pytester, real_run, tmp_path):
    nan = write(tmp_path / "nan.json", damaged(real_run, "extra_info", "accuracy", float("nan")))
    result = bench_pytester.runpytest("--collect-only", f"--pqbench-compare={nan}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "extra_info.accuracy is nan" in result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# ---- 3. results are not lost at the last step -------------------------------------------------
TIMED = ("def test_a(benchmark):\n    benchmark(sum, [1, 2])\n"
         "def test_b(benchmark):\n    benchmark(sum, [3])\n")


def test_benchmark_json_naming_a_directory_is_refused_before_running(pytester, tmp_path):
    pytester.makepyfile(test_timed=TIMED)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--benchmark-json={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is a directory" in result.stderr.str()
    assert "passed" not in result.stdout.str()


def test_benchmark_json_equal_to_the_baseline_is_refused(bench_pytester, real_run, tmp_path):
    baseline = write(tmp_path / "base.json", real_run)
    before = baseline.read_bytes()
    result = bench_pytester.runpytest("--collect-only", f"--pqbench-compare={baseline}",
                                      f"--benchmark-json={baseline}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is the --pqbench-compare baseline" in result.stderr.str()
    assert baseline.read_bytes() == before


def test_sigterm_keeps_the_finished_cases(tmp_path):
    (tmp_path / "test_stop.py").write_text(TIMED + (
        "def test_c():\n"
        "    import pathlib, time\n"
        "    pathlib.Path('started').write_text('')\n"
        "    time.sleep(120)\n"))
    out = tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "test_stop.py", f"--benchmark-json={out}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what CI runners and `timeout` send
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, stdout
    saved = json.loads((tmp_path / "run.interrupted.json").read_text())
    assert [b["name"] for b in saved["benchmarks"]] == ["test_a", "test_b"]
    assert "pqbench: run stopped (SIGTERM)" in stdout


# ---- 4. cache damage is detected, reported once, and healed (or named) ------------------------
def blob(d: Path) -> dict:
    (d / "model.pt").write_bytes(b"weights" * 100)
    return {}


@pytest.mark.parametrize("damage", ["entry is a file", "files is a list", "files is empty",
                                    "manifest is a list"])
def test_damaged_entry_is_rebuilt_once_never_loaded(tmp_path, damage):
    cache = ArtefactCache(tmp_path)
    entry = cache.get_or_build("thing", "k", blob)
    manifest = json.loads((entry.path / MANIFEST).read_text())
    if damage == "entry is a file":
        shutil.rmtree(entry.path)
        entry.path.write_text("not a folder")
    elif damage == "files is a list":
        (entry.path / MANIFEST).write_text(json.dumps({**manifest,
                                                       "files": list(manifest["files"])}))
    elif damage == "files is empty":  # and the weights swapped: no hash would catch it
        (entry.path / "model.pt").write_bytes(b"evil")
        (entry.path / MANIFEST).write_text(json.dumps({**manifest, "files": {}}))
    else:
        (entry.path / MANIFEST).write_text("[]")
    fresh = ArtefactCache(tmp_path)
    with pytest.warns(UserWarning, match="rebuilding corrupt entry") as caught:
        again = fresh.get_or_build("thing", "k", blob)
    assert len(caught) == 1
    assert not again.hit and again.file("model.pt").read_bytes() == b"weights" * 100
    assert fresh.stats.rebuilt_corrupt == 1
    assert fresh.get_or_build("thing", "k", blob).hit


def test_entry_that_cannot_be_replaced_fails_naming_its_path(tmp_path):
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed (needed to deny the removal even to root)")
    cache = ArtefactCache(tmp_path)
    entry = cache.get_or_build("thing", "k", blob)
    (entry.path / "model.pt").write_bytes(b"corrupt")
    # immutable: its files cannot be removed, even by root (a read-only mode would not stop root)
    if subprocess.run(["chattr", "+i", str(entry.path)], capture_output=True).returncode:
        pytest.skip("this file system does not support chattr +i")
    try:
        fresh = ArtefactCache(tmp_path)
        with pytest.warns(UserWarning, match="rebuilding corrupt entry") as caught:
            with pytest.raises(CacheError, match=f"corrupt entry {entry.path} .*cannot be "
                                                 "removed.*remove it by hand"):
                fresh.get_or_build("thing", "k", blob)
        assert len(caught) == 1
        with pytest.raises(CacheError, match=str(entry.path)):  # again: no second warning
            fresh.get_or_build("thing", "k", blob)
        assert fresh.stats.rebuilt_corrupt == 0
    finally:
        subprocess.run(["chattr", "-i", str(entry.path)], check=True)


def test_build_folders_of_killed_builders_are_removed_when_stale_and_unlocked(tmp_path):
    kind = tmp_path / "onnx"
    kind.mkdir()
    old = time.time() - 3600
    stale, fresh, locked = (kind / f".{key}.x1.tmp" for key in ("aa", "bb", "cc"))
    for folder in (stale, fresh, locked):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
    for folder in (stale, locked):
        os.utime(folder, (old, old))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom filelock import FileLock\n"
        f"with FileLock({str(kind / 'cc.lock')!r}):\n"
        "    print('locked', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a builder still at work
        with pytest.warns(UserWarning, match="removed 1 build folder"):
            cache = ArtefactCache(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not stale.exists() and fresh.exists() and locked.exists()
    assert cache.stats.stale_removed == 1
    with FileLock(str(kind / "bb.lock"), timeout=0):  # our own lock: released afterwards
        pass


def test_hit_rate_with_nothing_looked_up_is_unknown_not_100_percent():
    assert CacheStats().hit_rate is None and CacheStats().hit_rate_text == "-"
    assert CacheStats(hits=1, misses=3).hit_rate_text == "25%"


def test_entry_replaced_by_a_file_heals_in_a_real_run(bench_pytester, tmp_path, monkeypatch):
    from tests.helpers import seeded_cache

    root = seeded_cache(tmp_path / "cache")
    monkeypatch.setenv("PQBENCH_CACHE_DIR", str(root))
    args = ["-q", "--pqbench-pruners=none", "--pqbench-workflows=ort",
            "--pqbench-precisions=fp32", *SMOKE]
    bench_pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    (entry,) = (p for p in (root / "onnx").iterdir() if p.is_dir())
    shutil.rmtree(entry)
    entry.write_text("a file where the entry folder was")
    with (root / "builds.log").open("a") as log:  # a line cut short by a killed writer
        log.write('{"kind": "onnx", "key": "cut sh')
    result = bench_pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    out = result.stdout.str() + result.stderr.str()  # the warning: summary or stderr
    assert "NotADirectoryError" not in out
    assert out.count("rebuilding corrupt entry") == 1
    assert f"rebuilding corrupt entry: {entry}: not a folder" in out
    result.stdout.fnmatch_lines(["*1 corrupt entries rebuilt*"])
    assert entry.is_dir()


# ---- 5. bad settings: one usage error at start-up naming the value and the valid range ---------
@pytest.mark.parametrize(("args", "pyproject", "expected"), [
    (["--pqbench-device=tpu"], "", ["'tpu'", "auto, cpu, cuda, cuda:N"]),
    (["--pqbench-build-timeout=-1"], "", ["'build_timeout' must be >= 0 (0: no limit), got -1"]),
    (["--pqbench-deadline-ms=-5"], "", ["'deadline_ms' must be >= 0", "got -5"]),
    (["--pqbench-min-time=-1"], "", ["'min_time' must be >= 0", "got -1"]),
    (["--pqbench-seed=1.5"], "", ["'seed'", "'1.5'", "expected an integer"]),
    ([], "seed = 1.5", ["'seed'", "1.5", "expected an integer"]),
    ([], 'distill = "maybe"', ["'distill'", "'maybe'", "true", "no"]),
    ([], 'floors = { shapes_resnet = { min_accuracy = "high" } }',
     ["floors.shapes_resnet.min_accuracy", "'high'", "[0, 1]"]),
    ([], "floors = { shapes_resnet = { max_drop = 3 } }", ["max_drop", "3", "[0, 1]"]),
    (["--pqbench-fail-on=abc"], "", ["fail_on", "unknown fail-on metric 'abc'", "latency"]),
    (["--pqbench-pruners=group-0.1"], "", ["ratio '-0.1' in 'group-0.1' is invalid", "[0, 1)"]),
])
def test_bad_settings_are_one_usage_error_at_start_up(bench_pytester, args, pyproject, expected):
    if pyproject:
        bench_pytester.makepyprojecttoml(f"[tool.pqbench]\n{pyproject}\n")
    result = bench_pytester.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert all(text in err for text in expected), err
    assert "Traceback" not in err and "unknown pruner" not in err


# ---- 6. clear messages; limits on any stage -----------------------------------------------------
def test_report_or_merge_into_a_directory_is_exit_2_not_a_traceback(real_run, tmp_path, capsys):
    good = write(tmp_path / "good.json", real_run)
    for command in (["report", str(good), "-o", str(tmp_path)],
                    ["report", str(good), "--plot", str(tmp_path)],
                    ["merge", str(good), "-o", str(tmp_path)]):
        assert pqbench(command) == 2, command
        assert "is a directory" in capsys.readouterr().err
    proc = pqbench_cli("report", str(good), "-o", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_time_limit_nests_and_names_what_timed_out():
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match=r"^evaluation of case-x timed out after 0.3 s$"):
        with time_limit(5, "outer"):
            with time_limit(0.3, "evaluation of case-x"):
                time.sleep(5)
    # an inner limit longer than the outer one never extends it
    with pytest.raises(BuildTimeout, match="case-y: build timed out after 0.3 s"):
        with build_time_limit(0.3, "case-y"):
            with time_limit(10, "timing of case-y"):
                time.sleep(5)
    # the outer limit is re-armed after an inner block ends in time
    with pytest.raises(TimeLimitExceeded, match="outer timed out"):
        with time_limit(0.5, "outer"):
            with time_limit(5, "inner"):
                time.sleep(0.1)
            time.sleep(5)
    assert time.monotonic() - started < 4
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_nan_in_an_onnx_export_names_the_side_that_produced_it(tmp_path):
    """A model whose outputs are NaN is not reported as an 'export mismatch' (issue 13, class 6);
    Builder adds the case id to any workflow error (``while building case ...``)."""
    import numpy as np
    import torch
    from torch import nn

    from pytest_pqbench.errors import NonFiniteOutput
    from pytest_pqbench.workflows.onnx_export import check_export_parity, export_onnx

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    x = np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32)
    export_onnx(model, x, tmp_path / "m.onnx")
    with pytest.raises(NonFiniteOutput, match="the torch model itself produced 4 NaN"):
        check_export_parity(model, tmp_path / "m.onnx", x)
