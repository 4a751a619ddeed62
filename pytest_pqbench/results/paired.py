"""``pqbench compare --paired``: re-time two saved runs' engines in alternating blocks, here.

Each run records, per case, the portable artefact its engine ran (``extra_info.artefact``: for
``ort`` the ONNX file with its sha256). When both sides' artefacts still exist, both engines
are loaded in this process (``Workflow.load_portable``) and timed in alternating blocks
(``timing.run_looks``, ABBA order, look after look: the pairs still undecided at a look are
timed on), on a generated batch of the recorded shape: the verdict
then rests on paired block ratios, immune to the host's regime, instead of on two sessions'
figures. A case whose artefacts are gone, or whose workflow has none, keeps the unpaired
verdict and says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..progress import Ticker, seconds
from ..stages.timing import (
    BLOCK_WARMUP,
    PAIRED_BLOCK_S,
    ControlKernel,
    Entry,
    instances,
    pair,
    progress_line,
    rounds_per_block,
    run_looks,
    schedule_for,
    time_calls,
)
from ..workflows import get_workflow
from .compare import PairedTiming, Thresholds, still_open
from .load import Run
from .record import CaseRecord, finite
from .sequential import LOOK_STEP, LookSchedule

PROGRESS_S = 10.0  # a progress line at most this often


def _engine(record: CaseRecord, threads: int, device: str) -> Any:
    workflow = get_workflow(record.workflow)
    if not workflow.portable:
        raise LookupError(f"workflow {record.workflow!r} has no portable artefact")
    artefact = record.fact("artefact")
    if not isinstance(artefact, dict):
        raise LookupError("the run recorded no artefact for this case")
    return workflow.load_portable(artefact, threads, device)


def input_shape(artefact: dict[str, Any], batch_size: int) -> tuple[int, ...]:
    """The input shape the artefact was made for, at ``batch_size``: from the ONNX graph's
    input, or from a torch.export program's first user input (CI found eager torch cases
    unpaired: their program was read as ONNX)."""
    if artefact.get("format") == "torch.export":
        import torch

        program = torch.export.load(str(artefact["path"]))
        first = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == first)
        dims = [d if isinstance(d, int) else 1 for d in node.meta["val"].shape]
    else:
        import onnx

        graph = onnx.load(str(artefact["path"]), load_external_data=False).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    return (batch_size, *[d or 1 for d in dims[1:]])


def pair_runs(base: Run, cand: Run, min_time: float = 1.0, min_rounds: int = 200,
              schedule: LookSchedule | None = None, say: Any = None,
              thresholds: Thresholds | None = None, budget_s: float = 0.0
              ) -> tuple[dict[str, PairedTiming], dict[str, str]]:
    """(case id -> paired blocks, case id -> why it could not be paired). Timed look after
    look (``schedule``, default the full profile's): with ``thresholds`` (their per-test
    alpha), a pair stops once its latency verdict is reached; ``budget_s`` > 0: no look starts
    after that many seconds."""
    schedule = schedule or schedule_for("full")
    cycles = schedule.points[0]
    paired: dict[str, PairedTiming] = {}
    notes: dict[str, str] = {}
    pairs: dict[str, tuple[Entry, Entry]] = {}
    common = [c for c in base.cases if c in cand.cases]
    out = say or (lambda line: None)
    loading = Ticker("pqbench compare: loading and warming up both runs' engines", len(common),
                     every_s=PROGRESS_S, out=out)
    block_s: dict[str, float] = {}  # seconds one cycle of a pair takes (both sides, warm-up in)
    for done, case_id in enumerate(common):
        loading.tick(done, case_id)
        b_rec, c_rec = base.cases[case_id], cand.cases[case_id]
        threads = int(finite(c_rec.fact("threads")) or torch.get_num_threads())
        device = str(c_rec.fact("device") or "cpu")
        try:
            # two instances a side where loading is cheap, in mirrored order (b0 c0 c1 b1): the
            # cycles alternate them (``Entry.others``), so neither an instance's offset nor the
            # creation order sits on one side of every cycle
            count = instances(b_rec.workflow)
            b_engine = _engine(b_rec, threads, device)
            c_engines = [_engine(c_rec, threads, device) for _ in range(count)]
            b_more = [_engine(b_rec, threads, device) for _ in range(count - 1)]
            c_engine = c_engines[0]
            shape = input_shape(c_rec.fact("artefact"), c_rec.batch_size)
        except (LookupError, FileNotFoundError) as exc:
            notes[case_id] = f"not paired: {exc}"
            continue
        except Exception as exc:  # an artefact that no longer loads: unpaired, said so
            notes[case_id] = f"not paired: artefact could not be loaded ({type(exc).__name__}: " \
                             f"{exc})"
            continue
        batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for engine in (b_engine, *b_more, *c_engines):
            for _ in range(BLOCK_WARMUP):
                engine(batch)
        probe = float(np.median(time_calls(c_engine, batch, 3)))
        per_block = rounds_per_block(probe, cycles, min_rounds, min_time, 100_000,
                                     PAIRED_BLOCK_S)
        b_entry, c_entry = pair(case_id, b_engine, c_engine, batch, per_block)
        b_entry.others, c_entry.others = tuple(b_more), tuple(c_engines[1:])
        pairs[case_id] = (b_entry, c_entry)
        block_s[case_id] = 2 * probe * (per_block + BLOCK_WARMUP)
    entries = [e for two in pairs.values() for e in two]
    open_test = still_open(thresholds, schedule)
    cycle_s = sum(block_s.values())
    if entries:
        out(f"pqbench compare: timing {len(entries) // 2} case(s), baseline and candidate "
            f"engines in {cycles} alternating blocks each, about {seconds(cycles * cycle_s)}"
            + (f" (pairs still undecided then: looks every {LOOK_STEP} cycles up to "
               f"{schedule.points[-1]}, at most {seconds(schedule.points[-1] * cycle_s)} in all)"
               if open_test is not None else ""))
    looks = run_looks(entries, schedule, open_test, budget_s=budget_s, control=ControlKernel(),
                      on_cycle=progress_line(out, len(entries), PROGRESS_S))
    if looks.timed_on:
        out(f"pqbench compare: {len(looks.timed_on) // 2} pair(s) undecided after {cycles} "
            f"cycles were timed on (the last stopped at {max(looks.stopped_at.values())})")
    for case_id, (b, c) in pairs.items():
        if b.error is not None or c.error is not None:
            notes[case_id] = f"not paired: an engine failed while timed ({b.error or c.error})"
            continue
        paired[case_id] = PairedTiming.of(b.timing, c.timing,
                                          "paired: both runs' artefacts re-timed here in "
                                          "alternating blocks on a generated batch", schedule)
    return paired, notes
