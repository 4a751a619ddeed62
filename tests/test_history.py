"""``pqbench history``: series from saved runs (real run files written here, one commit each),
changepoints and creep (checked by simulation over many draws), confirmation by paired
re-timing of real artefacts, the history page, and what the gate learns from history."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import polars as pl
import pytest
from pqbench_runs import produce_real_run

from pytest_pqbench.cli import main
from pytest_pqbench.results import changepoints as cp
from pytest_pqbench.results.history import (
    analyse,
    attach,
    chain_targets,
    confirmation_targets,
    read_history,
)
from pytest_pqbench.results.load import Run
from pytest_pqbench.results.sequential import LookSchedule

needs_otava = pytest.mark.skipif(not cp.available(), reason="changepoints need Apache Otava: "
                                 "pip install --no-deps apache-otava==0.8.0 "
                                 "(docs/how-to/history.md)")

INT8 = "shapes_resnet-none-ort-int8-bs32"
FP32 = "shapes_resnet-none-ort-fp32-bs32"
TORCH = "shapes_resnet-none-torch-fp32-bs32"
MACHINE = "Linux-CPython-3.11-64bit"


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return produce_real_run(tmp_path_factory)


def scaled(run: dict, factors: dict[str, float]) -> dict:
    """A copy of a real run whose cases' timing figures are multiplied by their factor (as if
    those sessions had been that much slower); artefacts kept."""
    out = copy.deepcopy(run)
    for bench in out["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        f = factors.get(info.get("case_id"), 1.0)
        if f == 1.0:
            continue
        stats["data"] = [x * f for x in stats["data"]]
        for key in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3"):
            stats[key] *= f
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
            if key in info:
                info[key] *= f
        for block in info.get("blocks") or []:
            block["median_ms"] *= f
        if "p50_ci_ms" in info:
            info["p50_ci_ms"] = [x * f for x in info["p50_ci_ms"]]
    return out


def save(storage: Path, number: int, run: dict, hour: int, branch: str = "main",
         folder: str = MACHINE) -> Path:
    """``run`` saved as --benchmark-autosave names it, as commit ``number`` made at ``hour``."""
    data = copy.deepcopy(run)
    commit = f"{number:04d}" + "c0ffee" * 6
    data["commit_info"] = {"id": commit, "time": f"2026-03-{1 + hour // 24:02d}T"
                           f"{hour % 24:02d}:00:00+00:00", "branch": branch, "dirty": False}
    path = storage / folder / f"{number:04d}_{commit}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def stepped_storage(root: Path, real_run: dict, runs: int, case: str, at: int, step: float,
                    noise: float = 0.01, seed: int = 0) -> Path:
    """``runs`` commits; ``case`` slower by ``step`` from run ``at`` (1-based) on, with
    between-session noise; every other case identical in every run."""
    rng = np.random.default_rng(seed)
    for number in range(1, runs + 1):
        factor = (1 + step if number >= at else 1.0) * math.exp(rng.normal(0, noise))
        save(root, number, scaled(real_run, {case: factor}), hour=number)
    return root


# ---- series ---------------------------------------------------------------------------------
def test_series_follow_commit_time_one_branch_and_one_machine_each(real_run, tmp_path):
    storage = tmp_path / ".benchmarks"
    # saved numbers in another order than the commits were made
    hours = {1: 5, 2: 1, 3: 3, 4: 2, 5: 4}
    for number, hour in hours.items():
        save(storage, number, scaled(real_run, {INT8: 1.0 + hour / 100}), hour)
    save(storage, 6, scaled(real_run, {INT8: 9.0}), 6, branch="feature")
    other = copy.deepcopy(real_run)
    other["machine_info"]["pqbench"]["cpu_model"] = "Another CPU"
    save(storage, 7, other, 0, folder="Linux-other")
    history = read_history(storage, "main")
    assert history.skipped == {"feature": 1}
    here, other_machine = sorted(history.machines, key=lambda m: "Another CPU" in m)
    assert len(history.machines) == 2 and other_machine.startswith("Another CPU")
    series = history.series(here, INT8, "p50_ms")
    base = next(b["extra_info"] for b in real_run["benchmarks"]
                if b["extra_info"]["case_id"] == INT8)
    assert series["value"].to_list() == pytest.approx(
        [base["p50_ms"] * (1 + h / 100) for h in sorted(hours.values())])
    assert series["low"][0] == pytest.approx(base["p50_ci_ms"][0] * 1.01)
    assert series["high"][0] == pytest.approx(base["p50_ci_ms"][1] * 1.01)
    assert series["commit"].to_list() == [f"{n:04d}c0ffee" for n in (2, 4, 3, 5, 1)]
    assert history.series(other_machine, INT8, "p50_ms").height == 1
    # the default branch is the newest run's: the feature branch's run is the newest
    assert read_history(storage).branch == "feature"


def test_history_errors_name_the_branch_and_the_choices(real_run, tmp_path, capsys):
    storage = tmp_path / ".benchmarks"
    save(storage, 1, real_run, 1)
    assert main(["history", str(storage), "--branch", "nope"]) == 2
    assert "branch 'nope': no saved run" in capsys.readouterr().err
    assert main(["history", str(storage), "--window", "2"]) == 2


# ---- changepoints: real run files, then the statistics by simulation -----------------------
@needs_otava
def test_history_names_the_commit_where_a_case_got_slower(real_run, tmp_path, capsys):
    storage = stepped_storage(tmp_path / ".benchmarks", real_run, 16, INT8, at=9, step=0.10)
    assert main(["history", str(storage), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    series = {(s["case_id"], s["metric"]): s for s in report["series"]}
    (change,) = series[(INT8, "p50_ms")]["changes"]
    assert abs(change["index"] + 1 - 9) <= 1 and change["ratio"] == pytest.approx(1.10, abs=0.03)
    assert change["commit"] == f"{change['index'] + 1:04d}c0ffee"
    # the other cases did not change at all: no change reported, exact or timed
    assert not any(s["changes"] for (case, _), s in series.items() if case != INT8)
    assert main(["history", str(storage)]) == 0
    out = capsys.readouterr().out
    assert f"| {INT8} | p50_ms | {change['index'] + 1} |" in out


@needs_otava
def test_relative_to_a_reference_case_takes_out_the_speed_a_session_shares(real_run, tmp_path,
                                                                         capsys):
    """Every case of a session shares its speed (sd 8% from run to run, as sessions of one
    commit differ on the 2-vCPU VM); INT8 is 5% slower from run 9 on. Relative to FP32's p50,
    the step is found where it was planted and the shared part is gone."""
    storage = tmp_path / ".benchmarks"
    rng = np.random.default_rng(3)
    cases = [b["extra_info"]["case_id"] for b in real_run["benchmarks"]
             if "case_id" in b["extra_info"]]
    for number in range(1, 17):
        shared = math.exp(rng.normal(0, 0.08))
        factors = {c: shared * (1.05 if c == INT8 and number >= 9 else 1.0) for c in cases}
        save(storage, number, scaled(real_run, factors), hour=number)
    without_ref = scaled(real_run, {INT8: 1.05})  # a run whose reference case failed
    without_ref["benchmarks"] = [b for b in without_ref["benchmarks"]
                                 if b["extra_info"].get("case_id") != FP32]
    save(storage, 17, without_ref, hour=17)
    assert main(["history", str(storage), "--relative-to", FP32, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["relative_to"] == FP32 and report["without_reference"] == 1
    series = {(s["case_id"], s["metric"]): s for s in report["series"]}
    assert not any(case == FP32 for case, _ in series)  # the reference is the unit, not a series
    (change,) = series[(INT8, "p50_ms")]["changes"]
    assert abs(change["index"] + 1 - 9) <= 1 and change["ratio"] == pytest.approx(1.05, abs=0.01)
    assert not any(s["changes"] for (case, metric), s in series.items()
                   if case != INT8 and metric in ("p50_ms", "p99_ms"))
    assert main(["history", str(storage), "--relative-to", "no-such-case"]) == 2
    assert "--relative-to 'no-such-case': no run of branch 'main' has that case" in \
        capsys.readouterr().err


@needs_otava
def test_a_model_size_change_is_exact(real_run, tmp_path):
    storage = tmp_path / ".benchmarks"
    for number in range(1, 7):
        run = copy.deepcopy(real_run)
        if number >= 4:
            for bench in run["benchmarks"]:
                if bench["extra_info"]["case_id"] == FP32:
                    bench["extra_info"]["model_bytes"] += 1000
        save(storage, number, run, number)
    results = analyse(read_history(storage))
    sizes = {r.case_id: r.changes for r in results if r.metric == "model_bytes"}
    (change,) = sizes[FP32]
    assert change.index == 3 and change.exact and change.after - change.before == 1000
    assert not sizes[INT8] and not sizes[TORCH]


def issue_series(rng: np.random.Generator, sd: float, planted: bool = True) -> np.ndarray:
    """Issue 23's 30 runs: +5% from run 10, +3% from run 20, +1% per run over 22-27; noise of
    ``sd`` per session (log scale)."""
    level = np.zeros(30)
    if planted:
        runs = np.arange(1, 31)
        level += np.log(1.05) * (runs >= 10) + np.log(1.03) * (runs >= 20)
        level += np.log(1.01) * np.clip(runs - 21, 0, 6)
    return np.exp(level + rng.normal(0, sd, 30))


@needs_otava
def test_planted_steps_are_found_within_one_run_of_where_they_were_planted():
    """200 draws at 0.5% session noise; measured in 400 (docs/how-to/history.md): +5% found in 100%
    of draws, +3% (two runs before the creep) in 90%, a change inside the creep in 86%."""
    found5 = found3 = creep = 0
    draws = 200
    for draw in range(draws):
        values = issue_series(np.random.default_rng(draw), 0.005)
        starts = [c.index + 1 for c in cp.find_changes(values)]
        found5 += any(abs(s - 10) <= 1 for s in starts)
        found3 += any(abs(s - 20) <= 1 for s in starts)
        creep += any(22 <= s <= 28 for s in starts)
    se = math.sqrt(0.9 * 0.1 / draws)
    assert found5 >= draws * (0.99 - 3 * math.sqrt(0.99 * 0.01 / draws))
    assert found3 >= draws * (0.9 - 3 * se)
    assert creep >= draws * (0.86 - 3 * math.sqrt(0.86 * 0.14 / draws))


@needs_otava
def test_aa_histories_rarely_show_a_change():
    """A/A: Otava's permutation p-value (extreme / (permutations + 1)) rejects at 0.01 when at
    most one of 100 permutations is as extreme, a level of 2/101 per series."""
    draws = 300
    level = 2 / 101
    alarms = sum(bool(cp.find_changes(issue_series(np.random.default_rng(10_000 + d), 0.02,
                                                   planted=False))) for d in range(draws))
    assert alarms <= draws * (level + 3 * math.sqrt(level * (1 - level) / draws))


@needs_otava
def test_a_creep_is_flagged_over_the_window_and_an_aa_window_rarely():
    draws = 200
    flagged = aa_flagged = 0
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        ramp = np.exp(np.log(1.02) * np.arange(10) + rng.normal(0, 0.005, 10))  # +2% per run
        window = cp.window_of(ramp, cp.find_changes(ramp))
        flagged += window.creeping
        assert window.trend_total == pytest.approx(1.02 ** 10, rel=0.05)
        aa = np.exp(rng.normal(0, 0.01, 10))
        aa_flagged += cp.window_of(aa, cp.find_changes(aa)).creeping
    assert flagged >= draws * 0.95
    assert aa_flagged <= draws * (cp.ALPHA + 3 * math.sqrt(cp.ALPHA * (1 - cp.ALPHA) / draws))


def test_changes_close_together_of_one_sign_are_one_ramp():
    steps = [cp.Change(i, 1.0 + i / 100, 1.01 + i / 100) for i in (10, 12, 14)]
    (ramp,) = cp.ramps([*steps, cp.Change(25, 1.2, 1.3), cp.Change(27, 1.3, 1.1)])
    assert (ramp.first, ramp.last) == (10, 14) and ramp.ratio == pytest.approx(1.15 / 1.10)


# ---- confirmation by paired re-timing of the runs' real artefacts -----------------------------
def confirmation_storage(root: Path, real_run: dict) -> Path:
    """Twelve commits. From commit 7 on: the INT8 case runs the FP32 engine's file (a change that
    lost quantization: a real, slower engine) and its figures show it; the FP32 case's figures
    are 30% higher with the same engine (a step in the metadata only); the torch case's engine
    file of commit 7 is gone from the cache."""
    infos = {b["extra_info"]["case_id"]: b["extra_info"] for b in real_run["benchmarks"]}
    slower = infos[FP32]["p50_ms"] / infos[INT8]["p50_ms"]
    gone = root.parent / "gone" / "model.pt2"
    for number in range(1, 13):
        after = number >= 7
        run = scaled(real_run, {INT8: slower if after else 1.0, FP32: 1.3 if after else 1.0,
                                TORCH: 1.3 if after else 1.0})
        for bench in run["benchmarks"]:
            info = bench["extra_info"]
            if after and info["case_id"] == INT8:
                info["artefact"] = copy.deepcopy(infos[FP32]["artefact"])
            if number == 7 and info["case_id"] == TORCH:
                info["artefact"]["path"] = str(gone)
        save(root, number, run, number)
    return root


@pytest.fixture(scope="module")
def confirmed(real_run, tmp_path_factory):
    """The confirmation storage's history, analysed and its p50 changes re-timed (16 paired
    cycles: a smoke look, to keep the test short)."""
    from pytest_pqbench.results.confirm import confirm_changes

    storage = confirmation_storage(tmp_path_factory.mktemp("confirm") / ".benchmarks", real_run)
    history = read_history(storage)
    results = analyse(history)
    targets = confirmation_targets(results)
    found = confirm_changes(targets, history.runs, schedule=LookSchedule.single(16))
    attach(results, targets, found)
    return storage, history, results, {t.case_id: c for t, c in zip(targets, found,
                                                                     strict=True)
                                       if not t.creep}


@needs_otava
def test_a_real_engine_change_is_confirmed_and_a_metadata_step_is_not(confirmed):
    _, _, _, by_case = confirmed
    assert set(by_case) == {INT8, FP32, TORCH}  # one p50 change each, at commit 7
    real = by_case[INT8]
    assert real.target.change.index == 6 and real.verdict == "confirmed"
    assert real.ratio > 1.05 and real.ci[0] > 1.0 and real.p_value <= 0.002
    meta = by_case[FP32]
    assert meta.verdict == "not confirmed", meta.detail
    assert meta.ci[0] < 1.3 and "same artefact" in meta.detail
    gone = by_case[TORCH]
    assert gone.verdict == "cannot confirm" and "artefact gone:" in gone.detail
    assert str(Path(gone.detail.split("artefact gone: ")[1].split(" ")[0]).name) == "model.pt2"


@needs_otava
def test_confirm_on_the_command_line_says_which_artefact_is_gone(confirmed, capsys):
    storage = confirmed[0]
    assert main(["history", str(storage), "-k", "torch", "--confirm"]) == 0
    out = capsys.readouterr().out
    assert f"| {TORCH} | p50_ms | 7 |" in out and "cannot confirm: artefact gone:" in out
    assert "gone/model.pt2" in out


@needs_otava
def test_a_creep_is_confirmed_end_to_end(real_run, tmp_path):
    """The INT8 case creeps 6% a commit over the last six of twelve commits and ends on the FP32
    engine's file: the creeping window is re-timed from the run before it to its last run."""
    from pytest_pqbench.results.confirm import confirm_changes

    infos = {b["extra_info"]["case_id"]: b["extra_info"] for b in real_run["benchmarks"]}
    storage = tmp_path / ".benchmarks"
    for number in range(1, 13):
        run = scaled(real_run, {INT8: 1.06 ** max(0, number - 6)})
        if number >= 9:
            for bench in run["benchmarks"]:
                if bench["extra_info"]["case_id"] == INT8:
                    bench["extra_info"]["artefact"] = copy.deepcopy(infos[FP32]["artefact"])
        save(storage, number, run, number)
    history = read_history(storage)
    results = analyse(history)
    (series,) = [r for r in results if (r.case_id, r.metric) == (INT8, "p50_ms")]
    assert series.window.creeping and series.window.trend_total == pytest.approx(
        1.06 ** 6, rel=0.15)
    (target,) = [t for t in confirmation_targets(results) if t.creep]
    assert (Path(target.before).name[:4], Path(target.after).name[:4]) == ("0002", "0012")
    (found,) = confirm_changes([target], history.runs, schedule=LookSchedule.single(16))
    attach(results, [target], [found])
    assert series.window_confirmation.verdict == "confirmed" and found.ratio > 1.05


@needs_otava
def test_the_chain_re_times_only_where_the_engine_changed_either_way(real_run, tmp_path, capsys):
    """``--chain``: the INT8 case runs the FP32 engine's file over commits 4-7 and its own again
    from 8 (a change and its revert), every session's figures 20% apart at random; the FP32
    case's figures step +30% at commit 7 with one engine throughout. Only the two links where
    the INT8 artefact changed are timed, both found, in opposite directions, and their product
    is about 1; the FP32 case's links are all one artefact: nothing to re-time, no change."""
    from pytest_pqbench.results.confirm import confirm_changes

    infos = {b["extra_info"]["case_id"]: b["extra_info"] for b in real_run["benchmarks"]}
    rng = np.random.default_rng(3)
    storage = tmp_path / ".benchmarks"
    for number in range(1, 11):
        run = scaled(real_run, {INT8: math.exp(rng.normal(0, 0.2)),
                                FP32: 1.3 if number >= 7 else 1.0})
        if 4 <= number <= 7:
            for bench in run["benchmarks"]:
                if bench["extra_info"]["case_id"] == INT8:
                    bench["extra_info"]["artefact"] = copy.deepcopy(infos[FP32]["artefact"])
        save(storage, number, run, number)
    history = read_history(storage, match="ort")
    results = analyse(history)
    targets = chain_targets(results, history.runs)
    assert [(t.case_id, t.change.index) for t in targets] == [(INT8, 3), (INT8, 7)]
    found = confirm_changes(targets, history.runs, schedule=LookSchedule.single(16))
    attach(results, targets, found)
    by = {(r.case_id, r.metric): r for r in results}
    int8, fp32 = by[(INT8, "p50_ms")], by[(FP32, "p50_ms")]
    assert [c.verdict for c in int8.links] == ["confirmed", "confirmed"], found
    slower, faster = (c.ratio for c in int8.links)
    assert slower > 1.05 and faster < 1 / 1.05
    assert 0.9 < int8.link_total() < 1.1 and int8.unchanged_links == 7
    assert fp32.links == [] and fp32.unchanged_links == 9 and fp32.link_total() is None
    # the command line: the same two links, the others counted
    assert main(["history", str(storage), "-k", INT8, "--chain"]) == 0
    out = capsys.readouterr().out
    assert f"| {INT8} | 3 -> 4 |" in out and f"| {INT8} | 7 -> 8 |" in out
    assert out.count("changed: paired +") == 1 and out.count("changed: paired -") == 1
    assert f"| {INT8} | 2 | 7 | 2 |" in out
    from pytest_pqbench.results.html_history import render_history_page, series_png

    assert "2 engine change(s) in 2 link(s) re-timed by --chain" in render_history_page(
        history, results)
    plain = copy.copy(int8)
    plain.links = []
    assert series_png(int8) != series_png(plain)  # the two links are drawn


def test_a_creep_of_small_engine_changes_is_re_timed_end_to_end_by_the_chain():
    """Six links of +1% inside the last window, none significant alone, multiply to +6.2%,
    beyond a 3% threshold: one end-to-end target from the run before the window to its last
    run. Six links of +0.4% (+2.4% in all) stay under it; links before the window don't count;
    a window already re-timed (creeping in the recorded series) is not re-timed twice."""
    from pytest_pqbench.results.changepoints import Change, Window
    from pytest_pqbench.results.confirm import NOT_CONFIRMED, Confirmation, Target
    from pytest_pqbench.results.history import SeriesResult, chain_creep_targets

    points = pl.DataFrame({"path": [f"run{i}.json" for i in range(30)]})

    def series(step: float, first_link: int = 21) -> SeriesResult:
        links = [Confirmation(Target("m", "case", Change(i, 1.0, 1.0), f"run{i - 1}.json",
                                     f"run{i}.json", link=True), NOT_CONFIRMED, 1 + step,
                              (1.0, 1.02), 0.2)
                 for i in range(first_link, first_link + 6)]
        return SeriesResult("m", "case", "p50_ms", points, [], Window(20, 29, 1.0), [],
                            links=links)

    creep, small, before = series(0.01), series(0.004), series(0.01, first_link=10)
    done = series(0.01)
    done.window_confirmation = Confirmation(done.links[0].target, NOT_CONFIRMED)
    (target,) = chain_creep_targets([creep, small, before, done], 0.03)
    assert target.creep and (target.before, target.after) == ("run19.json", "run29.json")
    assert target.change.ratio == pytest.approx(1.01 ** 6)
    assert chain_creep_targets([creep], 0.07) == []


# ---- the history page --------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@needs_otava
def test_history_page_has_one_chart_per_case_and_metric_and_every_change(confirmed, tmp_path):
    from pytest_pqbench.results.html_history import render_history_page

    _, history, results, _ = confirmed
    page = render_history_page(history, results)
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.split("<body>")[1][:2000]
    charts = [part.split('"')[0] for part in page.split('src="data:image/png;base64,')[1:]]
    assert len(charts) == len(results) == 3 * 4
    for chart in charts:
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(chart)), format="png")
        assert image.shape[0] > 200 and image.std() > 0.01
    table = page.split('id="changes"')[1].split("</table>")[0]
    rows = table.split("<tr")[2:]
    assert len(rows) == sum(len(r.changes) for r in results)
    assert 'class="confirmed"' in rows[0] and "confirmed: paired +" in rows[0]  # confirmed first
    assert "not confirmed" in table and "cannot confirm: artefact gone" in table


@needs_otava
@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"headless Chromium not installed "
                    f"({CHROMIUM} missing; Debian: apt-get install -y chromium)")
def test_chromium_renders_the_history_page(confirmed, tmp_path):
    from pytest_pqbench.results.html_history import render_history_page

    page = tmp_path / "history.html"
    page.write_text(render_history_page(confirmed[1], confirmed[2]))
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update",
              "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    assert 'id="charts-decoded">12/12<' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={shot}",
                    "--window-size=1400,1600", "--hide-scrollbars", page.as_uri()],
                   capture_output=True, timeout=180, check=True)
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (1600, 1400) and image.std() > 0.05


# ---- what the gate learns from history ---------------------------------------------------------
def test_session_sd_from_history_is_robust_to_a_step_where_the_plain_sd_is_not():
    from pytest_pqbench.results.history_gate import session_sd

    draws, sd = 300, 0.03
    robust, plain = [], []
    for draw in range(draws):
        centres = np.random.default_rng(draw).normal(0, sd, 20)
        centres[10:] += math.log(1.2)  # main got 20% slower halfway through the window
        robust.append(session_sd(centres))
        plain.append(float(np.std(centres, ddof=1)))
    assert abs(np.mean(robust) / sd - 1) < 0.15  # about right on average despite the step
    assert np.mean(plain) > 2.5 * sd


@needs_otava
def test_gate_learns_noise_and_flags_a_creep_every_step_of_which_passed(real_run, tmp_path,
                                                                       capsys):
    """Main crept 2% a commit over six commits (each under a 3% gate), then held; a candidate 1%
    above main's last commit is no drift from main's current level, but the window's oldest
    commits were about 9% faster: a creep."""
    storage = tmp_path / ".benchmarks"
    rng = np.random.default_rng(0)
    for number in range(1, 13):
        factor = 1.02 ** min(number, 6) * math.exp(rng.normal(0, 0.005))
        save(storage, number, scaled(real_run, {INT8: factor}), number)
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps(scaled(real_run, {INT8: 1.02 ** 6 * 1.01})))
    noise = tmp_path / "noise.json"
    assert main(["history", str(storage), "--branch", "main", "--last", "12",
                 "--write-noise", str(noise), "--drift", str(candidate), "--format",
                 "json"]) == 1
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("{"):])["rows"]
    creep = next(r for r in rows if r["case_id"] == INT8 and r["metric"] == "creep")
    assert creep["verdict"] == "regressed" and creep["change"] == pytest.approx(
        1.02 ** 6 * 1.01 / np.mean([1.02, 1.02 ** 2, 1.02 ** 3]), rel=0.02)
    drift = next(r for r in rows if r["case_id"] == INT8 and r["metric"] == "drift")
    assert drift["verdict"] != "regressed"
    # cases that never moved: no drift, no creep
    assert {r["verdict"] for r in rows if r["case_id"] != INT8} <= {"unchanged",
                                                                     "cannot decide"}
    from pytest_pqbench.results.noise import NoiseModel

    model = NoiseModel.load(noise)
    assert set(model.per_case) == {INT8, FP32, TORCH}
    assert model.sd(FP32) == 0.0 and 0.0 < model.sd(INT8) < 0.03
    history_runs = sorted(storage.rglob("*.json"))
    assert main(["compare", str(history_runs[-2]), str(history_runs[-1]), "--noise", str(noise),
                 "--paired", "never"]) in (0, 1)


def test_drift_rows_need_enough_history(real_run):
    from pytest_pqbench.results.history_gate import drift

    run = Run(Path("x.json"), real_run)
    assert drift(run, [run] * 4) == []  # fewer than MIN_RUNS sessions: nothing said
    assert {r.metric for r in drift(run, [run] * 5)} == {"drift", "creep"}
