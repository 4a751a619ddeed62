"""Holding up: time limits, and result files that are never half-written, lost or overwritten.

pytest-benchmark < 5.3 opens ``--benchmark-json PATH`` with ``argparse.FileType("wb")`` when the
command line is parsed, so the previous results are truncated before a single case has run, and an
interrupted or crashed run leaves an empty or partial file (5.3 opens it at the end, still in
place). Its ``--benchmark-save`` storage writes in place too. This module (a pytest plugin,
loaded by ``pytest_pqbench.plugin``) swaps the option's type for ``AtomicOutput`` (bytes are
collected and renamed into place when complete), routes the session's ``save_json`` through it,
and makes saved runs no-clobber, so a saved baseline is never overwritten.

At start-up, before anything runs, a ``--benchmark-json`` that names a folder or the
``--pqbench-compare`` baseline is a usage error (the run would end in a traceback, or replace its
own baseline). SIGTERM (what CI runners and ``timeout`` send) is handled as Ctrl-C: pytest stops,
the finished cases are written (``<name>.interrupted.json`` beside an existing file), and a second
SIGTERM ends the process at once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cache import atomic_write_bytes
from .errors import BuildTimeout, TimeLimitExceeded  # noqa: F401  (defined in errors.py)

JSON_DEST = "benchmark_json"
_parsers: weakref.WeakKeyDictionary[Any, pytest.Parser] = weakref.WeakKeyDictionary()


_deadlines: list[float] = []  # monotonic deadlines of the nested time_limit blocks, outermost first


@contextlib.contextmanager
def time_limit(seconds: float, what: str, error: type[Exception] = TimeLimitExceeded,
               option: str = "") -> Iterator[None]:
    """Raise ``error("<what> timed out after S s (<option>)")`` in the block once ``seconds``
    have passed (0 or less: no limit).

    SIGALRM (as pytest-timeout does), so the work is interrupted where it runs, not abandoned in
    a thread that keeps the CPU and any cache lock. Blocks nest: an inner limit never extends an
    outer one, and the outer limit is re-armed when the inner block ends. A native call that
    never returns to Python (one long TensorRT build call) is interrupted when it returns. Off
    the main thread, or without SIGALRM (Windows), no limit is applied.
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
            raise error(message)
        previous_handler(signum, frame)  # an outer block's deadline: its handler raises

    original = signal.getsignal(signal.SIGALRM)
    previous_handler = original if callable(original) else _ignore
    outer = min(_deadlines) if _deadlines else None
    signal.signal(signal.SIGALRM, expired)
    _deadlines.append(deadline)
    signal.setitimer(signal.ITIMER_REAL, max(1e-4, min(deadline, outer or deadline)
                                             - time.monotonic()))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _deadlines.remove(deadline)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if original is None else original)
        if outer is not None:  # re-arm the enclosing block's limit (at once if already due)
            signal.setitimer(signal.ITIMER_REAL, max(1e-4, outer - time.monotonic()))


def _ignore(signum: int, frame: Any) -> None:
    return None


@contextlib.contextmanager
def build_time_limit(seconds: float, what: str) -> Iterator[None]:
    """``time_limit`` for a case's build: ``BuildTimeout`` naming ``--pqbench-build-timeout``."""
    with time_limit(seconds, f"{what}: build", BuildTimeout, "--pqbench-build-timeout"):
        yield


class AtomicOutput:
    """Stands in for the binary file ``argparse.FileType("wb")`` would have opened.

    pytest-benchmark uses it as ``with output as fh: fh.write(data)``; the bytes go to
    ``path`` in one atomic rename when the block ends without error. After an interrupted run the
    previous file is kept and the partial results go to ``<stem>.interrupted<suffix>``.
    """

    def __init__(self, path: str) -> None:
        self.name = path
        self.path = Path(path)
        check_output_path(self.path)
        self.interrupted = False
        self.written: Path | None = None
        self._buffer: io.BytesIO | None = None

    @property
    def target(self) -> Path:
        if not self.interrupted:
            return self.path
        return self.path.with_name(f"{self.path.stem}.interrupted{self.path.suffix or '.json'}")

    def __enter__(self) -> io.BytesIO:
        self._buffer = io.BytesIO()
        return self._buffer

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        data, self._buffer = self._buffer.getvalue() if self._buffer else b"", None
        if exc_type is None:
            atomic_write_bytes(self.target, data)
            self.written = self.target
        return False

    def __str__(self) -> str:
        return str(self.target)


def check_output_path(path: Path) -> None:
    """Refuse, before anything runs, a results path that could not be written at the end."""
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"can't write {str(path)!r}: it is a directory; give a file name, e.g. "
            f"{str(path / 'results.json')!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"can't write {str(path)!r}: directory {str(path.parent)!r} does not exist")


def atomic_output(path: str) -> Any:
    if path == "-":  # stdout, as FileType gives it
        return argparse.FileType("wb")(path)
    return AtomicOutput(path)


def _make_json_option_atomic(parser: pytest.Parser) -> None:
    # The type must change before the command line is parsed: the only way to stop the
    # truncation. pytest 9 adds each option to its argparse parser at once (``optparser``);
    # from 9.2 an ``Argument`` is a read-only view of that argparse action (``_action``);
    # earlier versions rebuild argparse from the stored ``Argument`` attributes: patch all three.
    optparser = getattr(parser, "optparser", None)
    for action in getattr(optparser, "_actions", []):
        if action.dest == JSON_DEST:
            action.type = atomic_output
    groups = [*getattr(parser, "_groups", []), getattr(parser, "_anonymous", None)]
    for group in groups:
        for argument in getattr(group, "options", []):
            if getattr(argument, "dest", None) != JSON_DEST:
                continue
            action = getattr(argument, "_action", None)
            if action is not None:  # pytest >= 9.2
                action.type = atomic_output
                continue
            argument.type = atomic_output
            attrs = getattr(argument, "_attrs", None)
            if isinstance(attrs, dict):
                attrs["type"] = atomic_output


def no_clobber_save(storage: Any) -> Any:
    """A ``FileStorage.save`` that writes atomically and never replaces an existing run file."""
    from pytest_benchmark.utils import safe_dumps

    def save(output_json: dict, save: str) -> None:
        data = safe_dumps(output_json, ensure_ascii=True, indent=4).encode()
        for _ in range(1000):
            target = storage.get(f"{storage._next_num}_{save}.json")
            if write_new(target, data):
                storage.logger.info(f"Saved benchmark data in: {target}")
                return
        raise FileExistsError(f"could not find a free run number in {storage.path}")

    return save


def write_new(target: Path, data: bytes) -> bool:
    """Write ``data`` to ``target`` complete or not at all; False (nothing written) if it exists."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)  # fails, never replaces, when the name is taken (unlike rename)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---- hooks --------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    _parsers[pluginmanager] = parser
    _make_json_option_atomic(parser)  # pytest-benchmark registered before us


def pytest_plugin_registered(plugin: Any, manager: pytest.PytestPluginManager) -> None:
    parser = _parsers.get(manager)
    if parser is not None:  # pytest-benchmark registered after us: its options exist now
        _make_json_option_atomic(parser)


@pytest.hookimpl(trylast=True)  # after the plugin's configure: its baseline is loaded by then
def pytest_configure(config: pytest.Config) -> None:
    output = getattr(config.option, JSON_DEST, None)
    path = output.path if isinstance(output, AtomicOutput) else (
        Path(output) if isinstance(output, str | os.PathLike) and str(output) != "-" else None)
    if path is not None:
        try:
            check_output_path(path)  # the option's own type did it, unless it was replaced
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"--benchmark-json: {exc}") from None
        gate = config.pluginmanager.get_plugin("pqbench-gate")
        baseline = getattr(getattr(gate, "baseline", None), "path", None)
        if baseline is not None and Path(baseline).resolve() == path.resolve():
            raise pytest.UsageError(
                f"--benchmark-json {str(path)!r} is the --pqbench-compare baseline; the run "
                "would replace the file it is compared with: write the results to another file")
    _handle_sigterm_as_interrupt(config)


_SIGTERM_KEY = pytest.StashKey[Any]()


def _handle_sigterm_as_interrupt(config: pytest.Config) -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so pytest ends the session as on
    Ctrl-C and the finished cases are saved. Only where nobody else handles SIGTERM."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return

    def terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
        config.stash[_SIGTERM_KEY] = "received"
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    config.stash[_SIGTERM_KEY] = terminated


def pytest_unconfigure(config: pytest.Config) -> None:
    handler = config.stash.get(_SIGTERM_KEY, None)
    if callable(handler) and signal.getsignal(signal.SIGTERM) is handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_sessionstart(session: pytest.Session) -> None:
    # pytest-benchmark makes its session in a trylast pytest_configure, which may run after any
    # configure hook of ours: by session start it exists.
    bench_session = getattr(session.config, "_benchmarksession", None)
    storage = getattr(bench_session, "storage", None)
    if storage is not None and type(storage).__name__ == "FileStorage":
        storage.save = no_clobber_save(storage)
    if bench_session is not None and hasattr(bench_session, "save_json"):
        bench_session.save_json = atomic_save_json(bench_session)


def atomic_save_json(session: Any) -> Any:
    """A ``BenchmarkSession.save_json`` that writes through ``AtomicOutput`` on every version.

    pytest-benchmark < 5.3 writes into the file object the option's type opened
    (``with self.json as fh``); 5.3 parses a ``Path`` and calls ``open(self.json, "wb")`` at the
    end, which truncates the old file before writing. Both end here instead.
    """
    from pytest_benchmark.utils import safe_dumps

    original = session.save_json

    def save_json(output_json: dict) -> None:
        output = session.json
        if not isinstance(output, AtomicOutput):  # "-" (stdout) or another plugin's value
            return original(output_json)
        with output as fh:
            fh.write(safe_dumps(output_json, ensure_ascii=True, indent=4).encode())
        session.logger.info(f"Wrote benchmark data in: {output.target}", purple=True)

    return save_json


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    # outside pytest-benchmark's own wrapper, which writes the results before it yields
    output = getattr(session.config.option, JSON_DEST, None)
    if isinstance(output, AtomicOutput) and exitstatus == pytest.ExitCode.INTERRUPTED:
        output.interrupted = True
    yield


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    output = getattr(config.option, JSON_DEST, None)
    why = "SIGTERM" if config.stash.get(_SIGTERM_KEY, None) == "received" else "interrupted"
    if isinstance(output, AtomicOutput) and output.interrupted and output.written:
        left = "left as it was" if output.path.exists() else "not written"
        terminalreporter.write_line(
            f"pqbench: run stopped ({why}); {output.path} {left}, results of the finished "
            f"cases in {output.written}", yellow=True)
