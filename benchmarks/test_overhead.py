"""The timer's own cost: the same timing path on an empty callable. Compare its median with the
fastest case of a run to know how much of a latency figure is measurement overhead."""


def test_timer_overhead(benchmark):
    benchmark.extra_info["what"] = "pytest-benchmark pedantic round on a no-op callable"
    benchmark.pedantic(lambda batch: None, args=(None,), rounds=2000, iterations=1,
                       warmup_rounds=100)
