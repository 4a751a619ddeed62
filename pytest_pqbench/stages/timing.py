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

from ..errors import TimeLimitExceeded
from ..progress import Ticker
from ..results.sequential import FIRST_LOOK, LOOK_STEP, LookSchedule
from ..workflows import get_workflow
from .limits import time_limit

# Blocks per case: enough blocks to spread over the host's regimes (they last seconds) and to
# give the block-level tests a few degrees of freedom; a smoke run keeps fewer.
BLOCKS = {"full": 10, "smoke": 5}
# Paired A/B cycles (against a baseline), group-sequential (``results.sequential``): every pair
# is looked at after FIRST_LOOK cycles, then every LOOK_STEP cycles up to the profile's most;
# a pair stops as soon as its latency verdict is reached and each look tests at its share of
# alpha. Many short blocks pair better than a few long ones: measured A/A on the 2-vCPU VM
# (benchmarks/scripts/paired_noise.py), the default suite's median MDE was 2.7-3.8% with 40
# cycles of >= 50 ms blocks against 7.7% with 20 cycles of 10 rounds (docs: gate calibration).
PAIRED_MOST = {"full": 100, "smoke": 16}
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
    # more instances of the same engine (loaded from the same artefact): cycle c times
    # instance c % (1 + len(others)), so an offset of one instance (its memory placement, its
    # thread pool's start-up) varies between cycles and enters the paired test's noise instead
    # of biasing the pair
    others: tuple[Callable[[np.ndarray], Any], ...] = ()

    def fn_at(self, cycle: int) -> Callable[[np.ndarray], Any]:
        instances = (self.fn, *self.others)
        return instances[cycle % len(instances)]

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
               first_cycle: int = 0,
               on_cycle: Callable[[int, int, float], None] | None = None) -> float:
    """Time every entry in ``cycles`` round-robin cycles of one block each; returns seconds.
    Cycles are numbered from ``first_cycle`` (``Block.index``; a later look continues them).
    Block start times are seconds since ``origin`` (a ``perf_counter`` value; default: now).
    ``limit_s`` > 0: a block (warm-up included) that runs longer raises ``TimeLimitExceeded``
    for its entry alone (an engine that hangs after its build does not hang the session).
    ``on_cycle(done, total, started)`` is called after every cycle (progress lines).

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
                    fn = entry.fn_at(cycle)
                    with limit(limit_s, f"{entry.key}: timing block"):
                        for _ in range(warmup):
                            fn(entry.batch)
                        at = time.perf_counter() - origin
                        samples = time_calls(fn, entry.batch, entry.rounds_per_block)
                except (Exception, TimeLimitExceeded) as exc:  # one failing engine alone
                    entry.error = exc
                    if on_error is not None:
                        on_error(entry, exc)
                    continue
                entry.timing.blocks.append(Block(cycle, at, tuple(samples), host_ms))
        if on_cycle is not None:  # (cycles done, cycles in this call, when it started)
            on_cycle(cycle - first_cycle + 1, cycles, started)
    return time.perf_counter() - started


def schedule_for(profile: str) -> LookSchedule:
    """The paired looks of a timing ``profile``: every LOOK_STEP cycles from FIRST_LOOK to the
    profile's most (one look of 16 cycles for a smoke run)."""
    most = PAIRED_MOST.get(profile, PAIRED_MOST["full"])
    return LookSchedule.build(min(FIRST_LOOK, most), most, LOOK_STEP)


@dataclass
class Looks:
    """What a sequential timing did: seconds, the pairs timed past the first look, the
    cycles each pair stopped at, and the pairs still open when the time budget ran out."""

    seconds: float = 0.0
    timed_on: list[Entry] = field(default_factory=list)
    stopped_at: dict[str, int] = field(default_factory=dict)  # case id -> cycles
    out_of_budget: list[str] = field(default_factory=list)  # case ids


def run_looks(entries: Sequence[Entry], schedule: LookSchedule,
              still_open: Callable[[Entry, Entry], bool] | None = None,
              budget_s: float = 0.0, **kwargs: Any) -> Looks:
    """``run_blocks`` over ``schedule``: every entry for the first look's cycles, then, look
    after look, only the pairs for which ``still_open(baseline, candidate)`` is true (their
    verdict is not reached yet), continuing their cycle numbers and ABBA order. ``budget_s`` >
    0: no further look starts once this many seconds have gone (the pairs still open then keep
    the verdict of the look they reached)."""
    kwargs.setdefault("origin", time.perf_counter())  # one clock for every look's start times
    out = Looks(seconds=run_blocks(entries, schedule.points[0], **kwargs))
    pairs = [g for g in visit_order(entries) if len(g) == 2]
    for group in pairs:
        out.stopped_at[group[1].case_id] = schedule.points[0]
    if still_open is None:
        return out
    done = schedule.points[0]
    for point in schedule.points[1:]:
        open_pairs = [g for g in pairs if all(e.error is None for e in g) and still_open(*g)]
        if not open_pairs:
            break
        if budget_s > 0 and out.seconds >= budget_s:
            out.out_of_budget = [g[1].case_id for g in open_pairs]
            break
        more = [e for g in open_pairs for e in g]
        out.seconds += run_blocks(more, point - done, first_cycle=done, **kwargs)
        out.timed_on += [e for e in more if e not in out.timed_on]
        for group in open_pairs:
            out.stopped_at[group[1].case_id] = point
        done = point
    return out


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


def instances(workflow: str) -> int:
    """Engine instances a side in a paired re-timing: 2 where loading an artefact is cheap,
    1 where it costs a build of its own (a compile: ``BuildCost.build_s`` over 10 s)."""
    return 1 if get_workflow(workflow).cost.build_s > 10 else 2


def progress_line(say: Any, engines: int, every_s: float = 15.0) -> Any:
    """A ``run_blocks`` cycle callback: a progress line at most every ``every_s`` seconds (a
    ``progress.Ticker`` per look) with the cycles done, how many remain and the time left."""
    ticker: list[Ticker] = []

    def on_cycle(done: int, total: int, started: float) -> None:
        if done == 1 or not ticker:
            ticker[:] = [Ticker(f"timing cycles of {engines} engines", total, every_s=every_s,
                                out=say)]
        ticker[0].tick(done)

    return on_cycle
