"""Holding up: time limits, and result files that are never half-written, lost or overwritten.

pytest-benchmark (5.3 and later) opens ``--benchmark-json PATH`` at the end of the session and
writes the results in place: a crash or Ctrl-C during that write leaves a truncated file where the
previous results were. This module (a pytest plugin, loaded by ``pytest_pqbench.plugin``) points
the option at a scratch file beside the target before pytest-benchmark reads it (``ResultFile``)
and, once pytest-benchmark's write has finished, moves the complete bytes over the target in one
atomic rename. ``--benchmark-save`` storage writes in place too: saved runs are made no-clobber,
so a saved baseline is never overwritten. No argparse or pytest internals are touched; the two
private pieces of pytest-benchmark still used (its session object and the storage's next run
number: no public route exists) are checked at start-up and by ``tests/test_hosts.py``.

At start-up, before anything runs, a ``--benchmark-json`` that names a folder or the
``--pqbench-compare`` baseline is a usage error (the run would end in a traceback, or replace its
own baseline). SIGTERM (what CI runners and ``timeout`` send) is handled as Ctrl-C: pytest stops,
the finished cases are written (``<name>.interrupted.json`` beside an existing file), and a second
SIGTERM ends the process at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from ..cache import atomic_write_bytes

JSON_DEST = "benchmark_json"
RESULT_KEY = pytest.StashKey["ResultFile"]()


class ResultFile:
    """Where the ``--benchmark-json`` results end up: complete, or not at all.

    pytest-benchmark writes into ``scratch`` (a hidden file beside the target, so the rename
    stays on one file system); ``finish`` then moves those bytes over the target atomically. After
    an interrupted run the previous file is kept and the finished cases go to
    ``<stem>.interrupted<suffix>``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        self.scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.interrupted = False
        self.written: Path | None = None

    @property
    def target(self) -> Path:
        if not self.interrupted:
            return self.path
        return self.path.with_name(f"{self.path.stem}.interrupted{self.path.suffix or '.json'}")

    def finish(self, complete: bool) -> None:
        """Move what was written to the target if the write ended without error; else drop it."""
        if not self.scratch.exists():
            return
        try:
            if complete:
                atomic_write_bytes(self.target, self.scratch.read_bytes())
                self.written = self.target
        finally:
            self.scratch.unlink(missing_ok=True)

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


def no_clobber_save(storage: Any) -> Any:
    """A ``FileStorage.save`` that writes atomically and never replaces an existing run file."""
    from pytest_benchmark.utils import safe_dumps

    def save(output_json: dict, save: str) -> None:
        data = safe_dumps(output_json, ensure_ascii=True, indent=4).encode()
        for _ in range(1000):
            target = storage.get(f"{next_run_number(storage):04d}_{save}.json")
            if write_new(target, data):
                storage.logger.info(f"Saved benchmark data in: {target}")
                return
        raise FileExistsError(f"could not find a free run number in {storage.path}")

    return save


def next_run_number(storage: Any) -> int:
    """The number after the highest saved run's, asked of the storage's public ``query``."""
    numbers = [int(p.name[:4]) for p in storage.query("[0-9][0-9][0-9][0-9]_*")
               if p.name[:4].isdigit()]
    return max(numbers, default=0) + 1


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
@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's configure reads the option
def pytest_configure(config: pytest.Config) -> None:
    output = getattr(config.option, JSON_DEST, None)
    if hasattr(config, "workerinput") or output is None or str(output) == "-":
        return  # xdist workers never write the file; "-" is pytest-benchmark's own business
    try:
        result = ResultFile(output)
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"--benchmark-json: {exc}") from None
    config.stash[RESULT_KEY] = result
    setattr(config.option, JSON_DEST, result.scratch)


def result_path(config: pytest.Config) -> Path | None:
    """The ``--benchmark-json`` file the user asked for (the option itself names the scratch
    file pytest-benchmark writes)."""
    result = config.stash.get(RESULT_KEY, None)
    return result.path if result is not None else None


# a second pytest_configure of this module, trylast (the gate's baseline is loaded by then):
# pytest registers only functions named pytest_*, and specname binds this one to the hook
@pytest.hookimpl(specname="pytest_configure", trylast=True)
def pytest_configure_checks(config: pytest.Config) -> None:
    path = result_path(config)
    if path is not None:
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
    # pytest-benchmark registers its session as the plugin "pytest-benchmark" in a trylast
    # pytest_configure, which may run after any configure hook of ours: by session start it
    # exists. Its storage has no hook for how a saved run is written: its ``save`` is replaced
    # by one that never overwrites (checked here and by tests/test_hosts.py).
    bench_session = session.config.pluginmanager.get_plugin("pytest-benchmark")
    storage = getattr(bench_session, "storage", None)
    if storage is None or type(storage).__name__ != "FileStorage":
        return
    if not callable(getattr(storage, "query", None)) or not callable(getattr(storage, "get",
                                                                               None)):
        raise pytest.UsageError(
            "pytest-benchmark's FileStorage has no query() / get() any more (a newer "
            "pytest-benchmark?): pytest-pqbench cannot keep --benchmark-save from overwriting "
            "saved runs; install the pytest-benchmark version pyproject.toml allows")
    storage.save = no_clobber_save(storage)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    # around pytest-benchmark's own wrapper, which writes the scratch file before it yields
    result = session.config.stash.get(RESULT_KEY, None)
    if result is not None and exitstatus == pytest.ExitCode.INTERRUPTED:
        result.interrupted = True
    outcome = yield
    if result is not None:  # no terminal summary ran (its hook finishes it), or the write failed
        result.finish(complete=outcome.excinfo is None)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    result = config.stash.get(RESULT_KEY, None)
    if result is not None:
        # the summary runs only when every sessionfinish hook inside the terminal's ended
        # without error, pytest-benchmark's write included: move the file into place now, so
        # the lines below (and the user) see it; the sessionfinish wrapper is the fallback
        result.finish(complete=True)
    why = "SIGTERM" if config.stash.get(_SIGTERM_KEY, None) == "received" else "interrupted"
    if result is not None and result.interrupted and result.written:
        left = "left as it was" if result.path.exists() else "not written"
        terminalreporter.write_line(
            f"pqbench: run stopped ({why}); {result.path} {left}, results of the finished "
            f"cases in {result.written}", yellow=True)
