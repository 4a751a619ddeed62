"""The session's timing phase: build every selected case, then time all of them in interleaved
blocks (and, against a baseline, pair each case with the baseline's engine), before the test
items run.

The flow of a timed session, stage by stage:

    prepare   collect the cases the items will run (deselected and skipped ones are left out)
    build     ``Bench.engine`` for each (pruned model, engine, parity check); a case whose build
              fails keeps its error, which its own item raises: it fails alone
    pair      with ``--pqbench-compare``: load the baseline's portable artefact of each case
              (``Workflow.load_portable``); say why when it cannot
    time      ``timing.run_blocks``: every engine, ``cycles`` blocks each, round-robin; against
              a baseline, in two looks (``timing.run_paired_looks``): the pairs whose latency
              verdict is still open after the first look are timed on
    record    each item adds its own final block through pytest-benchmark, merges the phase's
              rounds into ``benchmark.stats`` and writes the record (``measure.measure``)

Results are kept per case id in ``PhaseResult`` (``config.stash[PHASE_KEY]``), read by the
items, the gate and the terminal summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from .bench import Bench
from .case import Case
from .timing import (
    BLOCKS,
    PAIRED_BLOCK_S,
    ControlKernel,
    Entry,
    Timing,
    looks_for,
    rounds_per_block,
    run_paired_looks,
    time_calls,
)

PHASE_KEY = pytest.StashKey["PhaseResult"]()
RECORD_KEY = pytest.StashKey[dict]()  # item.stash: the case's extra_info record
SAMPLES_KEY = pytest.StashKey[list]()  # item.stash: every timed round (seconds)


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
    most_cycles: int = 0  # of a pair timed on after the first look
    looks: int = 1  # looks planned: a paired verdict tests at alpha / looks
    timed_on: list[str] = field(default_factory=list)  # case ids of pairs timed on
    seconds: float = 0.0
    origin: float = field(default_factory=time.perf_counter)  # block start times count from it
    errors: dict[str, str] = field(default_factory=dict)  # timing errors (builds: Bench)


def cycles_for(settings: Any, paired: bool = False) -> int:
    if paired:
        return looks_for(settings.timing_profile)[0]
    return BLOCKS.get(settings.timing_profile, BLOCKS["full"])


def selected_cases(items: list[pytest.Item], case_arg: str) -> list[Case]:
    """Cases of the items that will run, in item order, once each."""
    seen: dict[str, Case] = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get(case_arg) if callspec is not None else None
        if not isinstance(case, Case) or case.id in seen:
            continue
        if any(m.name in ("skip", "skipif") for m in item.iter_markers()):
            continue
        seen[case.id] = case
    return list(seen.values())


def run_phase(bench: Bench, cases: list[Case], baseline: Any = None,
              write: Any = None, thresholds: Any = None) -> PhaseResult:
    """Build, pair and time ``cases``; never raises for one case's failure. ``thresholds``
    (the gate's ``Thresholds``): pairs whose latency verdict is open after the first look are
    timed on to ``timing.PAIRED_MAX_BLOCKS`` cycles."""
    from .results.compare import planned_looks, still_open

    settings = bench.settings
    paired = baseline is not None
    result = PhaseResult(cycles=cycles_for(settings, paired))
    most = looks_for(settings.timing_profile)[1]
    result.looks = planned_looks(thresholds, result.cycles, most) if paired else 1
    result.most_cycles = most if result.looks > 1 else result.cycles
    entries: list[Entry] = []
    say = write or (lambda line: None)
    for case in cases:
        if bench.skip_reason(case):
            continue
        try:
            engine = bench.engine_guarded(case)
        except (Exception, pytest.skip.Exception, pytest.fail.Exception):
            continue  # kept by Bench.engine_guarded; the case's own item raises it
        batch = bench.dataset(case).batch(case.batch_size)
        try:
            from .faults import time_limit

            with time_limit(settings.build_timeout, f"{case.id}: warm-up",
                            option="--pqbench-build-timeout"):
                entry = timed_entry(case.id, engine, batch, settings, result.cycles,
                                    PAIRED_BLOCK_S if paired else 0.0)
        except Exception as exc:
            result.errors[case.id] = f"{type(exc).__name__}: {exc}"
            continue
        result.rounds_per_block[case.id] = entry.rounds_per_block
        result.batch_shapes[case.id] = tuple(batch.shape)
        entries.append(entry)
        if baseline is not None:
            pairing, pair_entries = _pair(bench, case, baseline, batch, entry)
            result.pairings[case.id] = pairing
            entries += pair_entries
    if not entries:
        return result
    paired = sum(p.paired for p in result.pairings.values())
    own = sum(":" not in e.key for e in entries)
    say(f"pqbench: timing {own} engine(s)"
        + (f" and {paired} baseline engine(s), paired" if paired else "")
        + f" in {result.cycles} interleaved blocks each"
        + (f" (pairs still undecided then: up to {result.most_cycles})"
           if paired and result.looks > 1 else ""))

    def failed(entry: Entry, exc: BaseException) -> None:
        result.errors[entry.key] = f"{type(exc).__name__}: {exc}"

    result.origin = time.perf_counter()
    open_test = still_open(thresholds, result.looks)
    result.seconds, more = run_paired_looks(
        entries, result.cycles, result.most_cycles, open_test, control=ControlKernel(),
        on_error=failed, origin=result.origin, limit_s=settings.build_timeout)
    result.timed_on = sorted({e.key.partition(":")[2] for e in more if ":" in e.key})
    if result.timed_on:
        say(f"pqbench: {len(result.timed_on)} pair(s) undecided after {result.cycles} cycles, "
            f"timed on to {result.most_cycles}")
    for entry in entries:
        side, _, case_id = entry.key.partition(":")
        if side in ("baseline", "candidate"):
            pairing = result.pairings[case_id]
            if entry.error is not None:
                result.pairings[case_id] = Pairing(False, f"{side} engine failed while timed "
                                                          f"({entry.error}); unpaired verdict")
            elif pairing.paired:
                setattr(pairing, side, entry.timing)
        elif entry.error is None:
            result.timings[entry.key] = entry.timing
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


def _pair(bench: Bench, case: Case, baseline: Any, batch: np.ndarray,
          entry: Entry) -> tuple[Pairing, list[Entry]]:
    from .workflows import get_workflow

    base = baseline.cases.get(case.id)
    if base is None:
        return Pairing(False, "not in the baseline"), []
    info = base.get("extra_info") or {}
    workflow = get_workflow(case.workflow)
    loader = getattr(workflow, "load_portable", None)
    artefact = info.get("artefact")
    if loader is None:
        return Pairing(False, f"workflow {case.workflow!r} has no portable artefact: unpaired "
                              "verdict"), []
    if not isinstance(artefact, dict):
        return Pairing(False, "the baseline run recorded no artefact for this case: unpaired "
                              "verdict"), []
    runtime = _runtime_change(info.get("versions") or {}, bench.versions, workflow)
    if runtime:
        return Pairing(False, f"{runtime}: pairing would time the new runtime on both sides; "
                              "unpaired verdict"), []
    try:
        base_engine = loader(artefact, bench.threads, bench.device)
    except FileNotFoundError as exc:
        return Pairing(False, f"baseline artefact gone ({exc}): unpaired verdict"), []
    except Exception as exc:
        return Pairing(False, f"baseline artefact could not be loaded ({type(exc).__name__}: "
                              f"{exc}): unpaired verdict"), []
    extra: list[Entry] = []
    partner = entry
    how = f"paired with the baseline's {artefact.get('format', '?')} artefact"
    if getattr(workflow, "pair_both_from_artefacts", False):
        # this engine is not portable: time this run's own artefact against the baseline's
        mine = bench.engine_guarded(case).facts.get("artefact")
        if not isinstance(mine, dict):
            return Pairing(False, "this run's engine has no portable artefact (it did not "
                                  "export): unpaired verdict"), []
        try:
            partner = Entry(f"candidate:{case.id}", loader(mine, bench.threads, bench.device),
                            batch, entry.rounds_per_block)
        except Exception as exc:
            return Pairing(False, f"this run's artefact could not be loaded ({exc}): unpaired "
                                  "verdict"), []
        extra.append(partner)
        how += " (both sides timed as their artefacts)"
    base_entry = Entry(f"baseline:{case.id}", base_engine, batch, entry.rounds_per_block)
    partner.partner, base_entry.partner = base_entry.key, partner.key
    for engine in (base_engine, partner.fn):
        for _ in range(bench.settings.warmup_rounds):
            engine(batch)
    return Pairing(True, how + " in alternating blocks"), [*extra, base_entry]


def _runtime_change(base_versions: dict[str, str], here: dict[str, str],
                    workflow: Any) -> str | None:
    from .results.record import VERSION_KEYS

    names = {VERSION_KEYS.get(k, k): v for k, v in here.items()}
    for package in getattr(workflow, "runtime_packages", ()):
        key = VERSION_KEYS.get(package, package)
        old, new = base_versions.get(key), names.get(key)
        if old and new and old != new:
            return f"{key} changed ({old} -> {new})"
    return None

