"""Measure the changepoint libraries on issue 23's series, to choose one by the numbers.

    python benchmarks/scripts/changepoint_libraries.py --draws 200

Needs the candidates installed (their declared pins fight this project's numpy / scipy, and
apache-otava's pull in cloud clients; their algorithms import without them):
``pip install --no-deps apache-otava==0.8.0 signal-processing-algorithms==2.1.6 ruptures==1.1.10
structlog more-itertools``.

Series (30 runs, values on the log scale, as ``results.history`` feeds a detector): steps of
+5% at run 10 and +3% at run 20, a creep of +1% per run over runs 22-27 (then flat); and an
A/A series (nothing changes). Noise: each run is one session, so the between-session spread of
a case's centre is the noise: Gaussian at several sds, and a contaminated model where one
session in ten is 15% slow (a noisy neighbour for the whole session). Scored per draw: a step is
found when a changepoint's first changed run lies within one run of the planted one; the creep
when a changepoint lies in runs 22-28; every other changepoint is false. Prints a markdown table
for docs/how-to/history.md.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable

import numpy as np

RUNS = 30
STEPS = {10: 0.05, 20: 0.03}  # first changed run (1-based) -> relative step
CREEP = (22, 27, 0.01)  # runs 22..27 each 1% slower than the one before


def planted_log_means(runs: int = RUNS) -> np.ndarray:
    level = np.zeros(runs)
    for run in range(1, runs + 1):
        for at, step in STEPS.items():
            if run >= at:
                level[run - 1] += math.log1p(step)
        first, last, per_run = CREEP
        if run >= first:
            level[run - 1] += (min(run, last) - first + 1) * math.log1p(per_run)
    return level


def noise(rng: np.random.Generator, model: str, runs: int = RUNS) -> np.ndarray:
    kind, _, value = model.partition(":")
    sd = float(value) / 100
    draws = rng.normal(0.0, sd, runs)
    if kind == "contaminated":
        draws += np.where(rng.random(runs) < 0.1, math.log(1.15), 0.0)
    return draws


# ---- the candidates: each returns the first changed index (0-based) of every changepoint -----
def spa(pvalue: float) -> Callable[[np.ndarray, int], list[int]]:
    from signal_processing_algorithms.energy_statistics.energy_statistics import e_divisive

    def detect(series: np.ndarray, seed: int) -> list[int]:
        np.random.seed(seed)  # its permutation test draws from numpy's global generator
        return sorted(int(i) for i in e_divisive(series, pvalue=pvalue, permutations=100))

    return detect


def otava_windowed(pvalue: float, window: int = 50) -> Callable[[np.ndarray, int], list[int]]:
    from otava.analysis import compute_change_points

    def detect(series: np.ndarray, seed: int) -> list[int]:
        points, _ = compute_change_points(list(series), window_len=window, max_pvalue=pvalue)
        return sorted(int(p.index) for p in points)

    return detect


def otava_original(pvalue: float) -> Callable[[np.ndarray, int], list[int]]:
    from otava.analysis import compute_change_points_orig

    def detect(series: np.ndarray, seed: int) -> list[int]:
        points, _ = compute_change_points_orig(np.asarray(series), max_pvalue=pvalue, seed=seed)
        return sorted(int(p.index) for p in points)

    return detect


def ruptures_pelt(model: str, factor: float) -> Callable[[np.ndarray, int], list[int]]:
    import ruptures
    from scipy import stats

    def detect(series: np.ndarray, seed: int) -> list[int]:
        # ruptures has no significance test: a penalty stands in for one. Its documented BIC
        # penalty, log(n) * sigma^2, with sigma from the run-to-run differences (robust to the
        # steps themselves: a step is one large difference)
        sigma = stats.median_abs_deviation(np.diff(series), scale="normal") / math.sqrt(2)
        pen = factor * math.log(len(series)) * max(sigma, 1e-9) ** 2
        algo = ruptures.Pelt(model=model, min_size=2, jump=1).fit(series.reshape(-1, 1))
        return [int(i) for i in algo.predict(pen=pen)[:-1]]

    return detect


CANDIDATES: dict[str, Callable[[], Callable[[np.ndarray, int], list[int]]]] = {
    "signal-processing-algorithms e_divisive p=0.05": lambda: spa(0.05),
    "signal-processing-algorithms e_divisive p=0.01": lambda: spa(0.01),
    "apache-otava (Hunter: windowed, t-test merge) p=0.001": lambda: otava_windowed(0.001),
    "apache-otava (Hunter) p=0.01": lambda: otava_windowed(0.01),
    "apache-otava original E-Divisive p=0.05": lambda: otava_original(0.05),
    "apache-otava original E-Divisive p=0.01": lambda: otava_original(0.01),
    "ruptures Pelt l2, BIC penalty": lambda: ruptures_pelt("l2", 1.0),
    "ruptures Pelt l2, 3x BIC penalty": lambda: ruptures_pelt("l2", 3.0),
}


def score(found: list[int]) -> dict[str, float]:
    runs = [i + 1 for i in found]  # first changed run, 1-based
    near = {at: any(abs(r - at) <= 1 for r in runs) for at in STEPS}
    creep = any(CREEP[0] <= r <= CREEP[1] + 1 for r in runs)
    false = sum(1 for r in runs if not (any(abs(r - at) <= 1 for at in STEPS)
                                        or CREEP[0] <= r <= CREEP[1] + 1))
    return {"step10": near[10], "step20": near[20], "creep": creep, "false": false,
            "points": len(runs)}


def measure(name: str, noise_model: str, draws: int) -> dict[str, float]:
    detect = CANDIDATES[name]()
    level = planted_log_means()
    totals = {"step10": 0.0, "step20": 0.0, "creep": 0.0, "false": 0.0, "aa_any": 0.0,
              "aa_points": 0.0, "seconds": 0.0}
    creep_points = []
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        started = time.perf_counter()
        found = detect(level + noise(rng, noise_model), draw)
        aa = detect(noise(rng, noise_model), draw + 10_000)
        totals["seconds"] += (time.perf_counter() - started) / 2
        s = score(found)
        for key in ("step10", "step20", "creep", "false"):
            totals[key] += s[key]
        creep_points.append(sum(CREEP[0] <= i + 1 <= CREEP[1] + 1 for i in found))
        totals["aa_any"] += bool(aa)
        totals["aa_points"] += len(aa)
    out = {k: v / draws for k, v in totals.items()}
    out["creep_points"] = float(np.mean(creep_points))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--noise", nargs="+",
                        default=["gauss:0.5", "gauss:1", "gauss:2", "contaminated:1"],
                        help="between-session noise models: gauss:SD%% or contaminated:SD%%")
    parser.add_argument("--only", default="", help="candidates whose name contains this")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # otava's t-test warns on zero-variance segments
    print(f"{args.draws} draws per cell; steps found within one run; creep: a changepoint in "
          "runs 22-28; false: other changepoints per planted series; A/A: share of 30-run "
          "A/A series with any changepoint (and changepoints per series)\n")
    print("| noise (session sd) | library, setting | +5% @10 | +3% @20 | creep | creep points "
          "| false / series | A/A any | A/A points | ms / series |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for noise_model in args.noise:
        for name in CANDIDATES:
            if args.only not in name:
                continue
            m = measure(name, noise_model, args.draws)
            print(f"| {noise_model}% | {name} | {m['step10']:.0%} | {m['step20']:.0%} | "
                  f"{m['creep']:.0%} | {m['creep_points']:.2f} | {m['false']:.2f} | "
                  f"{m['aa_any']:.1%} | {m['aa_points']:.2f} | {m['seconds'] * 1e3:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
