"""Progress lines for the slow, cached steps: training, fine-tuning, distillation, ONNX export,
calibration, torch.compile, TensorRT builds. A cold build writes a line when it starts and one
with its duration when it ends; a cache hit writes nothing.

Where the lines go: to the sink the pytest plugin installs for a session
(``pytest_pqbench.plugin.progress``: the terminal reporter, capture lifted); with no sink (an xdist
worker, ``pqbench`` commands, scripts) to the ``pytest_pqbench.progress`` logger.

Hit or miss is decided by the artefact cache, under its lock, and only a miss calls the build
function it is given: ``cold_builds`` announces from inside that function, so a start line always
means real work (another process may have built the entry while this one waited on the lock).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("pytest_pqbench.progress")
PREFIX = "pqbench:"
# What each artefact kind of the cache is, as a person reads it.
STEPS = {"trained": "training", "recovered": "fine-tuning", "onnx": "ONNX export",
         "torch-export": "torch.export",
         "onnx-fp16": "FP16 conversion", "ort-int8": "INT8 calibration (ONNX Runtime)",
         "onnx-int8-symmetric": "INT8 calibration (symmetric Q/DQ)",
         "trt-engine": "TensorRT engine build", "torch-trt": "Torch-TensorRT build"}
# Workflows whose build is never served from the artefact cache: always announced.
UNCACHED_BUILDS = {"inductor": "torch.compile (inductor, weight freezing)"}

# a stack of line writers: pytester runs a session inside a session
_sinks: list[Callable[[str], None]] = []
_subject: contextvars.ContextVar[tuple[str, dict[str, str]] | None] = \
    contextvars.ContextVar("pqbench_progress_subject", default=None)


def push_sink(sink: Callable[[str], None]) -> None:
    _sinks.append(sink)


def pop_sink(sink: Callable[[str], None]) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def write(line: str) -> None:
    """One progress line to the current sink (or the logger where there is none)."""
    if _sinks:
        _sinks[-1](line)
    else:
        LOGGER.info(line)


def where(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


HEARTBEAT_S = 30.0  # a long step says it is still running this often


class _Heartbeat(threading.Thread):
    """Writes '<step>: still running, N min so far' every ``every_s`` seconds until stopped:
    a step that takes minutes (training from an empty cache, a fine-tune, a compile) is never
    silent. A thread, so that the step's own code (a user's trainer, a trainer whose module
    is part of a cache key) needs no change."""

    def __init__(self, what: str, every_s: float) -> None:
        super().__init__(name="pqbench-heartbeat", daemon=True)
        self.what, self.every_s = what, every_s
        self.started = time.perf_counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            took = seconds(time.perf_counter() - self.started)
            write(f"{PREFIX} {self.what}: still running, {took} so far")


@contextlib.contextmanager
def step(what: str, cached: str | None = None,
         heartbeat_s: float | None = None) -> Iterator[None]:
    """A start line for ``what``, then its duration (or its failure); while it runs, a line every
    ``heartbeat_s`` seconds (default ``HEARTBEAT_S``). ``cached`` says where the result is kept
    for the next run; None for work that is not cached."""
    write(f"{PREFIX} {what} ...")
    started = time.perf_counter()
    beat = _Heartbeat(what, heartbeat_s or HEARTBEAT_S)
    beat.start()
    try:
        yield
    except BaseException as exc:
        beat.stopped.set()
        write(f"{PREFIX} {what} failed after {seconds(time.perf_counter() - started)} "
              f"({type(exc).__name__})")
        raise
    beat.stopped.set()
    took = seconds(time.perf_counter() - started)
    note = f"; cached in {cached}, the next run loads it" if cached else ""
    write(f"{PREFIX} {what} done in {took}{note}")


def _watch(cache: Any) -> None:
    """Announce this cache's builds (``ArtefactCache.announcer``) while a ``cold_builds`` block
    names their subject; the cache module stays unaware of terminals."""
    if cache.announcer is not None:
        return

    def announcer(kind: str, build: Callable[..., Any]) -> Callable[..., Any]:
        current = _subject.get()
        if current is None:
            return build
        subject, names = current

        def announced(tmp: Any) -> Any:
            what = f"{names.get(kind) or STEPS.get(kind, kind)} {subject}"
            with step(what, cached=where(Path(cache.root) / kind)):
                return build(tmp)

        return announced

    cache.announcer = announcer


@contextlib.contextmanager
def cold_builds(cache: Any, subject: str, *, uncached: str | None = None,
                **names: str) -> Iterator[None]:
    """Announce every cache miss built inside the block as '<step> <subject>'.

    ``uncached`` names work in the block that no cache keeps (torch.compile): announced always.
    ``names`` renames a cache kind for this block, e.g. ``recovered="distillation"``.
    """
    _watch(cache)
    token = _subject.set((subject, names))
    try:
        if uncached:
            with step(f"{uncached} {subject}"):
                yield
        else:
            yield
    finally:
        _subject.reset(token)


class Ticker:
    """Progress of a long loop of ``total`` steps: a line at most every ``every_s`` seconds,
    with how many remain and an estimate of the time left (from the mean step so far), and
    nothing for a loop that ends within ``every_s``. ``tick(done, detail)`` after each step."""

    def __init__(self, what: str, total: int, every_s: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter,
                 out: Callable[[str], None] | None = None) -> None:
        self.what, self.total, self.every_s, self.clock = what, total, every_s, clock
        self.out = out or write
        self.started = self.last = clock()

    def line(self, done: int, detail: str = "") -> str:
        elapsed = self.clock() - self.started
        left = elapsed / done * (self.total - done) if done else None
        eta = f", about {seconds(left)} left" if left is not None and done < self.total else ""
        extra = f"; {detail}" if detail else ""
        return (f"{PREFIX} {self.what}: {done} of {self.total} done, {self.total - done} to go "
                f"({seconds(elapsed)}{eta}){extra}")

    def tick(self, done: int, detail: str = "") -> None:
        now = self.clock()
        if now - self.last >= self.every_s and done < self.total:
            self.last = now
            self.out(self.line(done, detail))
