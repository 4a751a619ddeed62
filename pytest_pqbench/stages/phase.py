"""The session's timing phase: build every selected case, then time all of them in interleaved
blocks (and, against a baseline, pair each case with the baseline's engine), before the test
items run.

The flow of a timed session, stage by stage:

    prepare   the cases the items will run (deselected and skipped ones are left out), their
              pruned models (``stages.prepare``)
    build     ``Builder.engine`` for each (engine, parity check: ``stages.build``); a case
              whose build fails keeps its error, which its own item raises: it fails alone
    pair      with ``--pqbench-compare``: load the baseline's portable artefact of each case
              (``Workflow.load_portable``); say why when it cannot
    time      ``timing.run_blocks``: every engine, ``cycles`` blocks each, round-robin; against
              a baseline, look after look (``timing.run_looks``): the pairs whose latency
              verdict is still open at a look are timed on to the next
    record    each item adds its own final block through pytest-benchmark, merges the phase's
              rounds into ``benchmark.stats`` and writes the record (``stages.record``)

Results are kept per case id in ``PhaseResult`` (kept by the plugin in ``config.stash``), read
by the items' record stage and the gate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ..case import Case
from ..errors import TimeLimitExceeded
from ..progress import Ticker
from ..results.compare import Thresholds, still_open
from ..results.load import Run
from ..results.record import VERSION_KEYS
from ..results.sequential import LOOK_STEP, LookSchedule
from ..workflows import Workflow, get_workflow
from .build import Builder
from .limits import time_limit
from .timing import (
    BLOCKS,
    PAIRED_BLOCK_S,
    ControlKernel,
    Entry,
    Timing,
    instances,
    pair,
    progress_line,
    rounds_per_block,
    run_looks,
    schedule_for,
    time_calls,
)

PROGRESS_S = 15.0  # a progress line at most this often in a long phase


@dataclass
class Pairing:
    """How a case was (or was not) paired with its baseline engine."""

    paired: bool
    note: str
    baseline: Timing | None = None
    candidate: Timing | None = None  # when the candidate was paired through its own artefact


@dataclass
class PhaseResult:
    timings: dict[str, Timing] = field(default_factory=dict)  # case id -> candidate blocks
    pairings: dict[str, Pairing] = field(default_factory=dict)
    rounds_per_block: dict[str, int] = field(default_factory=dict)
    batch_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    cycles: int = 0  # of the first look
    most_cycles: int = 0  # a pair still open at every look is timed this many cycles
    schedule: LookSchedule | None = None  # the paired looks (results.sequential)
    timed_on: list[str] = field(default_factory=list)  # case ids of pairs timed past look 1
    stopped_at: dict[str, int] = field(default_factory=dict)  # case id -> cycles of its pair
    out_of_budget: list[str] = field(default_factory=list)  # pairs open when the budget ran out
    seconds: float = 0.0
    origin: float = field(default_factory=time.perf_counter)  # block start times count from it
    errors: dict[str, str] = field(default_factory=dict)  # timing errors (builds: Builder)


    @property
    def looks(self) -> int:
        return self.schedule.looks if self.schedule is not None else 1


def cycles_for(settings: Any, paired: bool = False) -> int:
    if paired:
        return schedule_for(settings.timing_profile).points[0]
    return BLOCKS.get(settings.timing_profile, BLOCKS["full"])


def run_phase(builder: Builder, cases: list[Case], baseline: Run | None = None,
              write: Any = None, thresholds: Thresholds | None = None) -> PhaseResult:
    """Build, pair and time ``cases``; never raises for one case's failure. Against a
    baseline, pairs are timed look after look (``schedule_for``): a pair stops once its latency
    verdict at the gate's ``thresholds`` is reached, the others go on to the most cycles or
    until ``--pqbench-pair-budget`` seconds are spent."""
    settings = builder.settings
    paired = baseline is not None
    result = PhaseResult(cycles=cycles_for(settings, paired))
    if paired:
        result.schedule = schedule_for(settings.timing_profile)
        gated = thresholds is not None and thresholds.latency is not None
        if not gated:  # no latency verdict to wait for: one look
            result.schedule = LookSchedule.single(result.cycles)
    result.most_cycles = result.schedule.points[-1] if result.schedule else result.cycles
    entries: list[Entry] = []
    say = write or (lambda line: None)
    building = Ticker("building and warming up the engines", len(cases), every_s=PROGRESS_S)
    for done, case in enumerate(cases):
        building.tick(done, case.id)
        if builder.skip_reason(case):
            continue
        try:
            engine = builder.engine_guarded(case)
        except (Exception, TimeLimitExceeded, pytest.skip.Exception, pytest.fail.Exception):
            continue  # kept by Builder.engine_guarded; the case's own item raises it
        batch = builder.prep.dataset(case).batch(case.batch_size)
        try:
            with time_limit(settings.build_timeout, f"{case.id}: warm-up",
                            option="--pqbench-build-timeout"):
                entry = timed_entry(case.id, engine, batch, settings, result.cycles,
                                    PAIRED_BLOCK_S if paired else 0.0)
        except (Exception, TimeLimitExceeded) as exc:
            result.errors[case.id] = f"{type(exc).__name__}: {exc}"
            continue
        result.rounds_per_block[case.id] = entry.rounds_per_block
        result.batch_shapes[case.id] = tuple(batch.shape)
        entries.append(entry)
        if baseline is not None:
            pairing, pair_entries = _pair(builder, case, baseline, batch, entry)
            result.pairings[case.id] = pairing
            entries += pair_entries
    if not entries:
        return result
    paired = sum(p.paired for p in result.pairings.values())
    own = sum(e.role == "own" for e in entries)
    say(f"pqbench: timing {own} engine(s)"
        + (f" and {paired} baseline engine(s), paired" if paired else "")
        + f" in {result.cycles} interleaved blocks each"
        + (f" (pairs still undecided then: looks every {LOOK_STEP} cycles up to "
           f"{result.most_cycles}, at most {settings.pair_budget:g} s)"
           if paired and result.looks > 1 else ""))

    def failed(entry: Entry, exc: BaseException) -> None:
        result.errors[entry.key] = f"{type(exc).__name__}: {exc}"

    result.origin = time.perf_counter()
    schedule = result.schedule or LookSchedule.single(result.cycles)
    looks = run_looks(entries, schedule, still_open(thresholds, schedule),
                      budget_s=settings.pair_budget, control=ControlKernel(), on_error=failed,
                      origin=result.origin, limit_s=settings.build_timeout,
                      on_cycle=progress_line(say, len(entries)))
    result.seconds = looks.seconds
    result.timed_on = sorted({e.case_id for e in looks.timed_on})
    result.stopped_at = dict(sorted(looks.stopped_at.items()))
    result.out_of_budget = looks.out_of_budget
    if result.timed_on:
        say(f"pqbench: {len(result.timed_on)} pair(s) undecided after {result.cycles} cycles "
            f"were timed on (the last stopped at {max(result.stopped_at.values())} cycles)")
    if result.out_of_budget:
        say(f"pqbench: pair budget of {settings.pair_budget:g} s spent; "
            f"{len(result.out_of_budget)} pair(s) still undecided keep their last look")
    for entry in entries:
        if entry.role in ("baseline", "candidate"):
            pairing = result.pairings[entry.case_id]
            if entry.error is not None:
                result.pairings[entry.case_id] = Pairing(
                    False, f"{entry.role} engine failed while timed ({entry.error}); unpaired "
                           "verdict")
            elif pairing.paired:
                setattr(pairing, entry.role, entry.timing)
        elif entry.error is None:
            result.timings[entry.case_id] = entry.timing
    say(f"pqbench: timing phase {result.seconds:.1f} s")
    return result


def timed_entry(key: str, engine: Any, batch: np.ndarray, settings: Any, cycles: int,
                block_s: float = 0.0) -> Entry:
    for _ in range(max(1, settings.warmup_rounds)):
        engine(batch)
    probe = float(np.median(time_calls(engine, batch, 3)))
    # the phase's cycles alone reach the minimums (a paired verdict uses only them); the
    # item's final block comes on top
    per_block = rounds_per_block(probe, cycles, settings.min_rounds, settings.min_time,
                                 settings.max_rounds, block_s)
    return Entry(key, engine, batch, per_block)


def _pair(builder: Builder, case: Case, baseline: Run, batch: np.ndarray,
          entry: Entry) -> tuple[Pairing, list[Entry]]:
    """Load the baseline's portable artefact of ``case`` and pair it with this run's engine
    (``entry``), or say why it cannot be paired."""
    base = baseline.cases.get(case.id)
    if base is None:
        return Pairing(False, "not in the baseline"), []
    workflow = get_workflow(case.workflow)
    artefact = base.fact("artefact")
    if not workflow.portable:
        return Pairing(False, f"workflow {case.workflow!r} has no portable artefact: unpaired "
                              "verdict"), []
    if not isinstance(artefact, dict):
        return Pairing(False, "the baseline run recorded no artefact for this case: unpaired "
                              "verdict"), []
    runtime = _runtime_change(base.fact("versions") or {}, builder.versions, workflow)
    if runtime:
        return Pairing(False, f"{runtime}: pairing would time the new runtime on both sides; "
                              "unpaired verdict"), []
    try:
        base_engine = workflow.load_portable(artefact, builder.threads, builder.device)
    except FileNotFoundError as exc:
        return Pairing(False, f"baseline artefact gone ({exc}): unpaired verdict"), []
    except Exception as exc:
        return Pairing(False, f"baseline artefact could not be loaded ({type(exc).__name__}: "
                              f"{exc}): unpaired verdict"), []
    how = f"paired with the baseline's {artefact.get('format', '?')} artefact"
    candidate: Entry | Any = entry
    if workflow.pair_both_from_artefacts:
        # this engine is not portable: time this run's own artefact against the baseline's
        mine = builder.engine_guarded(case).facts.get("artefact")
        if not isinstance(mine, dict):
            return Pairing(False, "this run's engine has no portable artefact (it did not "
                                  "export): unpaired verdict"), []
        count = instances(case.workflow)
        try:
            # two instances a side where loading is cheap, in mirrored order (b0 c0 c1 b1),
            # alternated over the cycles (``Entry.others``; as pqbench compare does)
            loaded = [workflow.load_portable(mine, builder.threads, builder.device)
                      for _ in range(count)]
            base_more = [workflow.load_portable(artefact, builder.threads, builder.device)
                         for _ in range(count - 1)]
        except Exception as exc:
            return Pairing(False, f"this run's artefact could not be loaded ({exc}): unpaired "
                                  "verdict"), []
        candidate, cand_more = loaded[0], loaded[1:]
        how += " (both sides timed as their artefacts"
        how += f", {count} instances a side)" if count > 1 else ")"
    else:  # this run's built engine as the candidate; the baseline's side alternates two
        cand_more = []
        try:
            base_more = [workflow.load_portable(artefact, builder.threads, builder.device)
                         for _ in range(instances(case.workflow) - 1)]
        except Exception as exc:
            return Pairing(False, f"baseline artefact could not be loaded again ({exc}): "
                                  "unpaired verdict"), []
    base_entry, cand_entry = pair(case.id, base_engine, candidate, batch, entry.rounds_per_block)
    base_entry.others, cand_entry.others = tuple(base_more), tuple(cand_more)
    for engine in (base_engine, *base_more, cand_entry.fn, *cand_more):
        for _ in range(builder.settings.warmup_rounds):
            engine(batch)
    extra = [] if cand_entry is entry else [cand_entry]
    return Pairing(True, how + " in alternating blocks"), [*extra, base_entry]


def _runtime_change(base_versions: dict[str, str], here: dict[str, str],
                    workflow: Workflow) -> str | None:
    names = {VERSION_KEYS.get(k, k): v for k, v in here.items()}
    for package in workflow.runtime_packages:
        key = VERSION_KEYS.get(package, package)
        old, new = base_versions.get(key), names.get(key)
        if old and new and old != new:
            return f"{key} changed ({old} -> {new})"
    return None

