"""Holding up: result files that are never half-written, lost, or written over an input.

pytest-benchmark (5.3 and later) opens ``--benchmark-json PATH`` at the end of the session and
writes the results in place: a crash or Ctrl-C during that write leaves a truncated file where the
previous results were. This module (a pytest plugin, loaded by ``pytest_pqbench.plugin``) points
the option at a scratch file before pytest-benchmark reads it (``ResultFile``) and, once
pytest-benchmark's write has finished, moves the complete bytes over the target in one atomic
rename (its "Wrote benchmark data in:" line names the target: ``ScratchPath``).
``--benchmark-save`` storage writes in place too: saved runs are made no-clobber, so a saved
baseline is never overwritten. No argparse or pytest internals are touched; the two
private pieces of pytest-benchmark still used (its session object and the storage's next run
number: no public route exists) are checked at start-up and by ``tests/test_hosts.py``.

At start-up, before anything runs (``outputs.check_outputs``): a ``--benchmark-json`` that is a
folder, in a missing or unwritable folder, an existing file that cannot be replaced, or the
``--pqbench-compare`` / ``--pqbench-noise`` input is a usage error; so is ``--benchmark-save``
storage that cannot be written. If the write still fails at the end, the results are kept in a
file in the temporary folder and the last line says where (never a traceback at exit). SIGTERM
(what CI runners and ``timeout`` send) is handled as Ctrl-C: pytest stops, the finished cases are
written (``<name>.interrupted.json`` beside an existing file, numbered when one is already there)
and a second SIGTERM ends the process at once.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ..cache import atomic_write_bytes
from ..errors import UsageError
from ..outputs import check_folder, check_outputs, numbered_free

JSON_DEST = "benchmark_json"
RESULT_KEY = pytest.StashKey["ResultFile"]()
OUTPUT_JSON_KEY = pytest.StashKey[list]()  # the JSON pytest-benchmark writes, as it builds it


class ScratchPath(os.PathLike):
    """What ``--benchmark-json`` is set to: pytest-benchmark opens ``os.fspath`` of it (the
    scratch file) and prints ``str`` of it (the file the results end up in) in its "Wrote
    benchmark data in:" line."""

    def __init__(self, result: ResultFile) -> None:
        self.result = result

    def __fspath__(self) -> str:
        return str(self.result.scratch)

    def __str__(self) -> str:
        return str(self.result.target)

    def __repr__(self) -> str:
        return f"ScratchPath({self.result.scratch!s} -> {self.result.target!s})"


class ResultFile:
    """Where the ``--benchmark-json`` results end up: complete, or not at all.

    pytest-benchmark writes into ``scratch`` (a hidden file in the temporary folder);
    ``finish`` then writes those bytes beside the target and renames them over it atomically. After
    an interrupted run the previous file is kept and the finished cases go to
    ``<stem>.interrupted<suffix>`` (``-2``, ``-3``... when that name is taken: an earlier
    interrupted run's cases are never replaced). A write that fails at the end keeps the
    results in ``fallback`` (the temporary folder).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_outputs({"--benchmark-json": self.path}, example="results.json")
        self.scratch = scratch_file(self.path)
        self.interrupted = False
        self.written: Path | None = None
        self.fallback: Path | None = None
        self.error: str = ""
        self._interrupted_target: Path | None = None

    @property
    def target(self) -> Path:
        if not self.interrupted:
            return self.path
        if self._interrupted_target is None:
            name = self.path.with_name(
                f"{self.path.stem}.interrupted{self.path.suffix or '.json'}")
            self._interrupted_target = numbered_free(name)
        return self._interrupted_target

    def finish(self, complete: bool) -> None:
        """Move what was written to the target if the write ended without error; else drop it.
        A target that cannot be written keeps the results in ``fallback`` instead."""
        if not self.scratch.exists():
            return
        try:
            if complete:
                data = self.scratch.read_bytes()
                try:
                    if self.interrupted:  # never replaces an earlier run's interrupted file
                        self._write_interrupted(data)
                    else:
                        atomic_write_bytes(self.target, data)
                    self.written = self.target
                except OSError as exc:
                    self.keep(data, exc)
        finally:
            self.scratch.unlink(missing_ok=True)

    def _write_interrupted(self, data: bytes) -> None:
        for _ in range(100):
            if write_new(self.target, data):
                return
            self._interrupted_target = numbered_free(self.target)  # taken meanwhile
        raise FileExistsError(f"{self.target}: no free name")

    def keep(self, data: bytes, exc: BaseException) -> None:
        """The results that could not be written to the target, kept elsewhere (``fallback``)."""
        self.error = f"{type(exc).__name__}: {exc}"
        self.fallback = keep_results(data, self.path.stem)

    def lines(self) -> list[str]:
        """What the user must know about where the results went (empty: where they asked)."""
        return unwritten_lines(str(self.target), self.error, self.fallback) if self.error else []

    def __str__(self) -> str:
        return str(self.target)


def scratch_file(target: Path) -> Path:
    """Where pytest-benchmark writes: a fresh name in the temporary folder (so its write does
    not depend on the target's folder still being there at the end), else beside the target.
    The name is reserved and freed at once: pytest-benchmark creates the file only if it writes
    (an empty file would otherwise be moved over the target)."""
    for folder in (Path(tempfile.gettempdir()), target.parent):
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=f".pqbench-{target.name}.",
                                        suffix=".partial")
        except OSError:
            continue
        os.close(fd)
        os.unlink(name)
        return Path(name)
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


def keep_results(data: bytes, stem: str) -> Path | None:
    """``data`` in a new file of the temporary folder (else the working directory); None when
    neither can be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (Path(tempfile.gettempdir()), Path.cwd()):
        candidate = folder / f"pqbench-{stem}-{stamp}-{os.getpid()}.json"
        try:
            if write_new(candidate, data):
                return candidate
        except OSError:
            continue
    return None


def unwritten_lines(target: str, error: str, fallback: Path | None) -> list[str]:
    if fallback is not None:
        return [f"pqbench: could not write {target} ({error}); the results of this run are "
                f"kept in {fallback}"]
    return [f"pqbench: could not write {target} ({error}) nor keep the results in the "
            "temporary folder: this run's results are lost"]


def check_output_path(path: Path) -> None:
    """Refuse, before anything runs, a results path that could not be written at the end
    (``outputs.check_outputs``: the one check every writer uses)."""
    check_outputs({"--benchmark-json": path}, example="results.json")


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
    config.stash[OUTPUT_JSON_KEY] = []
    output = getattr(config.option, JSON_DEST, None)
    if hasattr(config, "workerinput") or output is None or str(output) == "-":
        return  # xdist workers never write the file; "-" is pytest-benchmark's own business
    try:
        result = ResultFile(output)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[RESULT_KEY] = result
    setattr(config.option, JSON_DEST, ScratchPath(result))


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
        settings = config.stash.get(_settings_key(), None)
        noise = getattr(settings, "noise", None)
        try:
            check_outputs({"--benchmark-json": path},
                          [("--pqbench-compare baseline", baseline), ("--pqbench-noise", noise)],
                          example="results.json")
        except UsageError as exc:
            raise pytest.UsageError(f"{exc} (the run would replace the file it reads)"
                                    ) from None
    _handle_sigterm_as_interrupt(config)


def _settings_key() -> Any:
    from .keys import SETTINGS_KEY  # keys imports the stages: only once the plugin is loaded

    return SETTINGS_KEY


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
    if (getattr(bench_session, "save", None) or getattr(bench_session, "autosave", None)) \
            and not hasattr(session.config, "workerinput"):
        try:  # a saved run that cannot be written must not be found out at the end
            check_folder(Path(storage.get(".pqbench-write-check")).parent,
                         "--benchmark-save / --benchmark-storage")
        except UsageError as exc:
            raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(trylast=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict) -> None:
    """Keep the JSON pytest-benchmark is about to write (for ``--benchmark-json`` first, then
    for ``--benchmark-save``): if its write fails, the results are kept elsewhere."""
    config.stash.setdefault(OUTPUT_JSON_KEY, []).append(output_json)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    # around pytest-benchmark's own wrapper, which writes the scratch file before it yields
    config = session.config
    result = config.stash.get(RESULT_KEY, None)
    if result is not None and exitstatus == pytest.ExitCode.INTERRUPTED:
        result.interrupted = True
    outcome = yield
    failure = outcome.excinfo[1] if outcome.excinfo is not None else None
    if isinstance(failure, OSError):  # pytest-benchmark's write of the results failed
        outcome.force_result(None)  # no traceback at exit: the results are kept, and said so
        _keep_unwritten(config, result, failure)
    elif result is not None and result.scratch.exists():  # no terminal summary finished it
        result.finish(complete=failure is None)
        _say(config, result.lines())


def _keep_unwritten(config: pytest.Config, result: ResultFile | None, failure: OSError) -> None:
    """pytest-benchmark could not write (the ``--benchmark-json`` scratch file, or a
    ``--benchmark-save`` run): the JSON it built goes to a fallback file, and the user is told."""
    from pytest_benchmark.utils import safe_dumps

    built = config.stash.get(OUTPUT_JSON_KEY, [])
    named = Path(failure.filename) if failure.filename is not None else None
    if result is not None and named == result.scratch:  # the --benchmark-json write failed
        result.scratch.unlink(missing_ok=True)
        target, stem, data = str(result.target), result.path.stem, built[:1]
    else:  # the --benchmark-save write failed (the JSON file, if any, was written)
        if result is not None:
            result.finish(complete=True)
            _say(config, result.lines())
        target, stem, data = f"the saved run {named or ''}".strip(), "saved-run", built[-1:]
    fallback = (keep_results(safe_dumps(data[0], ensure_ascii=True, indent=4).encode(), stem)
                if data else None)
    _say(config, unwritten_lines(target, f"{type(failure).__name__}: {failure}", fallback))


def _say(config: pytest.Config, lines: list[str]) -> None:
    if not lines:
        return
    writer = config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if writer is not None:
            writer.write_line(line, red=True)
        else:
            import sys

            print(line, file=sys.stderr)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    result = config.stash.get(RESULT_KEY, None)
    if result is not None:
        # the summary runs only when every sessionfinish hook inside the terminal's ended
        # without error, pytest-benchmark's write included: move the file into place now, so
        # the lines below (and the user) see it; the sessionfinish wrapper is the fallback
        result.finish(complete=True)
        for line in result.lines():
            terminalreporter.write_line(line, red=True)
    why = "SIGTERM" if config.stash.get(_SIGTERM_KEY, None) == "received" else "interrupted"
    if result is not None and result.interrupted and result.written:
        left = "left as it was" if result.path.exists() else "not written"
        terminalreporter.write_line(
            f"pqbench: run stopped ({why}); {result.path} {left}, results of the finished "
            f"cases in {result.written}", yellow=True)
