"""What keeps one hung stage from hanging the session: the deadlines of the active time limits,
the stage each limit is in, a killable worker process for the stages that can run in one, and a
last-resort watchdog.

Three layers, from cheap to drastic:

1. ``stages.limits.time_limit`` raises ``TimeLimitExceeded`` (a ``BaseException``, so no
   ``except Exception`` in torch, ONNX Runtime or a user's model swallows it) by SIGALRM, and
   raises it again every ``REFIRE_S`` until the block has ended.
2. ``isolated(fn)``: under an active limit, ``fn`` runs in a forked child process; when the limit
   expires the parent (waiting on a pipe, where the signal reaches it) kills the child. A stage
   stuck in native code, or ignoring signals, costs its case, not the session. Used for the
   artefact builds that need no more than one torch thread (ONNX export, FP16 conversion, INT8
   calibration, torch.export) and for the first forward of every model (``models.base``).
3. ``Watchdog``: a stage still running ``grace`` seconds after its deadline (the signal cannot
   reach it and it was not isolated) ends the process with a message naming the stage, instead
   of a hang. It is a Python thread: it needs the stuck call to have released the GIL, as
   torch's operators, ONNX Runtime's ``run``, sleeps and I/O do.

Why fork: the child inherits the model and the data as they are (nothing to pickle, user classes
defined in a conftest included, no second import of torch); what it costs against the same work
in-process is measured by ``benchmarks/scripts/worker_cost.py``. The child runs torch on one
thread: GNU OpenMP's pool does not survive a fork (a multi-threaded op in the child hangs), so
compute-heavy builds (training, fine-tuning) stay in-process, under layers 1 and 3. Nothing is
forked where CUDA was initialised (a CUDA context does not survive a fork either).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

REFIRE_S = 1.0  # after its deadline, a limit raises again this often until its block has ended
# the watchdog ends the process this long after an expired deadline: the limit itself, at
# least 60 s (a native call that does return, e.g. one long TensorRT build, gets that long)
WATCHDOG_MIN_GRACE_S = 60.0

# monotonic deadlines of the active time_limit blocks (outermost first) and their labels
_deadlines: list[tuple[float, str, float]] = []  # (deadline, what, seconds)
_stages: list[str] = []  # the stage being run now (innermost last): named in a timeout message


def push_deadline(deadline: float, what: str, seconds: float) -> None:
    _deadlines.append((deadline, what, seconds))
    Watchdog.ensure()


def pop_deadline(deadline: float) -> None:
    for i in range(len(_deadlines) - 1, -1, -1):
        if _deadlines[i][0] == deadline:
            del _deadlines[i]
            return


def earliest_deadline() -> float | None:
    return min((d for d, _, _ in _deadlines), default=None)


def limit_active() -> bool:
    return bool(_deadlines)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage being run (``ONNX export``, ``pruning``): a time limit that expires in it
    says which one."""
    _stages.append(name)
    try:
        yield
    finally:
        if _stages and _stages[-1] == name:
            _stages.pop()


def current_stage() -> str | None:
    return _stages[-1] if _stages else None


class WorkerFailed(RuntimeError):
    """A worker process ended without a result (killed by a signal, or its result could not be
    sent back)."""


def can_fork() -> bool:
    """Fork only on the main thread (the limit's signal reaches only it), where fork exists and
    no CUDA context would be inherited."""
    if not hasattr(os, "fork") or threading.current_thread() is not threading.main_thread():
        return False
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return not (cuda is not None and cuda.is_initialized())


def isolated(fn: Callable[..., T], what: str) -> Callable[..., T]:
    """``fn`` run in a killable worker process while a time limit is active (see the module's
    docstring); called in-process otherwise. Its result and its exceptions come back pickled."""

    def run(*args: Any, **kwargs: Any) -> T:
        if not limit_active() or not can_fork():
            return fn(*args, **kwargs)
        with stage(what):
            return in_worker(fn, what, *args, **kwargs)

    return run


def in_worker(fn: Callable[..., T], what: str, *args: Any, **kwargs: Any) -> T:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        os.close(read_fd)
        _child(write_fd, fn, args, kwargs)
    os.close(write_fd)
    finished = False
    try:
        chunks = []
        with os.fdopen(read_fd, "rb") as pipe:  # blocks; the limit's SIGALRM interrupts it
            while chunk := pipe.read(1 << 16):
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        finished = True
    except BaseException as exc:
        if _is_time_limit(exc):  # say that the stage was killed, not left running
            raise type(exc)(f"{exc} (it ran in a worker process, killed at the limit)"
                            ) from None
        raise
    finally:
        if not finished:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, InterruptedError):
                os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        why = (f"ended by signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
               if os.WIFSIGNALED(status) else
               f"exited with status {os.waitstatus_to_exitcode(status)}")
        raise WorkerFailed(f"{what}: the worker process {why} without a result")
    ok, value = pickle.loads(data)
    if ok:
        return value
    raise value


def _child(write_fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    code = 0
    try:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum in (signal.SIGALRM, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        _deadlines.clear()  # no limit and no watchdog in the child: the parent kills it
        Watchdog.forget()
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)  # GNU OpenMP's pool does not survive the fork
        try:
            result: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            result = (False, exc)
        try:
            data = pickle.dumps(result)
        except Exception as exc:  # noqa: BLE001 - an exception or result that cannot pickle
            data = pickle.dumps((False, WorkerFailed(
                f"{type(result[1]).__name__}: {result[1]} (not picklable: {exc})")))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
    except BaseException:  # noqa: BLE001 - the child must end here whatever happens
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _is_time_limit(exc: BaseException) -> bool:
    from .errors import TimeLimitExceeded

    return isinstance(exc, TimeLimitExceeded)


class Watchdog:
    """One daemon thread: when the earliest deadline has passed by its grace and the limited
    block is still running, the main thread is stuck where no signal reaches it. It writes what
    is stuck (and the main thread's stack) to the real stderr and ends the process: no hang."""

    _thread: threading.Thread | None = None
    _pid: int = 0
    # the terminal's stderr, duplicated before pytest captures fd 2
    _stderr_fd: int | None = None
    grace_factor: float = 1.0
    min_grace_s: float = WATCHDOG_MIN_GRACE_S
    exit_status: int = 2  # pytest's "interrupted"

    @classmethod
    def ensure(cls) -> None:
        if cls._thread is not None and cls._pid == os.getpid():
            return
        cls._pid = os.getpid()
        cls._thread = threading.Thread(target=cls._watch, name="pqbench-watchdog", daemon=True)
        cls._thread.start()

    @classmethod
    def forget(cls) -> None:
        cls._thread = None

    @classmethod
    def _watch(cls) -> None:
        while True:
            time.sleep(0.5)
            if cls._pid != os.getpid():
                return
            now = time.monotonic()
            for deadline, what, seconds in list(_deadlines):
                grace = max(cls.min_grace_s, cls.grace_factor * seconds)
                if now > deadline + grace:
                    cls._end(what, seconds, grace)

    @classmethod
    def _end(cls, what: str, seconds: float, grace: float) -> None:
        import faulthandler

        fd = cls._stderr_fd if cls._stderr_fd is not None else 2
        where = current_stage()
        message = (f"\npqbench: {what}{f' ({where})' if where else ''} is still running "
                   f"{grace:.0f} s after its time limit of {seconds:g} s: it is stuck where no "
                   "signal reaches it (native code, or signals blocked) and was not run in a "
                   "worker process. Ending the session here rather than hanging; the previous "
                   "--benchmark-json file is left as it was. The stuck thread:\n")
        with contextlib.suppress(OSError):
            os.write(fd, message.encode())
            faulthandler.dump_traceback(file=fd, all_threads=True)
        os._exit(cls.exit_status)


def keep_terminal_stderr() -> None:
    """Duplicate fd 2 while it is still the terminal (the plugin's import, before pytest's
    capture): the watchdog's last words must reach the user."""
    if Watchdog._stderr_fd is None:
        with contextlib.suppress(OSError):
            Watchdog._stderr_fd = os.dup(2)
