"""The timer's own cost: the same timing path on an empty callable. Compare its median with the
fastest case of a run to know how much of a latency figure is measurement overhead.

Its own pytest-benchmark group: pytest-benchmark picks one time unit per group from the group's
fastest entry, and this ~100 ns entry in the cases' group printed every case in nanoseconds. It
stays in the default suite because its figure is what a sub-millisecond case is read against.
"""

import pytest


@pytest.mark.benchmark(group="timer overhead")
def test_timer_overhead(benchmark):
    benchmark.extra_info["what"] = "pytest-benchmark pedantic round on a no-op callable"
    benchmark.pedantic(lambda batch: None, args=(None,), rounds=2000, iterations=1,
                       warmup_rounds=100)
