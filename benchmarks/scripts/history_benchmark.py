"""Issue 23's targets on real histories: planted steps found, the creep reported, an A/A series
quiet, each planted step confirmed by paired re-timing and a metadata-only step not; and
``pqbench history`` over 100 saved runs in under 5 s.

    python benchmarks/scripts/history_benchmark.py --out out/history
    python benchmarks/scripts/history_benchmark.py --out out/dev --runs 12 --steps 4:5,8:3 \
        --creep 10-11:1          # a quick development run

Every run is a real session of a small slice (``pytest benchmarks -k CASES --pqbench-timing-
profile smoke --pqbench-threads=1 --pqbench-min-rounds=100 --benchmark-autosave``) timing two ORT
cases interleaved: the PLANTED case, whose
engine does real extra work from the planted runs on (``history_plant_plugin``: extra
multiply-adds in its ONNX file, so a later re-timing of the artefact does them too), and the A/A
case, never touched: its 30 sessions are the A/A series. Steps and creep are cumulative factors
of the first run's cost (default: +5% from run 10, +3% from run 20, +1% per run over runs
22-27), reached by the planted work's width, calibrated once on the first run's artefact
(paired, in this process) and reported as measured.

Commit metadata: pytest-benchmark records the worktree's real commit; this script then writes a
made-up commit per run into the saved file (``commit_info``: id, time one hour apart, branch
``main``) and names the file after it, as if each run were one commit of a project's history.

Scoring reads the product's own output (``pqbench history --format json``, ``--confirm``): a
step is found when a change of the planted case's p50 starts within one run of it; the creep is
reported when a change starts in the creep's runs (or one run after) or the last window is
flagged creeping; the A/A case must show no p50 change. A step planted only in the metadata (a
copy of the A/A history whose figures are scaled by the step from one run on, engines
unchanged) must come out ``not confirmed``. Prints a markdown summary for docs/how-to/history.md.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent
PLANTED = "shapes_resnet-none-ort-fp32-bs32"
AA = "shapes_resnet-none-ort-int8-bs32"
META_STEP = 0.05  # the metadata-only step: the A/A case's figures x1.05 from mid-history on
# on top of the smoke profile: one thread per engine and 100 rounds per case (a second of timing)
# keep each session's p50 steadier; the sessions' start-up dominates their cost anyway
STEADIER = ["--pqbench-threads=1", "--pqbench-min-rounds=100"]


def parse_steps(text: str) -> dict[int, float]:
    """``10:5,20:3`` -> {10: 0.05, 20: 0.03} (first changed run, 1-based -> step)."""
    return {int(a): float(b) / 100 for a, b in (item.split(":") for item in text.split(",") if
                                                item)}


def parse_creep(text: str) -> tuple[int, int, float] | None:
    if not text:
        return None
    span, per = text.split(":")
    first, last = span.split("-")
    return int(first), int(last), float(per) / 100


def level(run: int, steps: dict[int, float], creep: tuple[int, int, float] | None) -> float:
    """The planted factor of run ``run`` (1-based) relative to the first run's cost."""
    factor = 1.0
    for at, step in steps.items():
        if run >= at:
            factor *= 1 + step
    if creep and run >= creep[0]:
        factor *= (1 + creep[2]) ** (min(run, creep[1]) - creep[0] + 1)
    return factor


def pqbench(*args: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest_pqbench.cli", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"pqbench {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.returncode, done.stdout, time.perf_counter() - started


def session(storage: Path, number: int, width: int, pytest_args: list[str]) -> Path:
    """One real session saved to ``storage`` as run ``number`` of the made-up history."""
    scratch = storage.parent / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    env = {**os.environ, "PQBENCH_PLANT_CASE": PLANTED if width else "",
           "PQBENCH_PLANT_WIDTH": str(width),
           "PYTHONPATH": f"{SCRIPTS}:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
           "-p", "history_plant_plugin", "-k", f"{PLANTED} or {AA}",
           "--pqbench-timing-profile", "smoke", "--benchmark-autosave",
           f"--benchmark-storage=file://{scratch}", *pytest_args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    saved = sorted(scratch.glob("*/*.json"))
    if done.returncode != 0 or len(saved) != 1:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-2000:]}")
    data = json.loads(saved[0].read_text())
    commit = hashlib.sha1(f"pqbench-history-benchmark {number}".encode()).hexdigest()
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=number)
    data["commit_info"] = {"id": commit, "time": when.isoformat(), "author_time":
                           when.isoformat(), "dirty": False, "project": "pytest-pqbench",
                           "branch": "main"}
    out = storage / saved[0].parent.name / f"{number:04d}_{commit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def calibrate(first_run: Path, factors: list[float], cache: Path, case: str | None = None
              ) -> tuple[dict[float, int], list[str]]:
    """Widths planting each factor: the planted cost is linear in the width, so one paired
    probe near the largest factor sets the scale, and a second check at that width is shown."""
    import numpy as np
    from history_plant_plugin import planted_artefact

    from pytest_pqbench.results.compare import PairedTiming
    from pytest_pqbench.results.paired import input_shape
    from pytest_pqbench.stages.timing import pair, rounds_per_block, run_blocks, time_calls
    from pytest_pqbench.workflows import get_workflow

    data = json.loads(first_run.read_text())
    info = next(b["extra_info"] for b in data["benchmarks"]
                if b["extra_info"].get("case_id") == (case or PLANTED))
    workflow = get_workflow("ort")
    base = workflow.load_portable(info["artefact"], int(info["threads"]), "cpu")
    shape = input_shape(info["artefact"], int(info["batch_size"]))
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    features = batch[0].size

    def measure(width: int) -> float:
        planted = workflow.load_portable(planted_artefact(info["artefact"], width, cache),
                                         int(info["threads"]), "cpu")
        per_block = rounds_per_block(float(np.median(time_calls(base, batch, 5))), 30, 150,
                                     0.5, 10_000, 0.05)
        a, b = pair("c", base, planted, batch, per_block)
        run_blocks([a, b], 30)
        return PairedTiming.of(a.timing, b.timing, "").estimate(0.01).ratio

    target = max(factors) - 1
    probe = max(1, round(target * info["macs"] / features))  # the model's own MACs as a guess
    measured = measure(probe)
    per_width = (measured - 1) / probe
    if per_width <= 0:
        raise SystemExit(f"planted width {probe} measured x{measured:.3f}: the host is too "
                         "noisy to calibrate; retry on a quieter machine")
    widths = {f: max(1, round((f - 1) / per_width)) for f in factors if f > 1}
    check = measure(widths[max(factors)])
    notes = [f"probe: width {probe} measured x{measured:.3f}",
             f"check: width {widths[max(factors)]} for x{max(factors):.4f} measured "
             f"x{check:.3f}"]
    return widths, notes


def metadata_step(storage: Path, out: Path, at: int, step: float) -> None:
    """A copy of ``storage`` where the A/A case's figures are x(1 + step) from run ``at`` on;
    engines (artefacts) untouched."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(storage, out)
    for path in sorted(out.glob("*/*.json")):
        if int(path.name[:4]) < at:
            continue
        data = json.loads(path.read_text())
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            if info.get("case_id") != AA:
                continue
            scale = 1 + step
            stats = bench["stats"]
            stats["data"] = [x * scale for x in stats["data"]]
            for key in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3"):
                stats[key] *= scale
            for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
                if key in info:
                    info[key] *= scale
            for block in info.get("blocks") or []:
                block["median_ms"] *= scale
            if "p50_ci_ms" in info:
                info["p50_ci_ms"] = [x * scale for x in info["p50_ci_ms"]]
        path.write_text(json.dumps(data))


def p50_changes(report: dict[str, Any], case: str) -> list[dict[str, Any]]:
    return next((s["changes"] for s in report["series"]
                 if s["case_id"] == case and s["metric"] == "p50_ms"), [])


def window_of(report: dict[str, Any], case: str) -> dict[str, Any] | None:
    return next((s["window"] for s in report["series"]
                 if s["case_id"] == case and s["metric"] == "p50_ms"), None)


def chain_of(report: dict[str, Any], case: str) -> dict[str, Any]:
    return next((s["chain"] for s in report["series"]
                 if s["case_id"] == case and s["metric"] == "p50_ms"), None) or {}


def speed(source: Path, out: Path, runs: int = 100, cases: int = 12) -> float:
    """Seconds of ``pqbench history`` over ``runs`` saved runs of ``cases`` cases each, written
    from a real run's structure (its two cases cloned under other ids, full-profile round
    counts: 605 rounds in 11 blocks of 55 per case)."""
    import numpy as np

    shutil.rmtree(out, ignore_errors=True)
    real = json.loads(source.read_text())
    templates = [b for b in real["benchmarks"] if "case_id" in b["extra_info"]]
    rng = np.random.default_rng(0)
    folder = out / "Linux-CPython-3.11-64bit"
    folder.mkdir(parents=True)
    for number in range(1, runs + 1):
        data = copy.deepcopy(real)
        benches = []
        for i in range(cases):
            bench = copy.deepcopy(templates[i % len(templates)])
            info, stats = bench["extra_info"], bench["stats"]
            info["case_id"] = f"{info['case_id']}-copy{i}"
            centre = info["p50_ms"] / 1e3 * math.exp(rng.normal(0, 0.02))
            # every block's rounds lie inside stats.data (a reader refuses a run where they do not)
            samples = (centre * np.exp(rng.normal(0, 0.05, 55 * 11))).tolist()
            stats["data"], stats["rounds"] = samples, len(samples)
            info["blocks"] = [{"index": k, "start_s": k * 0.5, "rounds": 55, "offset": 55 * k,
                               "median_ms": float(np.median(samples[55 * k:55 * k + 55])) * 1e3,
                               "host_ms": 0.1} for k in range(11)]
            info["p50_ms"] = float(np.median(samples)) * 1e3
            info["p99_ms"] = float(np.percentile(samples, 99)) * 1e3
            info["p50_ci_ms"] = [info["p50_ms"] * 0.98, info["p50_ms"] * 1.02]
            benches.append(bench)
        data["benchmarks"] = benches
        commit = hashlib.sha1(f"speed {number}".encode()).hexdigest()
        data["commit_info"] = {"id": commit, "time": (datetime(2026, 1, 1, tzinfo=UTC)
                                                      + timedelta(hours=number)).isoformat(),
                               "branch": "main", "dirty": False}
        (folder / f"{number:04d}_{commit}.json").write_text(json.dumps(data))
    _, _, seconds = pqbench("history", str(out))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "history")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", default="10:5,20:3", help="RUN:PERCENT,... (cumulative)")
    parser.add_argument("--creep", default="22-27:1", help="FIRST-LAST:PERCENT per run")
    parser.add_argument("--pytest-args", default=" ".join(STEADIER),
                        help=f"extra pytest arguments for every run (default: "
                             f"{' '.join(STEADIER)})")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    steps, creep = parse_steps(args.steps), parse_creep(args.creep)
    storage = args.out / "storage"
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("PQBENCH_CACHE_DIR", ROOT / ".pqbench-cache"))
    levels = {r: level(r, steps, creep) for r in range(1, args.runs + 1)}
    extra = args.pytest_args.split()
    saved = sorted(storage.glob("*/*.json"))
    first = saved[0] if saved else session(storage, 1, 0, extra)
    widths, notes = calibrate(first, sorted(set(levels.values())), cache)
    print("\n".join(notes), flush=True)
    for number in range(2, args.runs + 1):
        if not list(storage.glob(f"*/{number:04d}_*.json")):
            session(storage, number, widths.get(levels[number], 0), extra)
            print(f"  run {number}: planted x{levels[number]:.4f} (width "
                  f"{widths.get(levels[number], 0)})", flush=True)
    sessions_s = time.perf_counter() - started
    _, text, history_s = pqbench("history", str(storage), "--format", "json")
    report = json.loads(text)
    # the same history with every timing relative to the A/A case's p50 of the same run
    _, text, _ = pqbench("history", str(storage), "--format", "json", "--relative-to", AA)
    relative = json.loads(text)
    # confirmed on the relative series: its changes are where the planted steps are
    _, text, _ = pqbench("history", str(storage), "--format", "json", "--confirm", "-k",
                         PLANTED, "--relative-to", AA, "--html", str(args.out / "history.html"))
    confirmed_report = json.loads(text)
    confirmed = p50_changes(confirmed_report, PLANTED)
    end_to_end = (window_of(confirmed_report, PLANTED) or {}).get("confirmation")
    # every engine change re-timed paired (--chain): the planted case's links, and the A/A
    # case's (one artefact throughout: nothing to re-time)
    chain_s = time.perf_counter()
    _, text, _ = pqbench("history", str(storage), "--format", "json", "--chain")
    chain = json.loads(text)
    chain_s = time.perf_counter() - chain_s
    meta = args.out / "metadata-step"
    meta_at = min(15, args.runs // 2 + 1)
    metadata_step(storage, meta, meta_at, META_STEP)
    _, text, _ = pqbench("history", str(meta), "--format", "json", "--confirm", "-k", AA)
    meta_changes = p50_changes(json.loads(text), AA)
    _, text, _ = pqbench("history", str(meta), "--format", "json", "--chain", "-k", AA)
    meta_chain = chain_of(json.loads(text), AA)
    speed_s = None if args.skip_speed else speed(first, args.out / "speed")
    summary(args, steps, creep, report, relative, (confirmed, end_to_end),
            (meta_at, meta_changes), notes, speed_s,
            {"sessions": sessions_s, "history": history_s, "chain": chain_s,
             "total": time.perf_counter() - started}, (chain, meta_chain))


def scored(label: str, report: dict[str, Any], steps: dict[int, float],
           creep: tuple[int, int, float] | None) -> list[str]:
    """The planted steps and creep, found or not, in one history report."""
    found = p50_changes(report, PLANTED)
    lines = [f"- {label}: changes found in the planted case's p50 (first changed run: size): "
             + (", ".join(f"{c['index'] + 1}: {c['ratio'] - 1:+.1%}" for c in found)
                or "none")]
    for at, step in steps.items():
        hit = [c for c in found if abs(c["index"] + 1 - at) <= 1]
        lines.append(f"- step {step:+.0%} at run {at}: "
                     + (f"found at run {hit[0]['index'] + 1} ({hit[0]['ratio'] - 1:+.1%})"
                        if hit else "NOT found within one run"))
    if creep:
        inside = [c for c in found if creep[0] <= c["index"] + 1 <= creep[1] + 1]
        window = window_of(report, PLANTED) or {}
        lines.append(f"- creep {creep[2]:+.0%}/run over runs {creep[0]}-{creep[1]}: "
                     + (", ".join(f"change at run {c['index'] + 1} ({c['ratio'] - 1:+.1%})"
                                  for c in inside) or "no change inside it")
                     + f"; last {window.get('last', 0) - window.get('first', 0) + 1} runs: "
                       f"level {window.get('change', 1) - 1:+.1%}, trend "
                       f"{(window.get('slope') or 0):+.2%}/run (p={window.get('p_value')}), "
                       f"{'creeping' if window.get('creeping') else 'not flagged creeping'}"
                     + (" -> REPORTED" if inside or window.get("creeping") else
                        " -> NOT reported"))
    return lines


def chain_lines(chains: tuple[dict[str, Any], dict[str, Any]], steps: dict[int, float],
                creep: tuple[int, int, float] | None, meta_at: int, seconds: float
                ) -> list[str]:
    """What ``--chain`` found: each planted step and the creep's steps among the changed links
    (a link ``index`` is the run where the new engine starts, 0-based)."""
    chain, meta = chains
    planted, aa = chain_of(chain, PLANTED), chain_of(chain, AA)
    links = planted.get("links", [])
    changed = {c["index"] + 1: c for c in links if c["verdict"] == "confirmed"}

    def link(at: int) -> str:
        c = next((c for c in links if c["index"] + 1 == at), None)
        if c is None:
            return "not re-timed"
        return (f"{'CHANGED' if c['verdict'] == 'confirmed' else 'no change found'}, paired "
                f"{c['ratio'] - 1:+.1%} (CI {c['ci'][0] - 1:+.1%}..{c['ci'][1] - 1:+.1%})"
                if c.get("ratio") else f"{c['verdict']} ({c['detail']})")

    lines = [f"- --chain ({seconds:.0f} s): planted case {len(links)} link(s) re-timed, "
             f"{planted.get('unchanged_links', 0)} of one artefact; in all "
             + (f"{planted['total'] - 1:+.1%}" if planted.get("total") else "-")
             + f"; A/A case {len(aa.get('links', []))} link(s) re-timed, "
               f"{aa.get('unchanged_links', 0)} of one artefact"]
    for at, step in steps.items():
        lines.append(f"- --chain, step {step:+.0%} at run {at}: {link(at)}")
    if creep:
        for at in range(creep[0], creep[1] + 1):
            lines.append(f"- --chain, creep step at run {at}: {link(at)}")
        ramps = planted.get("ramps", [])
        window = window_of(chain, PLANTED) or {}
        end = window.get("confirmation") or {}
        lines.append(f"- --chain, the last window's links (runs {window.get('first', 0) + 1}-"
                     f"{window.get('last', 0) + 1}) multiply to "
                     + (f"{planted['window_total'] - 1:+.1%}" if planted.get("window_total")
                        else "-") + "; re-timed end to end: "
                     + (f"{end['verdict']}, paired {end['ratio'] - 1:+.1%} (CI "
                        f"{end['ci'][0] - 1:+.1%}..{end['ci'][1] - 1:+.1%})"
                        if end.get("ratio") else str(end.get("verdict", "not re-timed"))))
        lines.append("- --chain ramps: " + (", ".join(
            f"{g['steps']} steps over runs {g['first'] + 1}-{g['last'] + 1}: "
            f"{g['ratio'] - 1:+.1%}" for g in ramps) or "none"))
    others = sorted(set(changed) - set(steps) - set(range(creep[0], creep[1] + 1) if creep
                                                   else ()))
    lines.append("- --chain, changed links where nothing was planted: "
                 + (", ".join(map(str, others)) or "none"))
    lines.append(f"- --chain on the metadata-only step at run {meta_at}: "
                 f"{len(meta.get('links', []))} link(s) re-timed, "
                 f"{meta.get('unchanged_links', 0)} of one artefact")
    return lines


def summary(args: argparse.Namespace, steps: dict[int, float],
            creep: tuple[int, int, float] | None, report: dict[str, Any],
            relative: dict[str, Any],
            confirmations: tuple[list[dict[str, Any]], dict[str, Any] | None],
            meta_step: tuple[int, list[dict[str, Any]]], notes: list[str],
            speed_s: float | None, seconds: dict[str, float],
            chains: tuple[dict[str, Any], dict[str, Any]]) -> None:
    lines = [f"## History benchmark: {args.runs} real runs (smoke), planted case {PLANTED}, "
             f"A/A case {AA}", "", *[f"- calibration {n}" for n in notes]]
    for label, source in (("as recorded", report), (f"relative to {AA} (--relative-to)",
                                                    relative)):
        lines += scored(label, source, steps, creep)
    aa = p50_changes(report, AA)
    lines.append(f"- A/A case ({args.runs} runs): "
                 + ("no change" if not aa else f"{len(aa)} change(s) at runs "
                    + ", ".join(str(c["index"] + 1) for c in aa)))
    confirmed, end_to_end = confirmations
    if end_to_end:
        lines.append(f"- the creeping window re-timed end to end: {end_to_end['verdict']}, "
                     f"paired {end_to_end['ratio'] - 1:+.1%}" if end_to_end.get("ratio") else
                     f"- the creeping window re-timed end to end: {end_to_end['verdict']} "
                     f"({end_to_end.get('detail')})")
    for c in confirmed:
        verdict = (c.get("confirmation") or {})
        lines.append(f"- confirmation of the change at run {c['index'] + 1} "
                     f"({c['ratio'] - 1:+.1%}): {verdict.get('verdict')}, paired "
                     + (f"{verdict['ratio'] - 1:+.1%}" if verdict.get("ratio") else "-")
                     + f" ({verdict.get('detail', '')})")
    meta_at, meta = meta_step
    lines.append(f"- metadata-only step {META_STEP:+.0%} at run {meta_at} (A/A engine "
                 "unchanged): " + ("; ".join(
                     f"change at run {c['index'] + 1} ({c['ratio'] - 1:+.1%}): "
                     f"{(c.get('confirmation') or {}).get('verdict')} "
                     f"({(c.get('confirmation') or {}).get('detail', '')})" for c in meta)
                     or "no change found (nothing to confirm)"))
    lines += chain_lines(chains, steps, creep, meta_at, seconds["chain"])
    if speed_s is not None:
        lines.append(f"- `pqbench history` over 100 saved runs of 12 cases: {speed_s:.1f} s "
                     "(target < 5 s)")
    lines.append(f"- wall time: sessions {seconds['sessions'] / 60:.1f} min "
                 f"({seconds['sessions'] / args.runs:.0f} s each), whole benchmark "
                 f"{seconds['total'] / 60:.1f} min (target < 20 min); `pqbench history` on "
                 f"the {args.runs} runs {seconds['history']:.1f} s")
    text = "\n".join(lines)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
