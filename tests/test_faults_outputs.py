"""Issue 25, classes 2-4 and 6-8 through real pytest runs and real files: no output written over
an input, no run lost at the end, no aborted session, no baseline of another matrix passing the
gate, no misleading message. (Damaged runs and settings in bulk: test_fault_campaign_hypothesis.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from pqbench_runs import produce_real_run, write

from pytest_pqbench.cache import ArtefactCache, CacheError
from pytest_pqbench.cli import main as pqbench
from pytest_pqbench.errors import DatasetError, UsageError
from pytest_pqbench.outputs import check_outputs

TIMED = ("def test_a(benchmark):\n    benchmark(sum, [1, 2])\n"
         "def test_b(benchmark):\n    benchmark(sum, [3])\n")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return produce_real_run(tmp_path_factory)


def immutable(path: Path) -> None:
    """``chattr +i``: not even root may write (a permission bit would not stop root)."""
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i not available here (needed to deny writes even to root)")


def mutable(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def clean(result: pytest.RunResult) -> str:
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-3000:]
    return out


# ---- 2. outputs over inputs, in pytest ----------------------------------------------------------
def test_benchmark_json_over_the_noise_file_is_refused(bench_pytester, tmp_path):
    noise = tmp_path / "noise.json"
    noise.write_text('{"pqbench_noise": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(noise)
    for out in (noise, link):
        result = bench_pytester.runpytest("--collect-only", f"--pqbench-noise={noise}",
                                          f"--benchmark-json={out}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "is the --pqbench-noise file" in clean(result)
    assert noise.read_text() == '{"pqbench_noise": 1}'


def test_a_second_interrupted_run_keeps_the_first_ones_cases(pytester, tmp_path):
    out = tmp_path / "run.json"
    out.write_text('{"previous": true}')
    for name in ("test_first", "test_second"):
        pytester.makepyfile(test_stop=(f"def {name}(benchmark):\n    benchmark(sum, [1])\n"
                                       "def test_ctrl_c():\n    raise KeyboardInterrupt\n"))
        result = pytester.runpytest("-p", "no:cacheprovider", f"--benchmark-json={out}",
                                    no_reraise_ctrlc=True)
        assert result.ret == pytest.ExitCode.INTERRUPTED
    first = json.loads((tmp_path / "run.interrupted.json").read_text())
    second = json.loads((tmp_path / "run.interrupted-2.json").read_text())
    assert [b["name"] for b in first["benchmarks"]] == ["test_first"]
    assert [b["name"] for b in second["benchmarks"]] == ["test_second"]
    assert json.loads(out.read_text()) == {"previous": True}
    result.stdout.fnmatch_lines(["*results of the finished cases in *run.interrupted-2.json"])


def test_the_last_line_names_the_real_results_file(pytester, tmp_path):
    pytester.makepyfile(test_timed=TIMED)
    out = tmp_path / "run.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--benchmark-json={out}")
    result.assert_outcomes(passed=2)
    said = result.stdout.str() + result.stderr.str()  # pytest-benchmark's logger: stderr
    assert f"Wrote benchmark data in: {out}" in said and ".partial" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


# ---- 3. a whole run lost at the end -------------------------------------------------------------
def test_results_that_cannot_be_written_at_the_end_are_kept_and_said(pytester, tmp_path,
                                                                     monkeypatch):
    """The target folder is replaced by a file during the run (a clean-up job gone wrong): the
    finished results go to a file in the temporary folder, the last line says where, no
    traceback at exit. (A folder that is only removed is created again: nothing lost.)"""
    folder, keep = tmp_path / "results", tmp_path / "tmp"
    folder.mkdir()
    keep.mkdir()
    monkeypatch.setenv("TMPDIR", str(keep))
    pytester.makepyfile(test_timed=TIMED + (
        "def test_z_cleanup():\n"
        f"    import pathlib, shutil; shutil.rmtree({str(folder)!r})\n"
        f"    pathlib.Path({str(folder)!r}).write_text('not a folder')\n"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           f"--benchmark-json={folder / 'run.json'}")
    result.assert_outcomes(passed=3)
    assert result.ret == 0
    (kept,) = keep.glob("pqbench-run-*.json")
    assert [b["name"] for b in json.loads(kept.read_text())["benchmarks"]] == ["test_a",
                                                                                "test_b"]
    out = clean(result)
    assert f"could not write {folder / 'run.json'}" in out
    assert f"the results of this run are kept in {kept}" in out


@pytest.mark.parametrize("where", ["immutable folder", "immutable file", "below a file"])
def test_a_results_file_that_cannot_be_written_is_refused_before_running(pytester, tmp_path,
                                                                         where):
    pytester.makepyfile(test_timed=TIMED)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "run.json"
    if where == "below a file":
        out = tmp_path / "a-file" / "run.json"
        out.parent.write_text("")
    elif where == "immutable file":
        out.write_text("previous")
        immutable(out)
    else:
        immutable(folder)
    try:
        result = pytester.runpytest("-p", "no:cacheprovider", f"--benchmark-json={out}")
    finally:
        mutable(out if where == "immutable file" else folder)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-json" in clean(result) and "passed" not in result.stdout.str()


@pytest.mark.parametrize("where", ["immutable storage", "storage below a file"])
def test_saved_runs_into_storage_that_cannot_be_written_are_refused_first(pytester, tmp_path,
                                                                          where):
    pytester.makepyfile(test_timed=TIMED)
    storage = tmp_path / "storage"
    if where == "storage below a file":
        tmp_path.joinpath("file").write_text("")
        storage = tmp_path / "file" / "storage"
    else:
        storage.mkdir()
        immutable(storage)
    try:
        result = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-save=base",
                                    f"--benchmark-storage=file://{storage}")
    finally:
        mutable(storage)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-save" in clean(result) and "passed" not in result.stdout.str()


# ---- 4. aborted sessions ------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["a file", "below a file", "immutable"])
def test_a_cache_folder_that_cannot_be_used_is_one_usage_error(bench_pytester, tmp_path, damage):
    cache = tmp_path / "cache"
    if damage == "a file":
        cache.write_text("")
    elif damage == "below a file":
        (tmp_path / "f").write_text("")
        cache = tmp_path / "f" / "cache"
    else:
        cache.mkdir()
        immutable(cache)
    try:
        result = bench_pytester.runpytest("-q", "--pqbench-pruners=none",
                                          "--pqbench-workflows=torch", "--pqbench-precisions=fp32",
                                          f"--pqbench-cache-dir={cache}", "-p", "no:cacheprovider")
    finally:
        mutable(cache)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    out = clean(result)
    assert "pqbench cache:" in out and "--pqbench-cache-dir" in out


@pytest.mark.parametrize(("pyproject", "says"), [
    ("[tool]\npqbench = 3\n", "[tool.pqbench] is int 3, not a table"),
    ("[tool.pqbench]\npruners = []\n", "'pruners' (pyproject): empty value []"),
    ("[tool.pqbench]\ncache_dir = ['a', 'b']\n", "'cache_dir': bad value ['a', 'b']"),
    ("[tool.pqbench]\nfloors = { shapes_resnt = { min_accuracy = 0.5 } }\n",
     "floors.shapes_resnt: unknown model"),
])
def test_a_pyproject_that_is_not_what_pqbench_reads_is_one_usage_error(bench_pytester, pyproject,
                                                                       says):
    bench_pytester.makepyprojecttoml(pyproject)
    result = bench_pytester.runpytest("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert says in clean(result)


@pytest.mark.parametrize(("args", "says"), [
    (["--pqbench-pruners=none", "--pqbench-pruners=group0.2"], "--pqbench-pruners given 2 times"),
    (["--pqbench-pruners=,"], "'pruners' (command line): empty value ','"),
    (["--pqbench-min-rounds=500", "--pqbench-max-rounds=10"], "'min_rounds' (500"),
    (["--pqbench-calibration-size=0"], "'calibration_size' is 0"),
    (["--pqbench-ort-providers=NoSuchExecutionProvider"], "valid here: "),
    (["--pqbench-fail-on=latency:3%,latency:5%"], "'latency' given twice"),
])
def test_settings_once_silently_accepted_are_usage_errors(bench_pytester, args, says):
    result = bench_pytester.runpytest("--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert says in clean(result)


# ---- 6. a baseline of another matrix, a file compared with itself -------------------------------
def test_a_baseline_with_no_case_in_common_is_a_usage_error(bench_pytester, real_run, tmp_path):
    baseline = write(tmp_path / "base.json", real_run)
    result = bench_pytester.runpytest("--collect-only", "--pqbench-models=shapes_mobilenet",
                                      f"--pqbench-compare={baseline}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no case in common with this run's matrix" in clean(result)


def test_a_run_compared_with_itself_says_so(real_run, tmp_path, capsys):
    run = write(tmp_path / "run.json", real_run)
    copy = write(tmp_path / "copy.json", real_run)
    assert pqbench(["compare", str(run), str(run), "--paired", "never"]) == 0
    assert "is compared with itself" in capsys.readouterr().err
    assert pqbench(["compare", str(run), str(copy), "--paired", "never"]) == 0
    assert "hold the same run (identical content)" in capsys.readouterr().err


def test_a_word_for_threads_is_refused_before_a_paired_compare(real_run, tmp_path, capsys):
    damaged = json.loads(json.dumps(real_run))
    damaged["benchmarks"][1]["extra_info"]["threads"] = "four"
    base, cand = write(tmp_path / "base.json", real_run), write(tmp_path / "c.json", damaged)
    case = damaged["benchmarks"][1]["extra_info"]["case_id"]
    assert pqbench(["compare", str(base), str(cand)]) == 2  # --paired auto: would re-time
    assert (f"{cand}: case {case}: extra_info.threads is 'four', not an integer >= 1"
            in capsys.readouterr().err)


def test_one_case_recorded_twice_is_refused_naming_both(real_run, tmp_path, capsys):
    twice = json.loads(json.dumps(real_run))
    twice["benchmarks"].append(json.loads(json.dumps(twice["benchmarks"][0])))
    twice["benchmarks"][-1]["stats"]["median"] *= 3  # the 3x slower copy
    path = write(tmp_path / "twice.json", twice)
    case = twice["benchmarks"][0]["extra_info"]["case_id"]
    assert pqbench(["report", str(path)]) == 2
    last = len(twice["benchmarks"]) - 1
    assert (f"{path}: case {case} is recorded twice (benchmarks #0 and #{last})"
            in capsys.readouterr().err)


# ---- 2. outputs over inputs, in pqbench ---------------------------------------------------------
def test_pqbench_outputs_are_checked_against_every_input(real_run, tmp_path, capsys):
    run, base = write(tmp_path / "run.json", real_run), write(tmp_path / "base.json", real_run)
    before = {p: p.read_bytes() for p in (run, base)}
    hard = tmp_path / "hard.json"
    os.link(base, hard)
    for args, says in (
            (["report", str(run), "--baseline", str(base), "-o", str(base)],
             "is the --baseline file"),
            (["report", str(run), "--baseline", str(base), "-o", str(hard)],
             "is the --baseline file"),
            (["noise", str(run), str(base), "--write", str(run)], "is the RUN file"),
            (["report", str(run), "-o", str(tmp_path / "x.png"), "--plot",
              str(tmp_path / "x.png")], "are the same file"),
            (["report", str(run), "-o", "/dev/null"], "not a regular file")):
        assert pqbench(args) == 2, args
        assert says in capsys.readouterr().err, args
    assert {p: p.read_bytes() for p in (run, base)} == before
    with pytest.raises(UsageError, match="is the RUN file"):
        check_outputs({"-o": tmp_path / "." / "run.json"}, [("RUN", run)])


# ---- 8. messages that mislead -------------------------------------------------------------------
def test_a_lock_or_build_log_that_is_a_folder_is_named(tmp_path):
    cache = ArtefactCache(tmp_path)
    cache.get_or_build("thing", "k", lambda d: (d / "f").write_bytes(b"x") and {})
    (tmp_path / "thing" / "k2.lock").mkdir()
    with pytest.raises(CacheError, match=r"lock file .*k2.lock is a folder"):
        cache.get_or_build("thing", "k2", lambda d: (d / "f").write_bytes(b"x") and {})
    (tmp_path / "builds.log").unlink()
    (tmp_path / "builds.log").mkdir()
    with pytest.warns(UserWarning, match=r"builds.log is a folder .*builds are not logged"):
        entry = cache.get_or_build("thing", "k3", lambda d: (d / "f").write_bytes(b"x") and {})
    assert not entry.hit and entry.file("f").read_bytes() == b"x"


def test_an_immutable_cache_is_named_not_eperm(tmp_path):
    immutable(tmp_path)
    try:
        with pytest.raises(CacheError, match=f"cannot write in {tmp_path} .*give another "
                                             "--pqbench-cache-dir"):
            ArtefactCache(tmp_path)
    finally:
        mutable(tmp_path)


class Pair(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = torch.nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return (logits, logits) if self.kind == "tuple" else {"logits": logits, "aux": logits}


@pytest.mark.parametrize(("kind", "says"), [("tuple", "forward returns a tuple of 2 items"),
                                            ("dict", "forward returns a dict with keys "
                                                     "['aux', 'logits']")])
def test_a_model_returning_a_tuple_or_dict_is_told_so(kind, says):
    from pytest_pqbench.datasets.synthetic import shapes_dataset
    from pytest_pqbench.models import ModelSpec
    from pytest_pqbench.models.base import check_output_width

    spec = ModelSpec(name="pair", task="classify", input_shape=(3, 8, 8),
                     builder=lambda n: Pair(kind), default_dataset="shapes")
    data = shapes_dataset(seed=0, size=8, train=8, evaluation=8, calibration=4)
    with pytest.raises(UsageError, match=re.escape(f"model 'pair': {says}, not a tensor")
                       ) as caught:
        check_output_width(spec, Pair(kind), data)
    assert "classes" not in str(caught.value).split("not a tensor")[0]


def test_an_empty_class_folder_is_named_not_counted(tmp_path):
    from PIL import Image

    from pytest_pqbench.datasets.disk import image_folder_dataset

    for split in ("train", "val"):
        for cls in ("red", "blue"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / split / cls / "0.png")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    assert image_folder_dataset(tmp_path, (8, 8)).num_classes == 2
    (tmp_path / "train" / "green").mkdir()
    with pytest.raises(DatasetError, match=r"class folder\(s\) .*green' hold no images"):
        image_folder_dataset(tmp_path, (8, 8))
