"""Results: the one schema of pqbench fields inside pytest-benchmark JSON (``extra_info``)."""

# The default gate, in the form --pqbench-fail-on takes: the one definition (``config`` shows it
# as the option's default, ``results.compare.Thresholds.default()`` and ``pqbench compare`` use it).
# latency 3%: a significant slowdown above 3% fails; the paired block test detected a real 5%
# slowdown in 8 of 10 runs here (README, "Regression gate: calibration"). p99's tail is
# noisier: 20%.
DEFAULT_FAIL_ON = "latency:1.03,p99:1.2,accuracy:0.5pp,size:1.0,macs:1.0"
