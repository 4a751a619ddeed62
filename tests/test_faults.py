"""Holding up, through real pytest runs: builds that crash, hang or give NaN fail alone; a corrupt
cache entry is rebuilt; result files survive interruption; bad input gets one clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_pqbench.cache import file_sha256, read_build_log
from pytest_pqbench.errors import BuildTimeout
from pytest_pqbench.plugin.faults import ResultFile, write_new
from pytest_pqbench.stages.limits import build_time_limit
from pytest_pqbench.workflows import WORKFLOWS
from tests.conftest import SMOKE
from tests.helpers import seeded_cache

# Users' workflows, registered from the run's conftest.py as a user would: each builds a real
# eager engine of the pruned model and then misbehaves in one way.
FAULTY_WORKFLOWS = '''
import time

import numpy as np
import torch

from pytest_pqbench.workflows import Engine, register_workflow
from pytest_pqbench.workflows.torch_runtime import torch_runner


class Faulty:
    precisions = frozenset({"fp32"})

    def __init__(self, name, fault):
        self.name, self.fault = name, fault

    def check(self, precision, device):
        return None if precision == "fp32" else "fp32 only"

    def build(self, model, precision, calibration, example, ctx):
        if self.fault == "raise":
            raise RuntimeError("builder crashed: out of workspace")
        if self.fault == "hang":
            time.sleep(60)
        run = torch_runner(model.eval(), torch.float32, "cpu")

        def engine(batch):
            out = run(batch)
            if self.fault == "nan" or (self.fault == "nan-at-bs8" and len(batch) == 8):
                out = out.copy()
                out[0, 0] = np.nan
            return out

        return Engine(engine, {"provider": "faulty", "build_seconds": 0.0})


for name, fault in [("boom", "raise"), ("hang", "hang"), ("nan", "nan"),
                    ("nanbs8", "nan-at-bs8")]:
    register_workflow(Faulty(name, fault), replace=True)
'''
FAULTY = ("boom", "hang", "nan", "nanbs8")


@pytest.fixture
def faulty_pytester(bench_pytester):
    bench_pytester.makeconftest(FAULTY_WORKFLOWS)
    yield bench_pytester
    for name in FAULTY:  # the registry is process-wide: leave it as it was
        WORKFLOWS.unregister(name)


def case_ids(path: Path) -> list[str]:
    return [b["extra_info"]["case_id"] for b in json.loads(path.read_text())["benchmarks"]]


# ---- a case that fails in build fails alone -----------------------------------------------------
def test_build_that_raises_fails_alone_and_the_json_keeps_the_others(faulty_pytester, tmp_path):
    out = tmp_path / "run.json"
    result = faulty_pytester.runpytest("-q", "--pqbench-pruners=none",
                                       "--pqbench-workflows=torch,boom",
                                       "--pqbench-precisions=fp32", f"--benchmark-json={out}",
                                       *SMOKE)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*shapes_resnet-none-boom-fp32-bs32*",
                                 "*RuntimeError: builder crashed: out of workspace*"])
    assert case_ids(out) == ["shapes_resnet-none-torch-fp32-bs32"]


def test_build_timeout_fails_the_hanging_case_alone(faulty_pytester):
    started = time.monotonic()
    result = faulty_pytester.runpytest("-q", "--pqbench-pruners=none",
                                       "--pqbench-workflows=hang,torch",
                                       "--pqbench-precisions=fp32", "--pqbench-build-timeout=8",
                                       *SMOKE)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*BuildTimeout: shapes_resnet-none-hang-fp32-bs32: build timed "
                                 "out after 8 s (--pqbench-build-timeout)*"])
    assert time.monotonic() - started < 50  # the 60 s sleep was cut short


def test_build_time_limit_interrupts_and_restores_the_handler():
    before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(BuildTimeout, match="case-x: build timed out after 0.2 s"):
        with build_time_limit(0.2, "case-x"):
            time.sleep(5)
    assert time.monotonic() - started < 2
    assert signal.getsignal(signal.SIGALRM) == before
    with build_time_limit(0, "no limit"):
        time.sleep(0.05)


def test_nan_outputs_fail_the_case_with_a_clear_message(faulty_pytester):
    result = faulty_pytester.runpytest("-q", "--pqbench-pruners=none",
                                       "--pqbench-workflows=nan,nanbs8,torch",
                                       "--pqbench-precisions=fp32", "--pqbench-batch-sizes=8",
                                       *SMOKE)
    result.assert_outcomes(passed=1, errors=2)
    # NaN everywhere: caught by the parity check while building
    result.stdout.fnmatch_lines(["*NonFiniteOutput: shapes_resnet-none-nan-fp32-bs8: engine "
                                 "produced 1 NaN/Inf output values on 16 evaluation images*"])
    # NaN only at the case's batch size: caught on the first evaluation batch
    result.stdout.fnmatch_lines(["*NonFiniteOutput: engine produced 1 NaN/Inf output values on "
                                 "evaluation images 0..7*"])


# ---- cache ------------------------------------------------------------------------------------
def test_corrupt_cache_entry_is_rebuilt_with_a_warning_never_loaded(bench_pytester, tmp_path,
                                                                    monkeypatch):
    root = seeded_cache(tmp_path / "cache")
    monkeypatch.setenv("PQBENCH_CACHE_DIR", str(root))
    args = ["-q", "--pqbench-pruners=none", "--pqbench-workflows=ort",
            "--pqbench-precisions=fp32", *SMOKE]
    bench_pytester.runpytest(*args).assert_outcomes(passed=1)
    (entry,) = (p for p in (root / "onnx").iterdir() if p.is_dir())  # not the lock file
    onnx_file = entry / "model.onnx"
    good = tmp_path / "good.onnx"
    good.write_bytes(onnx_file.read_bytes())
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])  # truncated, as by a full disk

    # in a fresh process: a second in-process export would re-import torch modules that
    # pytester unloaded after the first run and trip over their op registrations
    result = bench_pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    # the warning is in the summary, or on stderr when the build ran outside a test's phases
    out = result.stdout.str() + result.stderr.str()
    assert out.count("rebuilding corrupt entry") == 1
    assert "content hash mismatch" in out
    result.stdout.fnmatch_lines(["*1 corrupt entries rebuilt*"])
    # rebuilt to the same model: same outputs on the same input (the exporter's graph need not
    # be byte-identical between a fresh process and one that exported other models before)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(onnx_outputs(onnx_file, x), onnx_outputs(good, x), rtol=1e-4,
                               atol=1e-5)
    assert json.loads((entry / "manifest.json").read_text())["files"]["model.onnx"] == \
        file_sha256(onnx_file)
    onnx_builds = [b for b in read_build_log(root) if b["kind"] == "onnx"]
    assert [b["key"] for b in onnx_builds] == [entry.name, entry.name]


def onnx_outputs(path, x):
    """What ONNX Runtime computes with the model in ``path`` on ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# ---- result files -------------------------------------------------------------------------------
def test_interrupted_run_leaves_the_previous_json_intact(pytester, tmp_path):
    pytester.makepyfile(test_stop=(
        "def test_timed(benchmark):\n"
        "    benchmark(sum, [1, 2, 3])\n"
        "def test_ctrl_c():\n"
        "    raise KeyboardInterrupt\n"))
    out = tmp_path / "run.json"
    out.write_text('{"previous": true}')
    result = pytester.runpytest("-p", "no:cacheprovider", f"--benchmark-json={out}",
                                no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert json.loads(out.read_text()) == {"previous": True}
    partial = tmp_path / "run.interrupted.json"
    assert [b["name"] for b in json.loads(partial.read_text())["benchmarks"]] == ["test_timed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.interrupted.json", "run.json"]
    result.stdout.fnmatch_lines(["*run stopped (interrupted); * left as it was, results of the "
                                 "finished cases in *run.interrupted.json"])


def test_json_is_untouched_until_a_run_completes(pytester, tmp_path):
    """pytest-benchmark alone truncates the file when it parses the command line."""
    pytester.makepyfile(test_one="def test_timed(benchmark):\n    benchmark(sum, [1])\n")
    out = tmp_path / "run.json"
    out.write_text('{"previous": true}')
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only",
                                f"--benchmark-json={out}")
    assert result.ret == 0
    assert out.read_text() == '{"previous": true}'
    pytester.runpytest("-p", "no:cacheprovider", f"--benchmark-json={out}").assert_outcomes(
        passed=1)
    assert json.loads(out.read_text())["benchmarks"][0]["name"] == "test_timed"
    result = pytester.runpytest("-p", "no:cacheprovider",
                                f"--benchmark-json={tmp_path / 'no' / 'run.json'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "directory" in result.stderr.str() and "does not exist" in result.stderr.str()


def test_failed_write_keeps_the_previous_file(tmp_path):
    """pytest-benchmark writes the scratch file; when its write fails half way, the target keeps
    its old content and the half-written scratch file is removed."""
    out = tmp_path / "run.json"
    out.write_text("previous")
    result = ResultFile(out)
    assert result.scratch != out and not result.scratch.exists()
    result.scratch.write_bytes(b'{"half": ')
    result.finish(complete=False)
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    result.scratch.write_bytes(b'{"whole": 1}')
    result.finish(complete=True)
    assert json.loads(out.read_text()) == {"whole": 1} and result.written == out
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_killed_writer_leaves_no_partial_file(tmp_path):
    """A process killed (SIGKILL) in the middle of a write: the target keeps its old content."""
    target = tmp_path / "run.json"
    target.write_text("previous")
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from pytest_pqbench.cache import atomic_write_bytes\n"
        "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(60))\n"
        f"atomic_write_bytes({str(target)!r}, b'x' * 10_000_000)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"  # the data is out, not renamed yet
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert target.read_text() == "previous"
    # what is left is a hidden temporary name that nothing reads
    assert all(p.name.startswith(".run.json.") for p in tmp_path.iterdir() if p != target)


def test_saved_runs_are_never_overwritten(pytester, tmp_path, monkeypatch):
    pytester.makepyfile(test_one="def test_timed(benchmark):\n    benchmark(sum, [1])\n")
    storage = tmp_path / "storage"
    args = ["-p", "no:cacheprovider", "--benchmark-save=base",
            f"--benchmark-storage=file://{storage}"]
    pytester.runpytest(*args).assert_outcomes(passed=1)
    pytester.runpytest(*args).assert_outcomes(passed=1)
    saved = sorted(p.name for p in storage.rglob("*.json"))
    assert saved == ["0001_base.json", "0002_base.json"]
    first = next(storage.rglob("0001_base.json"))
    before = first.read_bytes()
    # a second writer racing for the same number: the name is taken, nothing is replaced
    assert write_new(first, b"{}") is False
    assert first.read_bytes() == before


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "files", "expected"), [
    (["--pqbench-dataset=shapes=/no/such/dir"], {}, ["'/no/such/dir' does not exist"]),
    ([], {"pyproject": '[tool.pqbench]\nmodles = ["shapes_resnet"]\n'},
     ["unknown key(s) ['modles']", "models"]),
    ([], {"ini": "[pytest]\npqbench_modles = shapes_resnet\n"},
     ["unknown key(s) ['pqbench_modles']", "pqbench_models"]),
    (["--pqbench-pruners=group1.0"], {}, ["ratio 1", "outside [0, 1)"]),
    (["--pqbench-batch-sizes=-2"], {}, ["batch size -2 is < 1"]),
    (["--pqbench-batch-sizes=many"], {}, ["'batch_sizes'", "'many'"]),
    (["--pqbench-build-timeout=soon"], {}, ["'build_timeout'", "'soon'"]),
    (["--pqbench-timing-profile=fast"], {}, ["unknown timing profile 'fast'", "full, smoke"]),
])
def test_bad_input_is_one_clear_usage_error(bench_pytester, args, files, expected):
    if "pyproject" in files:
        bench_pytester.makepyprojecttoml(files["pyproject"])
    if "ini" in files:
        bench_pytester.makeini(files["ini"])
    result = bench_pytester.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert all(text in err for text in expected), err
    assert "Traceback" not in err


def test_cli_bad_input_exits_2_with_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest_pqbench.cli", "list", "--config",
                           str(tmp_path / "none.toml"), "--models", "resnet9000"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown model 'resnet9000'" in proc.stderr and "shapes_resnet" in proc.stderr
    assert "Traceback" not in proc.stderr
