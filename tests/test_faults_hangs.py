"""Issue 25, class 1: a time limit holds in every stage, and a hung stage costs its case, never
the session. No ``except Exception`` swallows the limit (the ONNX exporter's fallbacks, a model's
own handler), a stage stuck where no signal reaches runs in a worker process that is killed, and
what is neither is ended by the watchdog instead of hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from pytest_pqbench.errors import BuildTimeout, TimeLimitExceeded
from pytest_pqbench.isolation import WorkerFailed, isolated, stage
from pytest_pqbench.stages.limits import build_time_limit, time_limit
from tests.conftest import SMOKE


def blocked_sleep(pid_file: Path | None = None, seconds: float = 600) -> None:
    """A stage no signal reaches: SIGALRM blocked, then a long sleep."""
    if pid_file is not None:
        pid_file.write_text(str(os.getpid()))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    try:
        time.sleep(seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])


def test_the_limit_is_no_exception_that_a_broad_except_swallows():
    assert not issubclass(TimeLimitExceeded, Exception)

    def careless() -> None:  # as the ONNX exporter's fallbacks and many models are written
        for _ in range(3):
            try:
                time.sleep(5)
            except Exception:  # noqa: BLE001, S112
                continue

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="stage-x timed out after 0.3 s"):
        with time_limit(0.3, "stage-x"):
            careless()
    assert time.monotonic() - started < 3


def test_the_limit_is_raised_again_after_code_that_swallows_it():
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.3, "stage-y"):
            try:
                time.sleep(5)
            except BaseException:  # noqa: BLE001 - swallowed once: raised again a second later
                pass
            time.sleep(30)
    assert time.monotonic() - started < 4
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


class Sleepy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        time.sleep(20)
        return self.fc(x.flatten(1))


def test_onnx_export_stops_at_the_limit_instead_of_falling_back(tmp_path):
    """The export used to catch the timeout and retry with TorchScript, the clock spent (a 30 s
    forward under a 5 s limit took 65 s and passed)."""
    from pytest_pqbench.workflows.onnx_export import export_onnx

    x = np.zeros((2, 3, 2, 2), dtype=np.float32)
    started = time.monotonic()
    with pytest.raises(BuildTimeout, match=r"case-e: build timed out after 2 s "
                                           r"\(--pqbench-build-timeout\) in ONNX export$"):
        with build_time_limit(2, "case-e"), stage("ONNX export"):
            export_onnx(Sleepy(), x, tmp_path / "m.onnx")
    assert time.monotonic() - started < 10  # one sleep cut short, never a second exporter


def test_a_stage_no_signal_reaches_is_killed_in_its_worker(tmp_path):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match=r"case-w: evaluation timed out after 1 s in a "
                                                r"stuck forward \(it ran in a worker process, "
                                                r"killed at the limit\)"):
        with time_limit(1, "case-w: evaluation"):
            isolated(blocked_sleep, "a stuck forward")(pid_file)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)


def test_a_worker_returns_results_and_raises_errors_as_they_are():
    parent = os.getpid()
    assert isolated(os.getpid, "no limit")() == parent  # no limit: run here, nothing forked
    with time_limit(60, "case-r"):
        assert isolated(os.getpid, "a stage")() != parent
        assert isolated(lambda a, b=0: a + b, "a stage")(2, b=3) == 5
        with pytest.raises(ValueError, match="model output is wrong"):
            isolated(lambda: (_ for _ in ()).throw(ValueError("model output is wrong")),
                     "a stage")()
        # killed from outside (the kernel's OOM killer, a native crash): said so, not a hang
        with pytest.raises(WorkerFailed, match="an export: the worker process ended by "
                                               "signal SIGKILL without a result"):
            isolated(lambda: os.kill(os.getpid(), signal.SIGKILL), "an export")()


def test_the_watchdog_ends_a_process_stuck_where_nothing_reaches_it(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent("""
        import signal, time
        from pytest_pqbench import isolation
        from pytest_pqbench.stages.limits import time_limit

        isolation.keep_terminal_stderr()
        isolation.Watchdog.min_grace_s, isolation.Watchdog.grace_factor = 1.0, 0.0
        with time_limit(0.5, "case-z: evaluation"), isolation.stage("a native forward"):
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(120)
    """))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr
    assert ("pqbench: case-z: evaluation (a native forward) is still running 1 s after its "
            "time limit of 0.5 s") in proc.stderr
    assert "Ending the session here rather than hanging" in proc.stderr
    assert 'File "' in proc.stderr and "stuck.py" in proc.stderr  # where it is stuck


# ---- through a real pytest run: users' models that sleep or hang --------------------------------
USER_MODELS = '''
import functools
import signal
import time

from torch import nn

from pytest_pqbench.models import ModelSpec, register_model


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 2, mode: str = "") -> None:
        super().__init__()
        self.mode = mode
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        if self.mode == "sleepy" and x.shape[0] > 1:  # the first forward (one image) returns
            time.sleep(30)
        if self.mode == "stuck":  # no signal reaches it
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(3600)
        return self.fc(self.features(x).mean((2, 3)))


for name, mode in (("my_net", ""), ("sleepy_net", "sleepy"), ("stuck_net", "stuck")):
    register_model(ModelSpec(name=name, task="classify", input_shape=(3, 24, 24),
                             builder=functools.partial(TinyNet, mode=mode),
                             default_dataset="shapes"), replace=True)
'''


def test_users_models_that_sleep_or_hang_fail_alone_within_the_limit(bench_pytester, tmp_path):
    bench_pytester.makeconftest(USER_MODELS)
    limit = 20  # generous for my_net's export on a loaded 2-core machine; 30 s sleeps exceed it
    started = time.monotonic()
    result = bench_pytester.runpytest_subprocess(
        "-q", "--pqbench-models=my_net,sleepy_net,stuck_net", "--pqbench-pruners=none",
        "--pqbench-workflows=ort", "--pqbench-precisions=fp32", "--pqbench-batch-sizes=4",
        f"--pqbench-build-timeout={limit}", f"--benchmark-json={tmp_path / 'run.json'}",
        *SMOKE, timeout=600)
    took = time.monotonic() - started
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        f"*BuildTimeout: sleepy_net-none-ort-fp32-bs4: build timed out after {limit} s "
        "(--pqbench-build-timeout) in ONNX export (it ran in a worker process, killed at the "
        "limit)*"])
    result.stdout.fnmatch_lines([
        f"*BuildTimeout: stuck_net-none-ort-fp32-bs4: build timed out after {limit} s "
        "(--pqbench-build-timeout) in the first forward of model 'stuck_net' (it ran in a "
        "worker process, killed at the limit)*"])
    assert "my_net-none-ort-fp32-bs4" in (tmp_path / "run.json").read_text()
    assert took < 2 * limit + 120  # two limits and my_net's own work, never a hang
