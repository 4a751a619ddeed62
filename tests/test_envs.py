"""``pqbench envs``: a run's ONNX Runtime cases timed in two Python environments, worker process
against worker process (real worker processes, real ONNX Runtime sessions)."""

from __future__ import annotations

import json
import sys
import venv
from pathlib import Path

import onnxruntime
import pytest
from pqbench_runs import produce_real_run, write

from pytest_pqbench.cli import main
from pytest_pqbench.results.compare import VERDICTS


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("envs") / "run.json", produce_real_run(tmp_path_factory))


def test_every_ort_case_is_timed_in_alternating_processes_of_both_sides(run_file, capsys):
    assert main(["envs", str(run_file), "--python-b", sys.executable, "--processes", "3",
                 "--seconds", "0.2", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ort_cases = {c["case_id"] for c in json.loads(run_file.read_text())["pqbench"]["cases"]
                 if "-ort-" in c["case_id"] and c["outcome"] == "passed"}
    assert ort_cases and {r["case_id"] for r in report["rows"]} == ort_cases
    assert report["alpha"] == pytest.approx(0.01 / len(ort_cases))
    for row in report["rows"]:
        assert row["versions"] == {"a": onnxruntime.__version__, "b": onnxruntime.__version__}
        assert len(row["a_ms"]) == len(row["b_ms"]) == 3
        assert all(x > 0 for x in row["a_ms"] + row["b_ms"])
        # three pairs are too few for an interval at this alpha: the verdict says so
        assert row["verdict"] in VERDICTS and row["verdict"] != "regressed"


def test_text_output_names_both_runtimes_and_the_budget(run_file, capsys):
    assert main(["envs", str(run_file), "--python-b", sys.executable, "--processes", "2",
                 "--seconds", "0.1", "-k", "int8"]) == 0
    captured = capsys.readouterr()
    assert "run budget 0.01 over 1 case(s)" in captured.out
    assert f"onnxruntime A {onnxruntime.__version__}, B {onnxruntime.__version__}" in captured.out
    assert "pair 2 of 2" in captured.err  # progress per pair, on stderr


def test_an_environment_without_onnxruntime_is_named(run_file, tmp_path, capsys):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # a real environment with neither numpy nor onnxruntime
    python = bare / "bin" / "python"
    assert main(["envs", str(run_file), "--python-b", str(python), "--processes", "2",
                 "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err
    assert str(python) in err and "needs numpy and onnxruntime" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "says"), [
    (["--python-b", "/no/such/python"], "--python-b '/no/such/python': no such interpreter"),
    (["--python-b", sys.executable, "-k", "no-such-case"], "no ONNX Runtime case"),
    (["--python-b", sys.executable, "--processes", "1"], "--processes 1"),
    (["--python-b", sys.executable, "--latency", "0.9"], "--latency '0.9'"),
])
def test_bad_input_is_one_message(run_file, capsys, args, says):
    assert main(["envs", str(run_file), *args]) == 2
    assert says in capsys.readouterr().err
