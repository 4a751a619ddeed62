"""Every pruner on the embedded model: params, MACs, accuracy before / after a short fine-tune,
and ``torch`` FP32 latency at one batch size, as one table (issue 3's figures).

    python benchmarks/scripts/pruner_table.py                      # shapes_resnet, 0.2 and 0.5
    python benchmarks/scripts/pruner_table.py --ratios 0.3 --epochs 2 --json table.json

It drives the same stages (``Builder``) the pytest suite uses (same cache, pruning, recovery
and engines)
and times the engine with ``torch.utils.benchmark`` (median of blocked runs). Run it on an idle
machine: latency measured while other work runs is not a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import polars as pl
from torch.utils.benchmark import Timer

from pytest_pqbench.case import PrunerSpec
from pytest_pqbench.config import Settings
from pytest_pqbench.pruners import PRUNERS, fixed_ratio_names
from pytest_pqbench.stages.build import Builder

ROOT = Path(__file__).resolve().parents[2]


def pruner_tokens(ratios: list[float]) -> list[str]:
    tokens, fixed = ["none"], fixed_ratio_names()
    for name in PRUNERS.names():
        if name in fixed:
            tokens += [] if name == "none" else [name]
        else:  # as case ids spell them: l1_0.3, never the ambiguous l10.3
            tokens += [PrunerSpec(name, r, False).token for r in ratios]
    return tokens


def table(model: str, ratios: list[float], epochs: int, batch_size: int,
          min_run_time: float, passes: int = 3) -> pl.DataFrame:
    settings = Settings.resolve({"models": [model], "pruners": pruner_tokens(ratios),
                                 "workflows": ["torch"], "precisions": ["fp32"],
                                 "batch_sizes": [batch_size], "finetune_epochs": epochs}, {}, {})
    cache = Path(os.environ.get("PQBENCH_CACHE_DIR", ROOT / ".pqbench-cache"))
    bench = Builder.open(settings, cache)
    rows, engines = [], []
    # Build (prune, fine-tune, evaluate) everything first, then time: a timing taken right after
    # a fine-tune sees a busier, colder machine than one taken later, and ranks by build order.
    for case in settings.cases():
        pruned = bench.prep.pruned(case)
        report, recovery = pruned.report, pruned.recovery
        engine = bench.engine(case)
        accuracy = bench.accuracy(case)["accuracy"]
        engines.append((engine, bench.prep.dataset(case).batch(case.batch_size)))
        rows.append({
            "pruner": case.pruner.token, "structure": report.structure,
            "params": report.params, "params_kept": report.params / report.params_before,
            "macs_m": report.macs / 1e6, "zero_fraction": report.zero_fraction,
            "acc_before_ft": recovery.get("accuracy_before_recovery", accuracy),
            "acc_after_ft": recovery.get("accuracy_after_recovery", accuracy),
            "model_bytes": report.model_bytes,
        })
    # Round-robin passes: slow drift of the machine hits every pruner alike; report the median
    # over passes of each pass's median, and the spread of those medians.
    medians: list[list[float]] = [[] for _ in engines]
    for _ in range(passes):
        for i, (engine, batch) in enumerate(engines):
            timing = Timer("engine(batch)", globals={"engine": engine, "batch": batch},
                           num_threads=bench.threads).blocked_autorange(min_run_time=min_run_time)
            medians[i].append(timing.median * 1e3)
    for row, samples in zip(rows, medians, strict=True):
        row["p50_ms"] = statistics.median(samples)
        row["spread_ms"] = max(samples) - min(samples)
    base = next(r["p50_ms"] for r in rows if r["pruner"] == "none")
    return pl.DataFrame(rows).with_columns((base / pl.col("p50_ms")).alias("speedup"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes_resnet")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after pruning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds timed per case")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    df = table(args.model, ratios, args.epochs, args.batch_size, args.min_run_time)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200,
                   tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True):
        print(df)
    if args.json:
        args.json.write_text(json.dumps(df.to_dicts(), indent=1))


if __name__ == "__main__":
    main()
