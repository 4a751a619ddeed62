"""A real run of the benchmark suite, produced once per test session and shared by
test_results.py and test_compare.py, plus helpers deriving variants from its JSON."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# 40 rounds: Mann-Whitney U reaches alpha=0.002 with 7; more keeps a 1.5x shift significant on a
# busy machine. One thread per engine: less sensitive to other processes on a small CI box.
RUN_ARGS = ["--pqbench-models=shapes_resnet", "--pqbench-pruners=none",
            "--pqbench-workflows=torch,ort", "--pqbench-threads=1",
            "--pqbench-precisions=fp32,int8", "--pqbench-min-rounds=40", "--pqbench-min-time=0",
            "--pqbench-warmup-rounds=1", "-p", "no:cacheprovider", "-q"]


def produce_real_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON of ``pytest benchmarks/test_matrix.py`` (the real suite) on a small slice."""
    path = tmp_path_factory.getbasetemp() / "pqbench-real-run.json"
    if not path.exists():  # test_results.py and test_compare.py share it: run the suite once
        work = tmp_path_factory.mktemp("suite")
        env = {**os.environ, "PQBENCH_CACHE_DIR": os.environ.get(
            "PQBENCH_CACHE_DIR", str(REPO / ".pqbench-cache"))}
        done = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "benchmarks" /
                                                                    "test_matrix.py"),
                               *RUN_ARGS, f"--benchmark-json={path}"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(path.read_text())


def variant(run: dict[str, Any], *, times: float = 1.0, accuracy: float = 0.0,
            keep_samples: int | None = None, drop_samples: bool = False,
            keep_artefacts: bool = False) -> dict[str, Any]:
    """A copy of a real run: samples scaled, accuracy shifted (fraction), samples cut or removed
    (pytest-benchmark's summary stats and the blocks scaled along, as if the run had been
    slower). Its artefact references are dropped unless ``keep_artefacts``: the in-pytest gate
    would otherwise re-time the real baseline engines (paired) and ignore the faked figures."""
    out = copy.deepcopy(run)
    for bench in out["benchmarks"]:
        stats = bench["stats"]
        if "data" in stats:
            stats["data"] = [x * times for x in stats["data"]][:keep_samples]
        for key in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3"):
            stats[key] *= times
        if keep_samples is not None:
            stats["rounds"] = len(stats["data"])
        if drop_samples:
            stats.pop("data", None)
        info = bench["extra_info"]
        if "accuracy" in info:
            info["accuracy"] += accuracy
        for key in ("p50_ms", "p99_ms"):
            if key in info:
                info[key] *= times
        for block in info.get("blocks") or []:
            block["median_ms"] *= times
            if times != 1.0:  # the real run's host readings do not describe a faked one
                block["host_ms"] = None
        if "p50_ci_ms" in info:
            info["p50_ci_ms"] = [x * times for x in info["p50_ci_ms"]]
        if not keep_artefacts:
            info.pop("artefact", None)  # a faked run must not be paired with real engines
    return out


def write(path: Path, run: dict[str, Any]) -> Path:
    path.write_text(json.dumps(run))
    return path
