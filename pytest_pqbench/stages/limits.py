"""Time limits that hold inside a case's stages: build, evaluation, warm-up, each timing block.

``time_limit`` raises in the block once its seconds have passed (SIGALRM, as pytest-timeout
does), so a forward that hangs fails its case alone instead of hanging the session. The error is
a ``BaseException`` (no ``except Exception`` swallows it: the ONNX exporter's fallbacks, a user's
model) and is raised again every ``isolation.REFIRE_S`` until the block has ended; what the
signal cannot reach is handled by ``pytest_pqbench.isolation`` (worker processes, watchdog).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import isolation
from ..errors import BuildTimeout, TimeLimitExceeded


@contextlib.contextmanager
def time_limit(seconds: float, what: str, error: type[TimeLimitExceeded] = TimeLimitExceeded,
               option: str = "") -> Iterator[None]:
    """Raise ``error("<what> timed out after S s (<option>) in <stage>")`` in the block once
    ``seconds`` have passed (0 or less: no limit), and again every ``REFIRE_S`` until the block
    has ended (code that catches it and carries on is interrupted again).

    SIGALRM (as pytest-timeout does), so the work is interrupted where it runs, not abandoned in
    a thread that keeps the CPU and any cache lock. Blocks nest: an inner limit never extends an
    outer one, and the outer limit is re-armed when the inner block ends. A native call that
    does not return to Python is interrupted when it returns; the stages that may never return
    run in a killable worker process (``isolation.isolated``), and the watchdog ends a process
    stuck past the limit's grace. Off the main thread, or without SIGALRM (Windows), no limit
    is applied.
    """
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return
    deadline = time.monotonic() + seconds
    message = f"{what} timed out after {seconds:g} s" + (f" ({option})" if option else "")

    def expired(signum: int, frame: Any) -> None:
        if time.monotonic() >= deadline - 1e-3:
            stage = isolation.current_stage()
            raise error(message + (f" in {stage}" if stage else ""))
        previous_handler(signum, frame)  # an outer block's deadline: its handler raises

    original = signal.getsignal(signal.SIGALRM)
    previous_handler = original if callable(original) else _ignore
    outer = isolation.earliest_deadline()
    signal.signal(signal.SIGALRM, expired)
    isolation.push_deadline(deadline, what, seconds)
    _arm(min(deadline, outer or deadline))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        isolation.pop_deadline(deadline)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if original is None else original)
        if outer is not None:  # re-arm the enclosing block's limit (at once if already due)
            _arm(outer)


def _arm(deadline: float) -> None:
    """SIGALRM at ``deadline``, then every ``REFIRE_S`` until disarmed."""
    signal.setitimer(signal.ITIMER_REAL, max(1e-4, deadline - time.monotonic()),
                     isolation.REFIRE_S)


def _ignore(signum: int, frame: Any) -> None:
    return None


@contextlib.contextmanager
def build_time_limit(seconds: float, what: str) -> Iterator[None]:
    """``time_limit`` for a case's build: ``BuildTimeout`` naming ``--pqbench-build-timeout``."""
    with time_limit(seconds, f"{what}: build", BuildTimeout, "--pqbench-build-timeout"):
        yield
