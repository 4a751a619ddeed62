"""Measurement maths against numpy, the memory probe, and the timing fields of a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_pqbench.metrics.latency import (
    LatencyStats,
    deadline_miss_rate,
    throughput_ips,
)
from pytest_pqbench.metrics.memory import PeakMemory
from tests.conftest import SMOKE

samples_s = st.lists(st.floats(1e-6, 1.0, allow_nan=False), min_size=2, max_size=300)


@given(samples_s)
def test_latency_stats_match_numpy(samples):
    stats = LatencyStats.from_seconds(samples)
    ms = np.asarray(samples) * 1000
    assert stats.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert stats.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert stats.mean_ms == pytest.approx(ms.mean())
    assert stats.stddev_ms == pytest.approx(ms.std(ddof=1), abs=1e-9)
    assert stats.jitter_ms == pytest.approx(stats.p99_ms - stats.p50_ms)
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.rounds == len(samples)


@given(samples_s, st.floats(0.001, 2000, allow_nan=False))
def test_deadline_miss_rate_counts_rounds_over_deadline(samples, deadline_ms):
    expected = sum(s * 1000 > deadline_ms for s in samples) / len(samples)
    assert deadline_miss_rate(samples, deadline_ms) == pytest.approx(expected)


def test_throughput_is_images_per_second_at_median():
    assert throughput_ips(4.0, 32) == pytest.approx(8000.0)


def test_memory_probe_sees_a_native_allocation():
    with PeakMemory() as memory:
        block = np.ones(200 * 1024 * 1024 // 8)  # 200 MB, allocated by numpy in C
        del block
    assert memory.delta >= 180 * 1024 * 1024, (memory.method, memory.delta)


def test_memory_probe_is_quiet_without_allocation():
    with PeakMemory() as memory:
        sum(range(1000))
    assert memory.delta < 50 * 1024 * 1024


def test_run_with_deadline_records_timing_fields(bench_pytester, tmp_path):
    out = tmp_path / "run.json"
    result = bench_pytester.runpytest("-q", "--pqbench-pruners=none", "--pqbench-workflows=ort",
                                      "--pqbench-precisions=fp32", "--pqbench-batch-sizes=1,8",
                                      "--pqbench-deadline-ms=0.001",
                                      "--pqbench-timing-profile=smoke",
                                      "-p", "no:cacheprovider", f"--benchmark-json={out}")
    result.assert_outcomes(passed=2)
    run = json.loads(out.read_text())
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        assert info["deadline_ms"] == 0.001
        assert info["deadline_miss_rate"] == 1.0  # nothing runs in a microsecond
        assert info["timing_profile"] == "smoke" and info["min_rounds"] == 20
        assert info["rounds"] == len(bench["stats"]["data"]) >= 20
        assert info["p50_ms"] == pytest.approx(np.percentile(bench["stats"]["data"], 50) * 1000)
        assert info["throughput_ips"] == pytest.approx(
            info["batch_size"] / info["p50_ms"] * 1000)
        assert info["peak_rss_bytes"] >= info["idle_rss_bytes"] > 0
        assert "host wall time" in info["latency_definition"]
    machine = run["machine_info"]["pqbench"]
    assert machine["control"]["median_s"] > 0 and "cpu_flags" in machine


def test_ratio_metrics_against_the_runs_baseline(bench_pytester, tmp_path):
    out = tmp_path / "run.json"
    result = bench_pytester.runpytest("-q", "--pqbench-pruners=none",
                                      "--pqbench-workflows=torch,ort", "--pqbench-precisions=fp32",
                                      *SMOKE, f"--benchmark-json={out}")
    result.assert_outcomes(passed=2)
    info = {b["extra_info"]["case_id"]: b["extra_info"]
            for b in json.loads(out.read_text())["benchmarks"]}
    base = info["shapes_resnet-none-torch-fp32-bs32"]
    ort = info["shapes_resnet-none-ort-fp32-bs32"]
    assert base["latency_speedup"] == pytest.approx(1.0)
    assert ort["latency_speedup"] == pytest.approx(base["p50_ms"] / ort["p50_ms"])
    assert ort["throughput_improvement"] == pytest.approx(
        ort["throughput_ips"] / base["throughput_ips"])
