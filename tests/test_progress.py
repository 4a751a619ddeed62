"""Progress lines for slow builds: a real run on a fresh artefact cache announces its cold export
and calibration (with -q), a second run on the same cache announces nothing; the announcer on a
real ``ArtefactCache``: misses only, failures, renamed steps, uncached work."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest
from pqbench_runs import produce_real_run

from pytest_pqbench import progress
from pytest_pqbench.cache import ArtefactCache
from tests.conftest import SMOKE

RUN = ["--pqbench-models=shapes_resnet", "--pqbench-pruners=none", "--pqbench-workflows=ort",
       "--pqbench-precisions=int8", "--pqbench-batch-sizes=8", "--pqbench-threads=1", *SMOKE,
       "-q"]
STEP_LINE = re.compile(r"^pqbench: (.+?)( \.\.\.| done in ([\d.]+) (s|min)(; cached in (\S+), "
                       r"the next run loads it)?)$")


def step_lines(lines: list[str]) -> list[re.Match]:
    return [m for line in lines if (m := STEP_LINE.match(line))]


@pytest.fixture
def cache_with_trained_model(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A new cache holding only the trained models of the shared one: a run on it trains
    nothing (a minute saved) but exports and calibrates from scratch."""
    produce_real_run(tmp_path_factory)  # the shared cache holds a trained shapes_resnet now
    shared = Path(os.environ["PQBENCH_CACHE_DIR"])
    fresh = tmp_path / "fresh-cache"
    shutil.copytree(shared / "trained", fresh / "trained",
                    ignore=shutil.ignore_patterns("*.lock", ".*.tmp"))
    return fresh


def test_cold_build_announces_each_step_and_a_warm_run_is_silent(bench_pytester,
                                                                 cache_with_trained_model):
    cold = bench_pytester.runpytest(*RUN, f"--pqbench-cache-dir={cache_with_trained_model}")
    cold.assert_outcomes(passed=1)
    found = step_lines(cold.outlines)
    case = "shapes_resnet-none-ort-int8-bs8"
    started = [m.group(1) for m in found if m.group(2) == " ..."]
    assert started == [f"ONNX export {case}", f"INT8 calibration (ONNX Runtime) {case}"]
    done = {m.group(1): m for m in found if m.group(3)}
    assert sorted(done) == sorted(started)  # every start has its end line, with a duration
    where = bench_pytester.path / done[f"ONNX export {case}"].group(6)  # relative to the run
    assert where.resolve() == (cache_with_trained_model / "onnx").resolve()
    assert float(done[f"ONNX export {case}"].group(3)) > 0
    assert not any(name.startswith("training") for name in started)  # the model was cached

    warm = bench_pytester.runpytest(*RUN, f"--pqbench-cache-dir={cache_with_trained_model}")
    warm.assert_outcomes(passed=1)
    assert step_lines(warm.outlines) == []


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """Progress lines as log records: no pytest session to write to (as on an xdist worker)."""
    monkeypatch.setattr(progress, "_sinks", [])  # no sink installed: lines go to the logger
    caplog.set_level(logging.INFO, logger="pytest_pqbench.progress")
    return caplog


def write_file(tmp: Path) -> dict:
    (tmp / "model.bin").write_bytes(b"weights")
    return {}


def test_only_a_miss_is_announced(tmp_path, logged):
    cache = ArtefactCache(tmp_path)
    with progress.cold_builds(cache, "net on data"):
        cache.get_or_build("trained", "k1", write_file)
        cache.get_or_build("trained", "k1", write_file)  # hit: silent
    lines = [r.getMessage() for r in logged.records]
    assert lines[0] == "pqbench: training net on data ..."
    assert re.fullmatch(rf"pqbench: training net on data done in [\d.]+ s; cached in "
                        rf"{re.escape(str(tmp_path / 'trained'))}, the next run loads it", lines[1])
    assert len(lines) == 2
    cache.get_or_build("trained", "k2", write_file)  # outside a block: nothing to say
    assert len(logged.records) == 2


def test_renamed_step_failure_and_uncached_work(tmp_path, logged):
    cache = ArtefactCache(tmp_path)

    def broken(tmp: Path) -> dict:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError), \
            progress.cold_builds(cache, "net pruned by l1_0.3", recovered="distillation"):
        cache.get_or_build("recovered", "k", broken)
    with progress.cold_builds(cache, "case-1", uncached="torch.compile"):
        pass
    lines = [r.getMessage() for r in logged.records]
    assert lines[0] == "pqbench: distillation net pruned by l1_0.3 ..."
    assert re.fullmatch(r"pqbench: distillation net pruned by l1_0\.3 failed after [\d.]+ s "
                        r"\(RuntimeError\)", lines[1])
    assert lines[2] == "pqbench: torch.compile case-1 ..."
    assert re.fullmatch(r"pqbench: torch.compile case-1 done in [\d.]+ s", lines[3])


def test_a_build_inside_a_test_is_announced_through_output_capture(bench_pytester,
                                                                   cache_with_trained_model):
    # --benchmark-disable: no timing phase, so the engine is built in the test's fixture setup,
    # where pytest captures output; the lines must still reach the terminal
    args = [a for a in RUN if a != "--pqbench-precisions=int8"] + ["--pqbench-precisions=fp32"]
    result = bench_pytester.runpytest(*args, "--benchmark-disable",
                                      f"--pqbench-cache-dir={cache_with_trained_model}")
    result.assert_outcomes(passed=1)
    started = [m.group(1) for m in step_lines(result.outlines) if m.group(2) == " ..."]
    assert started == ["ONNX export shapes_resnet-none-ort-fp32-bs8"]
    assert "Captured" not in result.stdout.str()  # shown live, not in a captured-output section


def test_a_long_loop_says_how_many_remain_and_a_short_one_says_nothing(logged):
    now = [0.0]
    ticker = progress.Ticker("timing blocks", 10, every_s=15, clock=lambda: now[0])
    for done in range(1, 11):
        now[0] += 4.0  # 4 s a block
        ticker.tick(done)
    assert [r.getMessage() for r in logged.records] == [
        "pqbench: timing blocks: 4 of 10 done, 6 to go (16.0 s, about 24.0 s left)",
        "pqbench: timing blocks: 8 of 10 done, 2 to go (32.0 s, about 8.0 s left)"]
    quick = progress.Ticker("warming up", 10, every_s=15, clock=lambda: now[0])
    for done in range(1, 11):
        now[0] += 1.0
        quick.tick(done)
    assert len(logged.records) == 2  # 10 s in all: no line


def test_a_long_step_is_never_silent(logged):
    import time

    with progress.step("training net on data", heartbeat_s=0.05):
        time.sleep(0.3)
    lines = [r.getMessage() for r in logged.records]
    assert lines[0] == "pqbench: training net on data ..."
    beats = [line for line in lines if "still running" in line]
    assert len(beats) >= 2 and all(re.fullmatch(
        r"pqbench: training net on data: still running, [\d.]+ s so far", b) for b in beats)
    assert lines[-1].startswith("pqbench: training net on data done in")
    time.sleep(0.15)  # the heartbeat stopped with the step
    assert len(logged.records) == len(lines)
