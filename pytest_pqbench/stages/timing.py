"""Timing in blocks spread over the session, and paired A/B blocks against a baseline engine.

Why blocks: on a shared host the same engine runs at one speed for seconds, then at another
(measured on the 2-core VM: block medians of one ONNX Runtime session at 3.6 ms, then 4.45 ms,
then back). Rounds of one contiguous window are one draw of the host's regime, not independent
samples. So each case is timed as several blocks (a few warm-up calls + N timed rounds), and the
blocks of all cases of the session are interleaved round-robin: every case samples the host's
regimes alike. The block, not the round, is the unit of every verdict (``results.stats``).

Why not alternate every call: two ONNX Runtime sessions called alternately thrash each other's
thread pools and caches (both latencies double); alternating in blocks keeps each at its
standalone speed.

Each cycle of the round-robin starts with a tiny control kernel (``host_ms``): a per-block
reading of how fast the host is at that moment, kept with the block so a reader can see which
regime a block fell in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .limits import time_limit

# Blocks per case: enough blocks to spread over the host's regimes (they last seconds) and to
# give the block-level tests a few degrees of freedom; a smoke run keeps fewer.
BLOCKS = {"full": 10, "smoke": 5}
# Paired A/B cycles (against a baseline): the paired verdict's rank test needs many cycles
# (Wilcoxon at alpha 0.002 has no confidence interval below 13), and many short blocks pair
# better than a few long ones: measured A/A on the 2-vCPU VM (benchmarks/scripts/
# paired_noise.py), the default suite's median MDE was 2.7-3.8% with 40 cycles of >= 50 ms
# blocks against 7.7% with 20 cycles of 10 rounds (README, calibration).
PAIRED_BLOCKS = {"full": 40, "smoke": 16}
# Group-sequential: a pair still undecided after its PAIRED_BLOCKS cycles (``cannot decide`` or
# ``not significant`` at the gate's threshold) is timed on to this many cycles, and the verdict
# splits alpha over the two looks (Bonferroni: a false alarm at either look has probability
# <= alpha / 2, whatever the looks' correlation), so the extra cycles cost only the cases that
# need them. Measured on the 2-vCPU VM: the paired MDE of the noisiest INT8 engine was 5.9-6.4%
# at 40 cycles in the runs that missed a real 5% slowdown (README, calibration).
PAIRED_MAX_BLOCKS = {"full": 100, "smoke": 16}
# A paired block lasts at least this long, so that a block of a short engine (3 ms INT8 calls,
# bimodal on the VM) holds enough calls for its fastest round to be a fast one.
PAIRED_BLOCK_S = 0.05
BLOCK_WARMUP = 3  # calls before each block: thread pools and caches back to this engine


@dataclass(frozen=True)
class Block:
    """One block of one engine: its timed rounds (seconds) and when it ran."""

    index: int  # cycle of the round-robin it belongs to
    start_s: float  # seconds since the timing phase started
    samples: tuple[float, ...]
    host_ms: float | None = None  # control kernel median at the start of the cycle

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples)) * 1e3


@dataclass
class Timing:
    """Every block of one engine in one session."""

    blocks: list[Block] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [s for b in self.blocks for s in b.samples]


ROLES = ("own", "baseline", "candidate")


@dataclass
class Entry:
    """An engine to time: ``fn(batch)`` is one synchronous call. ``role``: ``own`` (a case of
    this run, timed alone), or one side of an A/B pair (``baseline`` / ``candidate``) whose
    other side is ``partner``."""

    case_id: str
    fn: Callable[[np.ndarray], Any]
    batch: np.ndarray
    rounds_per_block: int = 1
    role: str = "own"
    timing: Timing = field(default_factory=Timing)
    error: BaseException | None = None
    partner: Entry | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.case_id if self.role == "own" else f"{self.role}:{self.case_id}"


def pair(case_id: str, baseline: Callable[[np.ndarray], Any], candidate: Entry | Callable,
         batch: np.ndarray, rounds_per_block: int) -> tuple[Entry, Entry]:
    """A baseline and a candidate engine of one case as an A/B pair, timed next to each other
    in alternating blocks (``run_blocks``). ``candidate``: an engine, or this run's own entry
    of the case (it then stays this run's timing and is also the pair's candidate side)."""
    cand = candidate if isinstance(candidate, Entry) else Entry(
        case_id, candidate, batch, rounds_per_block, role="candidate")
    base = Entry(case_id, baseline, batch, rounds_per_block, role="baseline", partner=cand)
    cand.partner = base
    return base, cand


def time_calls(fn: Callable[[np.ndarray], Any], batch: np.ndarray, rounds: int) -> list[float]:
    """Wall time of ``rounds`` synchronous calls, one sample per call (perf_counter, the timer
    pytest-benchmark uses)."""
    out = []
    clock = time.perf_counter
    for _ in range(rounds):
        started = clock()
        fn(batch)
        out.append(clock() - started)
    return out


def rounds_per_block(probe_s: float, blocks: int, min_rounds: int, min_time: float,
                     max_rounds: int, block_s: float = 0.0) -> int:
    """Rounds in each block so that all blocks together give at least ``min_rounds`` and
    ``min_time`` seconds (MLPerf-style minimums), and each block at least ``block_s`` seconds;
    at most ``max_rounds`` in all."""
    by_rounds = math.ceil(min_rounds / blocks)
    by_time = math.ceil(min_time / blocks / probe_s) if probe_s > 0 else by_rounds
    by_block = math.ceil(block_s / probe_s) if probe_s > 0 else 1
    per_block = max(by_rounds, by_time, by_block, 1)
    return max(1, min(per_block, max_rounds // blocks if max_rounds >= blocks else 1))


class ControlKernel:
    """A small fixed FP32 matmul timed at the start of every cycle (``Block.host_ms``): the
    fastest of ``repeats`` calls, so one descheduled thread (measured under load: a 35 us
    matmul read 80 ms once in a while) does not read as a slow host."""

    def __init__(self, size: int = 192, repeats: int = 7) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=gen)
        self.b = torch.randn(size, size, generator=gen)
        self.repeats = repeats

    def __call__(self) -> float:
        samples = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            self.a @ self.b
            samples.append(time.perf_counter() - started)
        return float(np.min(samples)) * 1e3


def run_blocks(entries: Sequence[Entry], cycles: int, warmup: int = BLOCK_WARMUP,
               control: Callable[[], float] | None = None,
               on_error: Callable[[Entry, BaseException], None] | None = None,
               origin: float | None = None, limit_s: float = 0.0,
               first_cycle: int = 0, on_block: Callable[[], None] | None = None) -> float:
    """Time every entry in ``cycles`` round-robin cycles of one block each; returns seconds.
    Cycles are numbered from ``first_cycle`` (``Block.index``; a later look continues them).
    Block start times are seconds since ``origin`` (a ``perf_counter`` value; default: now).
    ``limit_s`` > 0: a block (warm-up included) that runs longer raises ``TimeLimitExceeded``
    for its entry alone (an engine that hangs after its build does not hang the session).
    ``on_block`` is called after every block (progress lines).

    Paired entries (``partner`` set) are visited next to each other, in ABBA order over the
    cycles (A first in even cycles, B first in odd ones), so neither side always runs right after
    the other's block. An entry that raises is dropped from later cycles (``error`` kept).
    """

    def limit(seconds: float, what: str) -> Any:
        if seconds <= 0:
            return nullcontext()

        return time_limit(seconds, what, option="--pqbench-build-timeout")

    order = visit_order(entries)
    started = time.perf_counter()
    origin = started if origin is None else origin
    for cycle in range(first_cycle, first_cycle + cycles):
        host_ms = control() if control is not None else None
        for group in order:
            group = group if cycle % 2 == 0 else list(reversed(group))
            for entry in group:
                if entry.error is not None:
                    continue
                try:
                    with limit(limit_s, f"{entry.key}: timing block"):
                        for _ in range(warmup):
                            entry.fn(entry.batch)
                        at = time.perf_counter() - origin
                        samples = time_calls(entry.fn, entry.batch, entry.rounds_per_block)
                except Exception as exc:  # one failing engine must not stop the others
                    entry.error = exc
                    if on_error is not None:
                        on_error(entry, exc)
                    continue
                entry.timing.blocks.append(Block(cycle, at, tuple(samples), host_ms))
                if on_block is not None:
                    on_block()
    return time.perf_counter() - started


def looks_for(profile: str) -> tuple[int, int]:
    """(cycles of the first look, cycles at most) of a paired timing under ``profile``."""
    first = PAIRED_BLOCKS.get(profile, PAIRED_BLOCKS["full"])
    return first, max(first, PAIRED_MAX_BLOCKS.get(profile, first))


def run_paired_looks(entries: Sequence[Entry], first: int, most: int,
                     still_open: Callable[[Entry, Entry], bool] | None = None,
                     on_second_look: Callable[[int], None] | None = None,
                     **kwargs: Any) -> tuple[float, list[Entry]]:
    """``run_blocks`` in two looks: every entry for ``first`` cycles, then the pairs for which
    ``still_open(a, b)`` is true (their verdict is not reached yet) for ``most - first`` more,
    the others left as they are. Returns (seconds, the entries timed on). ``on_second_look``
    gets the number of blocks the second look will time, before it starts."""
    kwargs.setdefault("origin", time.perf_counter())  # one clock for both looks' start times
    seconds = run_blocks(entries, first, **kwargs)
    if still_open is None or most <= first:
        return seconds, []
    more = [e for group in visit_order(entries)
            if len(group) == 2 and all(e.error is None for e in group) and still_open(*group)
            for e in group]
    if more:
        if on_second_look is not None:
            on_second_look(len(more) * (most - first))
        seconds += run_blocks(more, most - first, first_cycle=first, **kwargs)
    return seconds, more


def visit_order(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Each entry once, a pair's two sides next to each other (the baseline first)."""
    listed = {id(e) for e in entries}
    seen: set[int] = set()
    order = []
    for entry in entries:
        if id(entry) in seen:
            continue
        group = [entry]
        partner = entry.partner
        if partner is not None and id(partner) in listed and id(partner) not in seen:
            group = [partner, entry] if partner.role == "baseline" else [entry, partner]
        seen.update(id(e) for e in group)
        order.append(group)
    return order
