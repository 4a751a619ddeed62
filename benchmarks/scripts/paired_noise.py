"""How much a paired A/A comparison moves on this machine, per case of the default suite.

    python benchmarks/scripts/paired_noise.py --cycles 40 --block-ms 50
    python benchmarks/scripts/paired_noise.py --cycles 10 --rounds 20 --statistic median

For every case of ``[tool.pqbench]`` (the default suite; built or loaded from the artefact
cache), two engines are made from the case's one portable artefact (the baseline side of the
paired gate: ``Workflow.load_portable``; eager torch gets both sides from its exported program,
as the gate does) and timed against each other in alternating blocks (``timing.run_blocks``, all
cases round-robin, as the timing phase does). The product's paired test (``stats.paired``) is then
applied to each block's fastest round (``--statistic min``, what the gate uses) or median: the
A/A change, its p-value and the MDE; and the same data with the candidate's rounds multiplied by
1.05 (a synthetic +5%: only to compare designs; the gate's real detection figures come from
``gate_calibration.py``, which plants real extra work).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from pytest_pqbench.config import Settings, read_pyproject
from pytest_pqbench.results import stats
from pytest_pqbench.stages.build import Builder
from pytest_pqbench.stages.timing import pair, rounds_per_block, run_blocks, time_calls
from pytest_pqbench.workflows import get_workflow

ROOT = Path(__file__).resolve().parents[2]
ALPHA, THRESHOLD = 0.002, 0.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5, help="minimum rounds per block")
    parser.add_argument("--block-ms", type=float, default=50.0, help="minimum block length")
    parser.add_argument("--statistic", choices=("min", "median"), default="min")
    parser.add_argument("--threads", type=int, default=0, help="0: the suite's default")
    args = parser.parse_args()
    cli = {"threads": args.threads} if args.threads else {}
    settings = Settings.resolve(cli, {}, read_pyproject(ROOT / "pyproject.toml"))
    bench = Builder.open(settings, ROOT / ".pqbench-cache")
    pairs = []
    for case in (c for c in settings.cases() if not bench.skip_reason(c)):
        engine, batch = bench.engine(case), bench.prep.dataset(case).batch(case.batch_size)
        workflow = get_workflow(case.workflow)
        artefact = engine.facts["artefact"]
        base = workflow.load_portable(artefact, bench.threads, bench.device)
        cand = (workflow.load_portable(artefact, bench.threads, bench.device)
                if workflow.pair_both_from_artefacts else engine)
        for _ in range(3):
            base(batch), cand(batch)
        probe = float(np.median(time_calls(cand, batch, 3)))
        per_block = rounds_per_block(probe, args.cycles, args.rounds * args.cycles, 0.0,
                                     100_000, args.block_ms / 1e3)
        a, b = pair(case.id, base, cand, batch, per_block)
        pairs.append((case.id, a, b))
    seconds = run_blocks([e for _, a, b in pairs for e in (a, b)], args.cycles)
    print(f"{len(pairs)} cases, {args.cycles} cycles, blocks >= {args.rounds} rounds and "
          f">= {args.block_ms:g} ms, statistic {args.statistic}: {seconds:.0f} s")
    pick = np.min if args.statistic == "min" else np.median
    mdes, found, false_alarms, spread = [], 0, 0, []
    for case_id, a, b in pairs:
        base_ms = [float(pick(blk.samples)) * 1e3 for blk in a.timing.blocks]
        cand_ms = [float(pick(blk.samples)) * 1e3 for blk in b.timing.blocks]
        same = stats.paired(base_ms, cand_ms, ALPHA)
        slower = stats.paired(base_ms, [m * 1.05 for m in cand_ms], ALPHA)
        false_alarms += stats.decide(same, THRESHOLD, ALPHA) in ("regressed", "improved")
        found += stats.decide(slower, THRESHOLD, ALPHA) == "regressed"
        mdes.append(same.mde_at(THRESHOLD))  # the verdict's MDE at the gate's threshold
        # how far apart the two blocks of one cycle are: |log ratio|, median and 90th percentile
        gaps = np.abs(np.log(np.asarray(cand_ms) / np.asarray(base_ms)))
        spread.append(np.percentile(gaps, [50, 90]))
        print(f"  {case_id:40s} A/A x{same.ratio:.3f} p {same.p_value:.2g} MDE "
              f"{mdes[-1]:.1%}  cycle gap p50 {spread[-1][0]:.1%} p90 {spread[-1][1]:.1%}  "
              f"(+5%: {stats.decide(slower, THRESHOLD, ALPHA)})")
    finite = [m for m in mdes if math.isfinite(m)]
    interval = (f"MDE median {np.median(mdes):.1%}, range {min(finite):.1%}-{max(mdes):.1%}"
              if finite else "MDE infinite: too few cycles for an interval at alpha 0.002")
    gap = np.asarray(spread)
    print(f"A/A false alarms {false_alarms} of {len(pairs)}; synthetic +5% found in {found} of "
          f"{len(pairs)}; {interval}; per-cycle |log ratio| median {gap[:, 0].min():.1%}-"
          f"{gap[:, 0].max():.1%}, 90th percentile {gap[:, 1].min():.1%}-{gap[:, 1].max():.1%}")


if __name__ == "__main__":
    main()
