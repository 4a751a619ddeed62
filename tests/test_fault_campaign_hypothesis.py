"""Issue 25's fault campaign as a test: hypothesis generates the faults (damaged runs, outputs
aliasing inputs, bad settings), the real ``pqbench`` commands and the real settings resolver
answer them, and every answer must be one message naming the file, case or setting: no
traceback, no exit status other than 0 / 1 / 2, no input changed, no output half-written.

The campaign's figures in docs/reference/faults.md come from this file run with more examples:
``PQBENCH_CAMPAIGN_EXAMPLES=400 PQBENCH_CAMPAIGN_TALLY=tally.json pytest
tests/test_fault_campaign_hypothesis.py`` (the tally counts faults by family, command and
answer). In CI it runs with the default example counts below (about a minute).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pqbench_runs import produce_real_run

from pytest_pqbench.cli import main as pqbench
from pytest_pqbench.config import OPTIONS, Settings
from pytest_pqbench.errors import UsageError

EXAMPLES = int(os.environ.get("PQBENCH_CAMPAIGN_EXAMPLES", "0"))
TALLY: Counter[str] = Counter()
CAMPAIGN = settings(deadline=None, database=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def examples(default: int) -> settings:
    return settings(CAMPAIGN, max_examples=EXAMPLES or default)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return produce_real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("campaign")


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    target = os.environ.get("PQBENCH_CAMPAIGN_TALLY")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(TALLY.items())), indent=1))


def run_cli(args: list[str]) -> tuple[int, str]:
    """``pqbench ARGS`` in this process: (exit status, stderr). Any exception that escapes
    ``main`` is a traceback the user would see: it fails the test as it is."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            status = pqbench(args)
        except SystemExit as exc:  # argparse's own usage errors
            status = int(exc.code or 0)
    return status, err.getvalue()


def fresh(work: Path, name: str) -> Path:
    folder = work / f"{name}-{len(list(work.iterdir()))}"
    folder.mkdir()
    return folder


def dump(path: Path, data: Any) -> bytes:
    blob = json.dumps(data).encode()
    path.write_bytes(blob)
    return blob


# ---- family 1: damaged values in a run ----------------------------------------------------------
BAD_VALUES = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, -0.5, 1e308,
                              -1e308, 10**400, 10**25, 2**63, "word", "3", "", None, True, [],
                              [1, 2], {}, {"a": 1}, 1e9, 0])
# fields a verdict or a report reads, where each of the values above but 0 / 1e9 / 10**25 is
# invalid ("certainly bad": the run must be refused by every command)
VERDICT_FIELDS = {
    "stats": ("median", "mean", "min", "max", "rounds", "data"),
    "extra_info": ("p50_ms", "p99_ms", "accuracy", "model_bytes", "macs", "batch_size", "ratio",
                   "blocks", "threads", "case_id"),
    "block": ("median_ms", "rounds", "offset", "index", "start_s", "host_ms"),
}
def certainly_bad(key: str, value: Any) -> bool:
    """``value`` can never be what field ``key`` holds (whatever else the run says)."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if key == "case_id":
        return not isinstance(value, str) or value == ""
    if key in ("blocks", "data"):
        return not isinstance(value, list) or (value != [] and key == "blocks")
    if isinstance(value, bool) or isinstance(value, dict):
        return True
    if isinstance(value, int | float):
        return value < 0 or value == 10**400
    return isinstance(value, str) or (isinstance(value, list) and key != "data")


BLOCK_REQUIRED = ("index", "start_s", "rounds", "median_ms")  # every block records them
LOCATIONS = ("stats", "extra_info", "block", "machine_info", "machine_info.pqbench",
             "machine_info.pqbench.control", "pqbench", "commit_info", "benchmark")


def section(run: dict, where: str, case: int) -> dict | None:
    bench = run["benchmarks"][case]
    if where in ("stats", "extra_info"):
        return bench[where] if isinstance(bench.get(where), dict) else None
    if where == "block":
        info = bench.get("extra_info")
        blocks = info.get("blocks") if isinstance(info, dict) else None
        return blocks[0] if isinstance(blocks, list) and blocks and isinstance(
            blocks[0], dict) else None
    if where == "benchmark":
        return bench
    value: Any = run
    for part in where.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else None


@st.composite
def damage(draw: st.DrawFn, run: dict) -> tuple[dict, list[str], bool]:
    """A copy of ``run`` with 1-3 fields set to bad values or removed; whether one of them is
    certainly invalid (a verdict field holding a value it can never hold)."""
    out = copy.deepcopy(run)
    said, certain = [], False
    if draw(st.integers(0, 4)) == 0:  # a field the report reads removed from every case
        key = draw(st.sampled_from(sorted(run["benchmarks"][0]["extra_info"])))
        for bench in out["benchmarks"]:
            bench["extra_info"].pop(key, None)
        said.append(f"every case: del {key}")
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(LOCATIONS))
        case = draw(st.integers(0, len(out["benchmarks"]) - 1))
        target = section(out, where, case)
        if target is None:
            continue
        key = draw(st.sampled_from(sorted(target) + list(VERDICT_FIELDS.get(where, ()))))
        if draw(st.booleans()) and key in target and where != "benchmark":
            del target[key]
            said.append(f"{where}[{case}] del {key}")
            certain |= where == "block" and key in BLOCK_REQUIRED
            continue
        value = draw(BAD_VALUES)
        target[key] = value
        said.append(f"{where}[{case}].{key}={value!r:.20}")
        if key in VERDICT_FIELDS.get(where, ()) and certainly_bad(key, value):
            certain = True
        certain |= where == "block" and key in BLOCK_REQUIRED and value is None
    if draw(st.integers(0, 9)) == 0:  # one case recorded twice
        out["benchmarks"].append(copy.deepcopy(out["benchmarks"][0]))
        said.append("case recorded twice")
        info = out["benchmarks"][0].get("extra_info")
        certain |= isinstance(info, dict) and isinstance(info.get("case_id"), str)
    return out, said, certain


def commands(bad: Path, good: Path, folder: Path) -> dict[str, list[str]]:
    store = folder / "store" / "machine"
    store.mkdir(parents=True)
    (store / "0001_good.json").write_bytes(good.read_bytes())
    (store / "0002_bad.json").write_bytes(bad.read_bytes())
    return {"report": ["report", str(bad)], "report-html": ["report", str(bad), "--format",
                                                            "html"],
            "report-csv": ["report", str(bad), "--format", "csv"],
            "report-baseline": ["report", str(bad), "--baseline", str(good)],
            "compare-as-candidate": ["compare", str(good), str(bad), "--paired", "never"],
            "compare-as-baseline": ["compare", str(bad), str(good), "--paired", "never"],
            "merge": ["merge", str(bad), "-o", str(folder / "merged.json")],
            "noise": ["noise", str(good), str(bad)],
            "history": ["history", str(folder / "store")]}


def test_damaged_runs_get_one_message_naming_the_file_from_every_command(real_run, work):
    good_dir = fresh(work, "good")
    good = good_dir / "good.json"
    dump(good, real_run)

    @examples(25)
    @given(st.data())
    def campaign(data: st.DataObject) -> None:
        run, said, certain = data.draw(damage(real_run))
        folder = fresh(work, "damaged")
        bad = folder / "bad.json"
        try:
            before = dump(bad, run)
        except ValueError:  # json cannot write it (e.g. a cycle): not a file anyone has
            assume(False)
        good_before = good.read_bytes()
        for name, args in commands(bad, good, folder).items():
            status, err = run_cli(args)
            outcome = {0: "accepted", 1: "regressed", 2: "refused"}.get(status, f"exit {status}")
            TALLY[f"damaged run | {name} | {outcome}"] += 1
            assert status in (0, 1, 2), (said, name, err)
            assert "Traceback" not in err, (said, name, err)
            if status == 2:  # one message, naming the file it is about
                assert err.count("error:") == 1, (said, name, err)
                assert str(bad) in err or "0002_bad.json" in err, (said, name, err)
            elif certain and name != "history":
                pytest.fail(f"{said}: {name} accepted a run with a field it can never hold "
                            f"(exit {status})")
        assert bad.read_bytes() == before and good.read_bytes() == good_before
        merged = folder / "merged.json"
        assert not merged.exists() or json.loads(merged.read_text())["benchmarks"]

    campaign()


# ---- family 2: files that are not runs of sane shape --------------------------------------------
BROKEN_KINDS = ("deep", "deep value", "huge int", "truncated", "not utf-8", "not a run",
                "empty")


def broken_file(run: dict, kind: str, size: int, choice: int) -> tuple[bytes, bool]:
    """A file of ``kind`` (``size``: depth, digits or cut), and whether it must be refused (a
    20-digit integer is a finite number: absurd, but a number; past a float's range it is
    none)."""
    text = json.dumps(run)
    if kind == "deep":
        return ("[" * size + "]" * size).encode(), True
    if kind == "deep value":  # a run whose one fact is nested deep
        return text.replace('"task":', '"deep": ' + "[" * size + "]" * size + ', "task":',
                            1).encode(), True
    if kind == "huge int":
        field = ("median", "rounds", "min")[choice % 3]
        digits = 20 + size % 9000
        return text.replace(f'"{field}": ', f'"{field}": {"9" * digits}, "x_": ',
                            1).encode(), digits > 308
    if kind == "truncated":
        return text.encode()[:size % len(text)], True
    if kind == "not utf-8":
        return b"\xff\xfe" + text.encode()[2:], True
    if kind == "not a run":
        return json.dumps([[], 3, "run", None, {"benchmarks": 3},
                           {"benchmarks": []}][choice % 6]).encode(), True
    return b"", True


def test_files_that_are_not_sane_runs_are_refused_naming_them(real_run, work):
    good_dir = fresh(work, "good2")
    good = good_dir / "good.json"
    dump(good, real_run)

    @examples(20)
    @given(st.sampled_from(BROKEN_KINDS), st.integers(40, 20_000), st.integers(0, 100))
    def campaign(kind: str, size: int, choice: int) -> None:
        blob, refuse = broken_file(real_run, kind, size, choice)
        folder = fresh(work, "broken")
        bad = folder / "bad.json"
        bad.write_bytes(blob)
        for name, args in (("report", ["report", str(bad)]),
                           ("compare", ["compare", str(good), str(bad), "--paired", "never"]),
                           ("merge", ["merge", str(bad), "-o", str(folder / "m.json")])):
            status, err = run_cli(args)
            TALLY[f"broken file ({kind}) | {name} | "
                  f"{ {0: 'accepted', 1: 'regressed', 2: 'refused'}.get(status, status)}"] += 1
            assert "Traceback" not in err and status in (0, 1, 2), (kind, name, err)
            if refuse or status == 2:
                assert status == 2 and str(bad) in err, (kind, size, name, err)
                assert not (folder / "m.json").exists()
        assert bad.read_bytes() == blob

    campaign()


# ---- family 3: an output that is an input (or cannot be written) -------------------------------
@st.composite
def aliased_output(draw: st.DrawFn, folder: Path, run_file: Path, base_file: Path
                   ) -> tuple[list[str], str]:
    command = draw(st.sampled_from(["report -o", "report --plot", "report -o = --plot",
                                    "noise --write", "merge -o", "report -o baseline"]))
    how = draw(st.sampled_from(["same path", "symlink", "hard link", "dotted path", "folder",
                                "missing folder", "/dev/null", "below a file"]))
    target = base_file if command == "report -o baseline" else run_file
    if how == "same path":
        out = target
    elif how == "symlink":
        out = folder / f"link-{draw(st.integers(0, 10**6))}.json"
        out.symlink_to(target)
    elif how == "hard link":
        out = folder / f"hard-{draw(st.integers(0, 10**6))}.json"
        os.link(target, out)
    elif how == "dotted path":
        out = target.parent / "." / ".." / target.parent.name / target.name
    elif how == "folder":
        out = folder
    elif how == "missing folder":
        out = folder / "no" / "such" / "out.json"
    elif how == "below a file":
        out = run_file / "out.json"
    else:
        out = Path("/dev/null")
    if command == "report --plot":
        out_png = out if how in ("folder", "missing folder", "/dev/null", "below a file") \
            else out
        return ["report", str(run_file), "--plot", str(out_png)], f"{command} ({how})"
    if command == "report -o = --plot":
        other = folder / "same.png"
        return ["report", str(run_file), "-o", str(other), "--plot", str(other)], command
    if command == "noise --write":
        return ["noise", str(run_file), str(base_file), "--write", str(out)], \
            f"{command} ({how})"
    if command == "merge -o":
        return ["merge", str(run_file), "-o", str(out)], f"{command} ({how})"
    return ["report", str(run_file), "--baseline", str(base_file), "-o", str(out)], \
        f"{command} ({how})"


def test_no_output_is_ever_written_over_an_input(real_run, work):
    @examples(30)
    @given(st.data())
    def campaign(data: st.DataObject) -> None:
        folder = fresh(work, "aliases")
        run_file, base_file = folder / "run.json", folder / "base.json"
        run_bytes, base_bytes = dump(run_file, real_run), dump(base_file, real_run)
        before = sorted(p.name for p in folder.iterdir())
        args, what = data.draw(aliased_output(folder, run_file, base_file))
        made = sorted(p.name for p in folder.iterdir())
        status, err = run_cli(args)
        TALLY[f"output over input | {what.split(' (')[0]} | "
              f"{'refused' if status == 2 else f'exit {status}'}"] += 1
        assert status == 2, (what, err)
        assert err.count("error:") == 1 and "Traceback" not in err, (what, err)
        assert run_file.read_bytes() == run_bytes and base_file.read_bytes() == base_bytes
        assert sorted(p.name for p in folder.iterdir()) == made  # nothing written
        assert Path("/dev/null").is_char_device()
        del before

    campaign()


# ---- family 4: bad settings ---------------------------------------------------------------------
def bad_setting(name: str) -> st.SearchStrategy[tuple[Any, str]]:
    """Values that are wrong for option ``name``, with the kind of wrong."""
    kind = OPTIONS[name][0]
    common = st.sampled_from([(["a", "b"], "a list"), ({"a": 1}, "a table")])
    if kind == "list":
        first = {"models": "shapes_resnet", "pruners": "none", "workflows": "torch",
                 "precisions": "fp32", "ort_providers": "CPUExecutionProvider",
                 "input_size": "64"}[name]
        options = [(f"{first},{first}", "given twice")]
        if name not in ("ort_providers", "input_size"):
            options += [("", "empty"), (",", "empty"), ([], "empty")]
        options += [(f"{first},nosuch_{name}", "unknown name")] if name != "input_size" else [
            ("-3", "negative size")]
        return st.sampled_from(options)
    if kind == "ints":
        return st.sampled_from([("0", "not positive"), ("-1", "not positive"), ("1.5", "float"),
                                ("x", "word"), ("8,8", "given twice"), ("", "empty")])
    if kind == "int":
        return st.one_of(st.sampled_from([("1.5", "float"), ("x", "word"), (True, "bool"),
                                          (-1, "negative")]), common)
    if kind == "float":
        return st.one_of(st.sampled_from([("nan", "nan"), ("inf", "inf"), (-1.0, "negative"),
                                          ("soon", "word"), (True, "bool")]), common)
    if kind == "bool":
        return st.sampled_from([("maybe", "word"), (2, "number"), ("", "empty")])
    if kind == "str":
        bad = {"device": [("tpu", "unknown"), ("cuda:x", "unknown")],
               "timing_profile": [("fast", "unknown")],
               "calibration_method": [("median", "unknown")],
               "fail_on": [("latency:3%,latency:5%", "metric twice"), ("speed:3%", "unknown"),
                           ("latency", "no threshold"), ("latency:-3%", "negative")]}
        return st.one_of(st.sampled_from(bad.get(name, [("", "empty")])), common)
    if kind == "map":
        return st.sampled_from([("novalue", "not KEY=VALUE")] if name == "prune_options"
                               else [("x=/no/such/folder", "missing path")])
    return st.sampled_from([({"no_such_model": {"min_accuracy": 0.5}}, "unknown model"),
                            ({"shapes_resnet": {"min_accuracy": 1.5}}, "not a fraction"),
                            ({"shapes_resnet": {"max_drop": "high"}}, "not a number"),
                            ({"shapes_resnet": {"floor": 0.1}}, "unknown key"), (3, "not a table")])


SETTING_NAMES = sorted(n for n in OPTIONS if n not in ("compare", "noise", "cache_dir"))


@st.composite
def bad_settings(draw: st.DrawFn) -> tuple[str, str, Any, str, dict, dict, dict]:
    name = draw(st.sampled_from(SETTING_NAMES))
    value, why = draw(bad_setting(name))
    layer = "pyproject" if OPTIONS[name][0] == "table" else draw(
        st.sampled_from(["cli", "ini", "pyproject"]))
    if layer == "ini" and value in ("", [], {}):  # pytest drops empty ini values: unset there
        layer = "cli"
    cli, ini, pyproject = {}, {}, {}
    {"cli": cli, "ini": ini, "pyproject": pyproject}[layer][name] = value
    if name == "calibration_size":  # INT8 needs calibration images: 0 is bad with it
        cli.setdefault("precisions", "fp32,int8")
    if name == "min_rounds":
        cli["max_rounds"] = "10"
        cli[name] = "500"
        why = "min > max"
    return name, layer, value, why, cli, ini, pyproject


def test_bad_settings_are_one_usage_error_naming_the_setting():
    @examples(150)
    @given(bad_settings())
    def campaign(drawn: tuple) -> None:
        name, layer, value, why, cli, ini, pyproject = drawn
        try:
            Settings.resolve(cli, ini, pyproject)
        except UsageError as exc:
            message = str(exc)
        else:
            pytest.fail(f"{name}={value!r} ({why}, {layer}) accepted")
        TALLY[f"bad setting | {layer} | refused"] += 1
        named = {name, name.replace("_", "-"), "floors", "batch size", "pruner", "model",
                 "workflow", "precision", "ratio", "dataset", "timing profile",
                 "calibration method", "fail-on"}
        assert any(n in message for n in named), (name, value, message)
        assert "\n" not in message.strip() or name == "floors", message

    campaign()


def test_valid_settings_stay_valid():
    """The campaign's oracle can fail: plain valid values of the same options are accepted."""
    settings_ = Settings.resolve({"pruners": "none,group0.2", "batch_sizes": "1,8",
                                  "min_rounds": "10", "max_rounds": "10", "threads": "1",
                                  "fail_on": "latency:3%,accuracy:0.5pp", "ort_providers":
                                  "CPUExecutionProvider"}, {}, {"floors": {
                                      "shapes_resnet": {"min_accuracy": 0.5}}})
    assert settings_.batch_sizes == (1, 8) and math.isclose(settings_.min_time, 1.0)


def test_every_field_removed_from_every_case_is_answered_cleanly(real_run, work):
    """A run written by another version may lack any field: each one, removed from every case,
    through the commands that read the most of a run (a polars column error was a traceback)."""
    folder = fresh(work, "removed")
    good = folder / "good.json"
    dump(good, real_run)
    first = real_run["benchmarks"][0]
    for where, key in [("extra_info", k) for k in sorted(first["extra_info"])] + [
            ("stats", k) for k in sorted(first["stats"])]:
        run = copy.deepcopy(real_run)
        for bench in run["benchmarks"]:
            bench[where].pop(key, None)  # some fields only some cases have
        bad = folder / f"without-{key}.json"
        dump(bad, run)
        for args in (["report", str(bad), "--baseline", str(good)],
                     ["report", str(bad), "--format", "csv"],
                     ["compare", str(good), str(bad), "--paired", "never"]):
            status, err = run_cli(args)
            TALLY[f"field removed from every case | {args[0]} | "
                  f"{ {0: 'accepted', 1: 'regressed', 2: 'refused'}.get(status, status)}"] += 1
            assert status in (0, 1, 2) and "Traceback" not in err, (where, key, args, err)
            assert status != 2 or str(bad) in err, (where, key, args, err)
