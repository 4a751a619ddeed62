"""The regression gate's statistics on simulated timing data: the figures issue 22 asks for.

    python benchmarks/scripts/gate_simulation.py                 # about 3 minutes on 1 core
    python benchmarks/scripts/gate_simulation.py --draws 4000 --runs 2000

No engine is timed: per-cycle ratios and rounds come from ``tests/gate_sim.py`` (heavy-tailed,
serially correlated, like the 2-vCPU VM's: README, "Regression gate: calibration"), and every
verdict from the product's own code (``results.stats``, ``results.tail``,
``results.sequential``). The design the group-sequential one replaced (two looks at 40 and 100
cycles, alpha / 2 each, normal-approximation interval, ``unchanged`` when the MDE <= threshold)
runs on the same draws (``gate_sim.legacy_two_looks``). Printed: false-alarm rates, the verdict
rule's power at the threshold and twice it (simulated and by the normal approximation), the
MDE check, the run-level false-alarm rate of an A/A run of the default suite, and power and
average cycles of the look schedule against the two looks. Each rate is followed by its
standard error.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from gate_sim import legacy_two_looks, run_alarms, vm_log_ratios, vm_rounds  # noqa: E402

from pytest_pqbench.results import stats  # noqa: E402
from pytest_pqbench.results.sequential import (  # noqa: E402
    LookSchedule,
    per_test_alpha,
    sequential_logs,
)
from pytest_pqbench.results.tail import paired_tail_logs  # noqa: E402

CODES = stats.VERDICT_CODES
TESTS = 24  # default suite: 12 cases x (latency, p99)


def rate(hits: np.ndarray) -> str:
    p, n = float(np.mean(hits)), hits.size
    return f"{p:6.1%} (se {math.sqrt(max(p * (1 - p), 1e-12) / n):.1%})"


def single(d: np.ndarray, threshold: float, alpha: float) -> np.ndarray:
    out = stats.paired_logs(d, alpha)
    return stats.decide_logs(out["change"], out["lo"], out["hi"], threshold)


def false_alarms(draws: int, seed: int) -> None:
    print("\n## False alarms of one A/A test (threshold 0, alpha 0.1: every significant "
          "result counts)")
    schedule = LookSchedule.build()
    for rho in (0.0, 0.3, 0.5):
        d = vm_log_ratios(np.random.default_rng(seed), draws, 100, sd=0.04, rho=rho)
        seq, _ = sequential_logs(d, 0.0, 0.1, schedule)
        old, _ = legacy_two_looks(d, 0.0, 0.1)
        one = single(d[:, :40], 0.0, 0.1)
        print(f"  AR(1) {rho}: one look of 40 {rate(one <= 1)}, look schedule {rate(seq <= 1)},"
              f" old two looks {rate(old <= 1)}")
    base, cand = vm_rounds(np.random.default_rng(seed), draws, 40, 17)
    out = paired_tail_logs(base, cand, 0.1, grid=(0.0,))
    alarms = stats.decide_logs(out["change"], out["lo"], out["hi"], 0.0) <= 1
    print(f"  p99, 40 cycles x 17 rounds: {rate(alarms)}")


def power(draws: int, seed: int) -> None:
    print("\n## The verdict rule's power at the threshold t and at 2t (one look of 40 "
          "cycles, alpha 0.002, t = 3%)")
    t, alpha = 0.03, 0.002
    for sd in (0.03, 0.06):
        d = vm_log_ratios(np.random.default_rng(seed), draws, 40, sd=sd)
        out = stats.paired_logs(d, alpha)
        spread = float(np.std(out["change"]))
        half = (out["hi"] - out["lo"]) / 2
        row = [f"  per-cycle sd {sd:.0%}:"]
        for change in (t, 2 * t):
            hits = single(d + math.log1p(change), t, alpha) == 0
            normal = np.mean([stats.verdict_power(change, spread, t, alpha, half_width=h)
                              for h in half])
            row.append(f"+{change:.0%} regressed {rate(hits)} (normal approx. {normal:.1%})")
        mdes = np.log1p([stats.Estimate(1.0, None, (math.exp(lo), math.exp(hi)), "", "", alpha)
                         .mde_at(t) for lo, hi in zip(out["lo"], out["hi"], strict=True)])
        own = stats.decide_logs(out["change"] + mdes, out["lo"] + mdes, out["hi"] + mdes, t)
        mde = float(np.median(mdes))
        hits = single(d + mde, t, alpha) == 0
        row.append(f"a change of each draw's MDE regressed {rate(own == 0)}; of the median MDE "
                   f"({math.expm1(mde):.1%}) {rate(hits)}")
        print(row[0] + " " + "; ".join(row[1:]))


def run_level(runs: int, seed: int) -> None:
    print(f"\n## A/A runs of the default suite (12 paired cases x latency 3%, p99 20%; "
          f"{runs} runs): any false alarm")
    schedule = LookSchedule.build()
    alpha = per_test_alpha(0.01, TESTS)
    for label, a, lat, p99 in (("run budget 1% (alpha 1%/24 per test)", alpha, 0.03, 0.2),
                               ("  same, thresholds 0 (every significance)", alpha, 0.0, 0.0),
                               ("no run budget (alpha 1% per test)", 0.01, 0.03, 0.2),
                               ("  same, thresholds 0", 0.01, 0.0, 0.0)):
        hits = run_alarms(np.random.default_rng(seed), runs, a, schedule, lat, p99)
        print(f"  {label}: {rate(hits)}")


def looks(draws: int, seed: int) -> None:
    schedule = LookSchedule.build()
    print(f"\n## Look schedule {schedule.points} (alpha shares "
          f"{', '.join(f'{s:.3f}' for s in schedule.shares)}) vs the old two looks (40, 100)")
    for alpha, label in ((0.002, "alpha 0.002 per test (the old default)"),
                         (per_test_alpha(0.01, TESTS), "alpha 1%/24 per test (run budget)")):
        print(f"  {label}:")
        for rho in (0.0, 0.3):
            for sd in (0.03, 0.05):
                row = [f"    AR(1) {rho}, sd {sd:.0%}:"]
                for change, t in ((0.0, 0.03), (0.025, 0.03), (0.03, 0.03), (0.05, 0.03),
                                  (0.06, 0.03), (0.02, 0.01)):
                    d = vm_log_ratios(np.random.default_rng(seed), draws, 100, sd=sd, rho=rho,
                                      change=change)
                    new, used = sequential_logs(d, t, alpha, schedule)
                    old, old_used = legacy_two_looks(d, t, alpha)
                    want = 2 if change == 0 else 0
                    what = "unchanged" if change == 0 else "regressed"
                    row.append(f"+{change * 100:g}% at {t:.0%}: {what} "
                               f"{np.mean(new == want):.1%} in {used.mean():.0f} cycles (old "
                               f"{np.mean(old == want):.1%} in {old_used.mean():.0f})")
                print(" ".join(row[:1]) + "\n      " + "\n      ".join(row[1:]))


def shapes(draws: int, seed: int) -> None:
    print("\n## Spending shapes (alpha 0.002 per test, sd 4%, AR(1) 0.3): regressed / unchanged "
          "and average cycles")
    designs = {"half at the last look, linear before (default)": LookSchedule.build(),
               "all alpha by tau^3 (O'Brien-Fleming-like)": LookSchedule.build(final=None,
                                                                                 rho=3.0),
               "all alpha by Pocock's shape": LookSchedule.build(final=None, shape="pocock")}
    for name, schedule in designs.items():
        row = [f"  {name}:"]
        for change, t in ((0.0, 0.03), (0.05, 0.03), (0.02, 0.01)):
            d = vm_log_ratios(np.random.default_rng(seed), draws, 100, sd=0.04, rho=0.3,
                              change=change)
            codes, used = sequential_logs(d, t, 0.002, schedule)
            want = 2 if change == 0 else 0
            row.append(f"+{change * 100:g}% at {t:.0%} {np.mean(codes == want):.1%} in "
                       f"{used.mean():.0f}")
        print(row[0] + " " + "; ".join(row[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000, help="draws per property")
    parser.add_argument("--runs", type=int, default=1000, help="simulated A/A runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    false_alarms(args.draws, args.seed)
    power(args.draws, args.seed)
    run_level(args.runs, args.seed)
    looks(args.draws // 2, args.seed)
    shapes(args.draws // 2, args.seed)


if __name__ == "__main__":
    main()
