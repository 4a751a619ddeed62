"""Calibrate the regression gate on this machine (issue 12's targets), with real runs only.

    python benchmarks/scripts/gate_calibration.py --out out/gate aa --runs 5
    python benchmarks/scripts/gate_calibration.py --out out/gate paired --runs 10 --factor 1.05
    python benchmarks/scripts/gate_calibration.py --out out/gate unpaired --runs 10 --factor 1.10
    python benchmarks/scripts/gate_calibration.py --out out/gate summary
    python benchmarks/scripts/gate_calibration.py --out out/loaded --neighbour paired --runs 5
    python benchmarks/scripts/gate_calibration.py --out out/gate --noise out/gate/noise.json \
        unpaired --runs 10 --factor 1.10

``--neighbour``: ``noisy_neighbour.py`` takes one vCPU in random bursts for the whole step, to
see the gate under the host regimes of a shared VM on a machine that happens to be quiet.
``--slow-case`` / ``--plant``: which case is slowed and how: ``engine`` (``slowdown_plugin``:
the built engine does extra work; ort cases) or ``model`` (``plant_model_plugin``: the model
itself, so every artefact carries it; needed for inductor and eager torch, whose pairs are
timed from their artefacts) or ``matmul`` (``plant_model_plugin`` with one extra product of a
calibrated width: fine enough for +5% of a compiled inductor call) or ``onnx``
(``history_plant_plugin``: extra multiply-adds in the ONNX file, the width calibrated by a
paired probe: fine enough for +2%, which one more image of a batch of 32 overshoots).
``--suite-args`` selects the suite's slice.

``aa``: the default suite (``pytest benchmarks``, full timing) run N times; every pair of runs
compared with ``pqbench compare --paired never`` (the unpaired gate on saved runs) and with the
default ``--paired auto`` for consecutive pairs (every pair with ``--all-pairs``), latency and
p99; false alarms counted; ``pqbench noise`` on all.
``paired``: N runs of the suite gated in-pytest against the first A/A run
(``--pqbench-compare``), one case's engine slowed by real extra work (``slowdown_plugin``);
counts detections of that case and false alarms on the others.
``unpaired``: N runs with the slowed case, each compared with an A/A run by
``pqbench compare --paired never``.
Every verdict comes from the product's own commands; this script only runs them and counts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLOW = {"case": "shapes_resnet-none-ort-int8-bs32", "plant": "engine"}


SUITE_ARGS: list[str] = []  # --suite-args: e.g. "-k shapes_resnet" for a quick check


def suite(out: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out}", *SUITE_ARGS, *extra]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    if done.returncode not in (0, 1) or not out.exists():
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-2000:]}")
    print(f"  {out.name}: exit {done.returncode}", flush=True)


def compare(base: Path, cand: Path, *extra: str, metrics: tuple[str, ...] = ("latency",)
            ) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "pytest_pqbench.cli", "compare", str(base),
                           str(cand), "--format", "json", *extra], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"compare {base} {cand}: {done.stderr}")
    return [r for r in json.loads(done.stdout)["rows"] if r["metric"] in metrics]


def count(rows: list[dict], slow: str | None = None) -> dict:
    out = {"comparisons": 0, "false_alarms": 0, "cannot_decide": 0, "detected": 0,
           "slow_seen": 0, "verdicts": {}}
    for r in rows:
        if r["case_id"] == slow:
            out["slow_seen"] += 1
            out["detected"] += r["verdict"] == "regressed"
            continue
        out["comparisons"] += 1
        out["verdicts"][r["verdict"]] = out["verdicts"].get(r["verdict"], 0) + 1
        out["false_alarms"] += r["verdict"] in ("regressed", "improved")
        out["cannot_decide"] += r["verdict"] == "cannot decide"
    return out


def aa(args: argparse.Namespace) -> dict:
    runs = [args.out / f"aa_{i}.json" for i in range(args.runs)]
    for run in runs:
        if not run.exists():
            suite(run)
    unpaired = []
    for a, b in itertools.combinations(runs, 2):
        unpaired += compare(a, b, "--paired", "never")
    paired, runs_alarmed = [], 0
    pairs = (itertools.combinations(runs, 2) if args.all_pairs
             else zip(runs, runs[1:], strict=False))
    for a, b in pairs:
        rows = compare(a, b, metrics=("latency", "p99"))
        runs_alarmed += any(r["verdict"] in ("regressed", "improved") for r in rows)
        paired += rows
    noise = subprocess.run([sys.executable, "-m", "pytest_pqbench.cli", "noise", *map(str, runs),
                            "--write", str(args.out / "noise.json")], cwd=ROOT,
                           capture_output=True, text=True)
    print(noise.stdout)
    return {"unpaired": count(unpaired),
            "paired_cli": count([r for r in paired if r["metric"] == "latency"]),
            "paired_cli_p99": count([r for r in paired if r["metric"] == "p99"]),
            "paired_comparisons_with_any_false_alarm": runs_alarmed,
            "mde_unpaired": sorted(round(r["mde"], 4) for r in unpaired if r["mde"] is not None),
            "noise": noise.stdout}


def cycles_of(row: dict) -> str:
    """The paired cycles a latency verdict rests on, from its detail ("... 40 paired cycles")."""
    return row["detail"].split(" paired cycles")[0].rsplit(" ", 1)[-1]


def slowed(args: argparse.Namespace, mode: str) -> dict:
    slow_case = SLOW["case"]
    scripts = ROOT / "benchmarks" / "scripts"
    env = {"PYTHONPATH": f"{scripts}:{os.environ.get('PYTHONPATH', '')}"}
    baselines = sorted(args.out.glob("aa_*.json"))
    if not baselines:
        raise SystemExit("run the aa step first: its runs are the baselines")
    if SLOW["plant"] == "onnx":  # fine-grained: extra multiply-adds in the ONNX file (ort)
        sys.path.insert(0, str(scripts))
        from history_benchmark import calibrate

        cache = Path(os.environ.get("PQBENCH_CACHE_DIR", ROOT / ".pqbench-cache"))
        widths, notes = calibrate(baselines[0], [args.factor], cache, slow_case)
        print("  " + "; ".join(notes), flush=True)
        plugin = "history_plant_plugin"
        env.update(PQBENCH_PLANT_CASE=slow_case, PQBENCH_PLANT_WIDTH=str(widths[args.factor]))
    else:
        plugin, prefix = (("slowdown_plugin", "PQBENCH_SLOW") if SLOW["plant"] == "engine"
                          else ("plant_model_plugin", "PQBENCH_PLANT"))
        env.update({f"{prefix}_CASE": slow_case, f"{prefix}_FACTOR": str(args.factor)})
        if SLOW["plant"] == "matmul":
            plugin = "plant_model_plugin"
            env.update(PQBENCH_PLANT_CASE=slow_case, PQBENCH_PLANT_FACTOR=str(args.factor),
                       PQBENCH_PLANT_KIND="matmul")
    rows, planted, cycles, phase_s, runs_alarmed = [], [], [], [], 0
    for i in range(args.runs):
        out = args.out / f"{mode}_{args.factor}_{i}.json"
        base = baselines[i % len(baselines)]
        extra = ["-p", plugin]
        if mode == "paired":
            extra.append(f"--pqbench-compare={base}")
        if not out.exists():
            suite(out, *extra, env=env)
        run = json.loads(out.read_text())
        if mode == "paired":
            gated = [r for r in run["pqbench"]["compare"]["rows"]
                     if r["metric"] in ("latency", "p99")]
            runs_alarmed += any(r["verdict"] in ("regressed", "improved") for r in gated
                                if r["case_id"] != slow_case)
            got = [r for r in gated if r["metric"] == "latency"]
            rows += [r for r in got if "Wilcoxon signed-rank" in r["detail"]]
            slow = [r for r in got if r["case_id"] == slow_case]
            planted += [r["change"] for r in slow]
            cycles += [cycles_of(r) for r in slow]
            phase_s.append(round(run["pqbench"]["timing_phase"]["seconds"], 1))
        else:
            got = compare(base, out, "--paired", "never",
                          *(["--noise", str(args.noise)] if args.noise else []))
            rows += got
            planted += [r["change"] for r in got if r["case_id"] == slow_case]
    return {"factor": args.factor, "slow_case": slow_case, "plant": SLOW["plant"],
            "counts": count(rows, slow_case), "runs_with_a_false_alarm": runs_alarmed,
            "timing_phase_s": phase_s,
            "measured_ratio_of_slowed_case": [round(x, 4) for x in planted],
            "verdicts_slowed": [r["verdict"] for r in rows if r["case_id"] == slow_case],
            "mde_slowed": [round(r["mde"], 4) for r in rows
                           if r["case_id"] == slow_case and r["mde"] is not None],
            "cycles_slowed": cycles,
            "mde_others": sorted(round(r["mde"], 4) for r in rows
                                 if r["case_id"] != slow_case and r["mde"] is not None),
            "cycles_others": sorted({cycles_of(r) for r in rows if r["case_id"] != slow_case})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gate")
    parser.add_argument("--suite-args", default="", help="extra pytest arguments for every run")
    parser.add_argument("--noise", type=Path, default=None,
                        help="unpaired: compare with this pqbench noise file (the aa step writes "
                             "OUT/noise.json)")
    parser.add_argument("--slow-case", default=SLOW["case"], help="the case slowed")
    parser.add_argument("--plant", choices=("engine", "model", "matmul", "onnx"),
                        default="engine",
                        help="slow the built engine (ort), the model itself (every workflow; "
                             "one more image, or one extra product of a calibrated width with "
                             "matmul: fine-grained, for inductor), or the ONNX file by a "
                             "calibrated width (ort; fine-grained: +2%%)")
    parser.add_argument("--neighbour", action="store_true",
                        help="run noisy_neighbour.py beside every step")
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("aa", "paired", "unpaired"):
        p = sub.add_parser(name)
        p.add_argument("--runs", type=int, default=5 if name == "aa" else 10)
        p.add_argument("--factor", type=float, default=1.05 if name == "paired" else 1.10)
        if name == "aa":
            p.add_argument("--all-pairs", action="store_true",
                           help="re-time every pair of runs paired, not only consecutive ones")
    sub.add_parser("summary")
    args = parser.parse_args()
    SUITE_ARGS.extend(args.suite_args.split())
    SLOW.update(case=args.slow_case, plant=args.plant)
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    neighbour = subprocess.Popen([sys.executable, str(Path(__file__).with_name(
        "noisy_neighbour.py"))]) if args.neighbour else None
    try:
        if args.step == "aa":
            results["aa"] = aa(args)
        elif args.step in ("paired", "unpaired"):
            results[f"{args.step}_{args.factor}_{args.slow_case}"] = slowed(args, args.step)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.wait()
    print(json.dumps({k: v for k, v in results.items()}, indent=1, default=str)[:6000])
    results_file.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
