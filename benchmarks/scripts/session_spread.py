"""Between-session spread of each case's latency, by block statistic.

    python benchmarks/scripts/session_spread.py out/gate/aa_0.json out/gate/aa_1.json ...

For each case of several runs of one commit (separate sessions): each run's centre is the median
over its blocks of the block median, 10th percentile or fastest round (log scale); the standard
deviation of those centres across runs is the between-session spread, printed with the mean
within-session block spread. ``pqbench noise`` reports the median version for the gate; this
script answers whether another block statistic would narrow it.
"""

from __future__ import annotations

import json
import sys

import numpy as np

STATISTICS = {"median": np.median, "p10": lambda x: np.percentile(x, 10), "fastest": np.min}


def blocks(entry: dict) -> list[np.ndarray]:
    data = np.asarray(entry["stats"]["data"])
    return [data[b["offset"]:b["offset"] + b["rounds"]] for b in entry["extra_info"]["blocks"]]


def main(paths: list[str]) -> None:
    runs = [json.load(open(p)) for p in paths]
    by_case = [{b["extra_info"]["case_id"]: b for b in r["benchmarks"]
                if "case_id" in b["extra_info"]} for r in runs]
    spreads: dict[str, list[float]] = {name: [] for name in STATISTICS}
    for case_id in sorted(set.intersection(*(set(c) for c in by_case))):
        line = []
        for name, pick in STATISTICS.items():
            per_run = [np.log([pick(x) for x in blocks(c[case_id])]) for c in by_case]
            between = float(np.std([np.median(v) for v in per_run], ddof=1))
            within = float(np.mean([np.std(v, ddof=1) for v in per_run]))
            spreads[name].append(between)
            line.append(f"{name} {between:6.1%} / {within:5.1%}")
        print(f"{case_id:40s} " + "  ".join(line))
    print("between / within-session sd per statistic; median between over the cases: "
          + ", ".join(f"{n} {np.median(v):.1%}" for n, v in spreads.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
