"""Shared test fixtures. pytester runs reuse the repository's artefact cache (PQBENCH_CACHE_DIR,
set by the top-level conftest.py) so the embedded model trains once for the whole test session."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest_plugins = ["pytester"]

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
