"""Shared test fixtures. pytester runs reuse the repository's artefact cache (PQBENCH_CACHE_DIR,
set by the top-level conftest.py) so the embedded model trains once for the whole test session."""

from __future__ import annotations

import importlib
import importlib.util
import os

import numpy as np
import pytest
import torch

pytest_plugins = ["pytester"]

# pytester unloads the modules first imported inside an in-process run, and some cannot be
# loaded twice in one process (numpy.fft's extension, torch._dynamo's op registrations, the
# ONNX exporter): import them once here, before any run, whatever test file runs first.
# The modules that register torch.compiler cache artefact types at import are among them
# (a second import raises "Artifact of type=autotune already registered").
for _name in ("numpy.fft", "scipy.stats", "torch._dynamo", "torch._dynamo.package",
              "torch._dynamo.pgo", "torch._functorch._aot_autograd.autograd_cache",
              "torch._inductor.runtime.autotune_cache", "torch._inductor.codecache",
              "torch._inductor.compile_fx", "torch.onnx", "onnxruntime",
              "onnxruntime.quantization", "torch_pruning", "polars", "pytest_pqbench.cli",
              "pytest_pqbench.results.compare", "pytest_pqbench.results.report",
              "pytest_pqbench.commands.merge", "pytest_pqbench.results.html",
              "pytest_pqbench.results.chart", "matplotlib.figure", "matplotlib.ticker",
              "matplotlib.backends.backend_agg"):
    importlib.import_module(_name)
# torchao registers its operators at import (a second import raises "Tried to register an
# operator (torchao::quantize_affine ...) multiple times"): optional, so imported if present
for _name in ("torchao.quantization.pt2e.quantize_pt2e",
              "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer"):
    if importlib.util.find_spec(_name.split(".")[0]) is not None:
        importlib.import_module(_name)

SMOKE = ["--pqbench-min-rounds=3", "--pqbench-min-time=0", "--pqbench-warmup-rounds=1",
         "-p", "no:cacheprovider"]


@pytest.fixture
def bench_pytester(pytester: pytest.Pytester):
    """A pytester whose runs see the shared artefact cache and the suite's test module."""
    pytester.makeconftest("")
    pytester.makepyfile(test_matrix=(
        "def test_inference(pq_case, pq_engine, pq_data, pq_accuracy, pq_timer,"
        " pq_assert_floor, benchmark):\n"
        "    batch = pq_data.batch(pq_case.batch_size)\n"
        "    pq_timer(benchmark, pq_engine, batch)\n"
        "    pq_assert_floor(pq_case, pq_accuracy)\n"))
    os.environ.setdefault("PQBENCH_CACHE_DIR", str(pytester.path / ".cache"))
    return pytester


@pytest.fixture
def tiny_images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Train the embedded model into an empty cache before the first test, with its progress
    lines in this terminal (the first pytester run would train it inside its own captured
    session: minutes without a line). A cache hit loads it in about a second."""
    uses_runs = any("pytester" in name or name == "bench_pytester"
                    for item in session.items for name in getattr(item, "fixturenames", ()))
    if session.config.option.collectonly or not uses_runs:
        return
    from pytest_pqbench.config import Settings
    from pytest_pqbench.stages.build import Builder

    settings = Settings.resolve({"workflows": "torch", "pruners": "none"}, {}, {})
    Builder.open(settings, os.environ["PQBENCH_CACHE_DIR"]).prep.trained(settings.cases()[0])
