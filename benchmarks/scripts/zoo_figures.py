"""The papers' models at their real input sizes (issue 17's figures): p50 and throughput of
``yolov5s`` at 640 and ``mobilenet_v2`` at 160 for torch FP32, inductor INT8, ORT FP32 and ORT
INT8, unpruned and ``group0.3`` (``round_to=8``), at batch 1 and 8, with params / MACs before and
after pruning and each case's efficiency against this machine's measured GEMM peaks.

    python benchmarks/scripts/zoo_figures.py --out /tmp/zoo            # both models
    python benchmarks/scripts/zoo_figures.py --out /tmp/zoo --models mobilenet_v2=160
    python benchmarks/scripts/zoo_figures.py --out /tmp/zoo --table-only   # re-print the table

Each (model, engine) runs as one real ``pytest benchmarks`` session (the suite's own test and
cache) under the smoke timing profile with ``--min-rounds`` timed rounds: a 640 px batch of 8
takes seconds per call on 2 cores, so these are smoke figures, not p99-grade ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINES = (("torch", "fp32"), ("inductor", "int8"), ("ort", "fp32"), ("ort", "int8"))


def run_engine(model: str, size: int, workflow: str, precision: str, out: Path,
               args: argparse.Namespace) -> dict:
    path = out / f"{model}-{size}-{workflow}-{precision}.json"
    command = [sys.executable, "-m", "pytest", "benchmarks/test_matrix.py", "-q",
               "-p", "no:cacheprovider", f"--pqbench-models={model}",
               f"--pqbench-input-size={size}", "--pqbench-pruners=none,group0.3",
               "--pqbench-prune-options=round_to=8", f"--pqbench-workflows={workflow}",
               f"--pqbench-precisions={precision}", f"--pqbench-batch-sizes={args.batch_sizes}",
               f"--pqbench-threads={args.threads}", "--pqbench-timing-profile=smoke",
               f"--pqbench-min-rounds={args.min_rounds}", "--pqbench-warmup-rounds=1",
               f"--pqbench-calibration-size={args.calibration}", f"--benchmark-json={path}",
               # untrained models: no fine-tuning to time (the figures are about latency)
               "--pqbench-finetune-epochs=0", "--pqbench-distill=false"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(f"{model}@{size} {workflow} {precision}: exit {done.returncode}, {wall:.0f} s wall",
          flush=True)
    if done.returncode:
        print(done.stdout[-3000:], file=sys.stderr)
    return {"model": model, "size": size, "workflow": workflow, "precision": precision,
            "wall_s": wall, "exit": done.returncode, "json": str(path)}


def table(out: Path, peaks: dict) -> str:
    rows = []
    for path in sorted(out.glob("*.json")):
        if path.name in ("runs.json", "peaks.json"):
            continue
        for bench in json.loads(path.read_text()).get("benchmarks", []):
            info = bench["extra_info"]
            if "p50_ms" not in info:
                continue
            peak = peaks.get(f"{info['precision']}_macs_per_s")
            achieved = info["macs"] * info["batch_size"] / (info["p50_ms"] / 1000)
            rows.append((info["model"], info["input_size"], info["pruner"] + (
                f"{info['ratio']:g}" if info["ratio"] else ""), info["workflow"],
                info["precision"], info["batch_size"], info["p50_ms"], info["throughput_ips"],
                info["params"] / 1e6, info["macs"] / 1e9, achieved / 1e9,
                achieved / peak if peak else float("nan"), info.get("peak_rss_bytes", 0) / 2**30,
                info.get("engine_seconds", float("nan"))))
    rows.sort(key=lambda r: (r[0], r[5], r[3], r[4], r[2]))
    lines = ["| model | px | pruner | engine | bs | p50 ms | img/s | params M | GMACs | "
             "achieved GMAC/s | efficiency | peak RSS GiB | engine build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} {r[4]} | {r[5]} | {r[6]:.1f} | "
                     f"{r[7]:.1f} | {r[8]:.2f} | {r[9]:.2f} | {r[10]:.1f} | {r[11]:.0%} | "
                     f"{r[12]:.2f} | {r[13]:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="mobilenet_v2=160,yolov5s=640")
    parser.add_argument("--engines", default=",".join(f"{w}:{p}" for w, p in ENGINES))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    peaks_file = args.out / "peaks.json"
    if not peaks_file.is_file():
        from pytest_pqbench.environment import machine_peaks

        peaks_file.write_text(json.dumps(machine_peaks(threads=args.threads), indent=1))
    peaks = json.loads(peaks_file.read_text())
    print(f"peaks at {args.threads} threads: FP32 {peaks['fp32_macs_per_s'] / 1e9:.1f} GMAC/s "
          f"({peaks['fp32_kernel']}), INT8 {peaks['int8_macs_per_s'] / 1e9:.1f} GMAC/s "
          f"({peaks['int8_kernel']})", flush=True)
    if not args.table_only:
        runs = []
        for item in args.models.split(","):
            model, size = item.split("=")
            for engine in args.engines.split(","):
                workflow, precision = engine.split(":")
                runs.append(run_engine(model, int(size), workflow, precision, args.out, args))
                (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
    print(table(args.out, peaks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
