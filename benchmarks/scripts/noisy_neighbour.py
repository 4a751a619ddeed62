"""A noisy neighbour for gate calibration: a process that takes one vCPU in bursts of random
length (0.3-3 s busy, 0.3-3 s idle), so timings on a quiet machine see the host regimes a
shared 2-core VM shows (seconds at one speed, then at another). Used by
``gate_calibration.py --neighbour``; run alone until Ctrl-C:

    python benchmarks/scripts/noisy_neighbour.py [--seed 0] [--duty 0.5]
"""

from __future__ import annotations

import argparse
import random
import time


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:  # pure Python: one thread, no library thread pools
        for i in range(10_000):
            x += i * i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duty", type=float, default=0.5, help="share of time busy")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    while True:
        burn(rng.uniform(0.3, 3.0) * args.duty * 2)
        time.sleep(rng.uniform(0.3, 3.0) * (1 - args.duty) * 2)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
