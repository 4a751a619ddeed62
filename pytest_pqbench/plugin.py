"""pytest plugin: options, the matrix as parametrized cases, fixtures, pytest-benchmark hooks.

Hooks stay thin: the matrix comes from ``config.Settings``, the expensive work from ``bench.Bench``,
the record from ``results.record``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .bench import Bench
from .case import Case
from .config import OPTIONS, Settings, check_ini_keys, read_pyproject
from .errors import UsageError
from .phase import PHASE_KEY, RECORD_KEY, SAMPLES_KEY

SETTINGS_KEY = pytest.StashKey[Settings]()
BENCH_KEY = pytest.StashKey[Bench]()
WARNINGS_KEY = pytest.StashKey[list]()
CASE_ARG = "pq_case"
# scale: pytest-split estimates, xdist build phase; faults: atomic result files, build timeout;
# progress: a line when a slow build starts and ends
pytest_plugins = ["pytest_pqbench.scale", "pytest_pqbench.faults", "pytest_pqbench.progress",
                  "pytest_pqbench.mistakes"]  # mistakes: a UsageError in a case is one line


def _flag(name: str) -> str:
    return "--pqbench-" + name.replace("_", "-")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pqbench", "pruning and quantization benchmarks (pytest-pqbench)")
    for name, (kind, default, help_text) in OPTIONS.items():
        if kind != "table":
            # a bool option works as a bare flag (--pqbench-build-only) or with a value (=false)
            flag = {"nargs": "?", "const": "true"} if kind == "bool" else {}
            if name == "weights":  # repeatable, as --pqbench-dataset
                flag = {"action": "append", "metavar": "MODEL=PATH"}
            group.addoption(_flag(name), dest=f"pqbench_{name}", default=None,
                            help=f"{help_text} (default: {default})", **flag)
        parser.addini(f"pqbench_{name}", help_text, default=None)
    group.addoption("--pqbench-dataset", dest="pqbench_dataset", action="append", default=[],
                    metavar="NAME=PATH", help="dataset on disk for NAME (repeatable)")


# pytest-benchmark options that pqbench's own timing (pedantic blocks) would silently ignore:
# the one with the same meaning is taken over, the others are named in a warning
SAME_MEANING = {"--benchmark-min-rounds": "min_rounds"}
IGNORED = {"--benchmark-min-time": "--pqbench-min-time (seconds of timed rounds per case)",
           "--benchmark-max-time": "--pqbench-max-rounds / --pqbench-min-time",
           "--benchmark-warmup": "--pqbench-warmup-rounds",
           "--benchmark-warmup-iterations": "--pqbench-warmup-rounds",
           "--benchmark-calibration-precision": "--pqbench-min-rounds"}


def _given(config: pytest.Config, flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in config.invocation_params.args)


def _cli_values(config: pytest.Config) -> dict[str, Any]:
    values = {name: config.getoption(f"pqbench_{name}", None) for name in OPTIONS
              if OPTIONS[name][0] != "table"}
    for flag, name in SAME_MEANING.items():
        if not _given(config, flag):
            continue
        if values.get(name) is not None:
            raise UsageError(f"{flag} and {_flag(name)} both given: pqbench cases are timed by "
                             f"{_flag(name)} (pytest-benchmark's pedantic mode ignores {flag}); "
                             "give one of them")
        values[name] = config.getoption(flag.removeprefix("--").replace("-", "_"))
    if config.getoption("pqbench_dataset"):
        values["datasets"] = ",".join(config.getoption("pqbench_dataset"))
    return values


def _pyproject_path(config: pytest.Config) -> Path:
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return inipath
    return config.rootpath / "pyproject.toml"


def ini_keys(config: pytest.Config) -> list[str]:
    """The keys of pytest's configuration: its file (``config.inipath``) and ``-o KEY=VALUE``.

    pytest offers no public list of the keys it read (``config.inicfg`` is deprecated in 9.2),
    and only warns about unknown ones; a mistyped ``pqbench_*`` key must be an error naming the
    valid keys, so the file is read here (key names only), as pytest finds it."""
    keys = [item.split("=", 1)[0].strip() for item in (config.option.override_ini or [])]
    path = config.inipath
    if path is None or not path.is_file():
        return keys
    if path.suffix == ".toml":
        import tomllib

        tool = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("pytest", {})
        table = tool.get("ini_options", tool) if isinstance(tool, dict) else {}
        return keys + [str(k) for k in table]
    import iniconfig  # pytest's own ini reader

    ini = iniconfig.IniConfig(str(path))
    section = "tool:pytest" if path.name == "setup.cfg" else "pytest"
    return keys + ([key for key, _ in ini[section].items()] if section in ini else [])


def _settings(config: pytest.Config) -> Settings:
    check_ini_keys(ini_keys(config))
    ini = {name: config.getini(f"pqbench_{name}") for name in OPTIONS}
    ini = {k: v for k, v in ini.items() if v not in (None, "", [])}
    cli = _cli_values(config)
    if not cli.get("cache_dir") and os.environ.get("PQBENCH_CACHE_DIR"):
        cli["cache_dir"] = os.environ["PQBENCH_CACHE_DIR"]
    return Settings.resolve(cli, ini, read_pyproject(_pyproject_path(config)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pqbench_floor(min_accuracy=None, max_drop=None): override the accuracy floor "
                   "(fractions) of the pqbench cases of this test")
    try:
        config.stash[SETTINGS_KEY] = _settings(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[WARNINGS_KEY] = [
        f"{flag} does not apply to pqbench cases (timed in blocks of whole calls, pytest-"
        f"benchmark's pedantic mode): use {instead}"
        for flag, instead in IGNORED.items() if _given(config, flag)]
    if config.stash[SETTINGS_KEY].compare:  # gate each case against a baseline run
        from .gate import RegressionGate

        gate = RegressionGate.from_config(config, config.stash[SETTINGS_KEY])
        config.pluginmanager.register(gate, "pqbench-gate")
    # Keep the raw per-round samples in the JSON: p99 and significance tests need them.
    if hasattr(config.option, "benchmark_save_data"):
        config.option.benchmark_save_data = True


def cache_dir(config: pytest.Config, settings: Settings) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    if getattr(config, "cache", None) is not None:
        return config.cache.mkdir("pqbench")
    return config.rootpath / ".pqbench-cache"


def case_params(settings: Settings) -> list[Any]:
    """Every case of the matrix; one that cannot run here carries a skip mark with its reason."""
    from .workflows import get_workflow

    device = settings.resolved_device()
    params = []
    for case in settings.cases():
        reason = get_workflow(case.workflow).check(case.precision, device)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_ARG in metafunc.fixturenames:
        metafunc.parametrize(CASE_ARG, case_params(metafunc.config.stash[SETTINGS_KEY]))


def get_bench(config: pytest.Config) -> Bench:
    if BENCH_KEY not in config.stash:
        settings = config.stash[SETTINGS_KEY]
        config.stash[BENCH_KEY] = Bench(settings, cache_dir(config, settings))
    return config.stash[BENCH_KEY]


def timing_phase_applies(config: pytest.Config) -> bool:
    """Interleaved timing needs a timing run in this process: not under --collect-only,
    build-only, --benchmark-disable / --benchmark-skip, or on an xdist worker."""
    settings = config.stash[SETTINGS_KEY]
    return not (config.option.collectonly or settings.build_only
                or getattr(config.option, "benchmark_disable", False)
                or getattr(config.option, "benchmark_skip", False)
                or hasattr(config, "workerinput"))


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    """Before the items run: build every selected case and time them all in interleaved
    blocks (``phase``), so each item records blocks spread over the whole session."""
    config = session.config
    if timing_phase_applies(config) and session.items:
        from .phase import run_phase, selected_cases

        cases = selected_cases(session.items, CASE_ARG)
        if cases:
            gate = config.pluginmanager.get_plugin("pqbench-gate")
            writer = config.pluginmanager.get_plugin("terminalreporter")
            config.stash[PHASE_KEY] = run_phase(
                get_bench(config), cases, getattr(gate, "baseline", None),
                write=(lambda line: writer.write_line(line)) if writer is not None else None,
                thresholds=gate.comparison.thresholds if gate is not None else None)
    return (yield)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pq_settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def pq_bench(pytestconfig: pytest.Config, pq_settings: Settings) -> Bench:
    return get_bench(pytestconfig)


@pytest.fixture
def pq_data(pq_bench: Bench, pq_case: Case):
    """The case's dataset (evaluation split for batches, calibration split for INT8)."""
    return pq_bench.dataset(pq_case)


@pytest.fixture
def pq_pruned(pq_bench: Bench, pq_case: Case):
    return pq_bench.pruned(pq_case)


@pytest.fixture
def pq_prune_report(pq_pruned) -> dict[str, Any]:
    return {**pq_pruned.report.as_dict(), **pq_pruned.recovery}


@pytest.fixture
def pq_engine(pq_bench: Bench, pq_case: Case):
    reason = pq_bench.skip_reason(pq_case)
    if reason:
        pytest.skip(reason)
    return pq_bench.engine_guarded(pq_case)  # built by the timing phase, or now


@pytest.fixture
def pq_accuracy(pq_bench: Bench, pq_case: Case, pq_engine) -> dict[str, Any]:
    if pq_bench.settings.build_only:
        return {}
    from .faults import time_limit

    with time_limit(pq_bench.settings.build_timeout, f"{pq_case.id}: evaluation",
                    option="--pqbench-build-timeout"):  # a forward that hangs fails its case
        return pq_bench.accuracy(pq_case)


def floor_for(request: pytest.FixtureRequest, bench: Bench, case: Case) -> dict[str, float]:
    spec = bench.spec(case)
    floor = {"min_accuracy": spec.min_accuracy, "max_drop": spec.max_drop}
    floor.update(bench.settings.floors.get(case.model, {}))
    marker = request.node.get_closest_marker("pqbench_floor")
    if marker is not None:
        floor.update({k: v for k, v in marker.kwargs.items() if v is not None})
    return {k: float(v) for k, v in floor.items()}


@pytest.fixture
def pq_floor(request: pytest.FixtureRequest, pq_bench: Bench, pq_case: Case) -> dict[str, float]:
    return floor_for(request, pq_bench, pq_case)


@pytest.fixture
def pq_assert_floor(pq_bench: Bench, pq_floor: dict[str, float]):
    """``pq_assert_floor(case, accuracy)``: fail (after timing was recorded) below the floor."""

    def check(case: Case, accuracy: dict[str, Any]) -> None:
        if not accuracy:  # build-only run: nothing measured
            return
        value = accuracy["accuracy"]
        metric = accuracy.get("accuracy_metric", "accuracy")
        reference = pq_bench.reference_accuracy(case)["accuracy"]
        problems = []
        if value < pq_floor["min_accuracy"]:
            problems.append(f"below the absolute floor min_accuracy={pq_floor['min_accuracy']:.4f}")
        if reference - value > pq_floor["max_drop"]:
            problems.append(f"drop {reference - value:.4f} vs unpruned eager FP32 ({reference:.4f})"
                            f" exceeds max_drop={pq_floor['max_drop']:.4f}")
        if problems:
            pytest.fail(f"{case.id}: {metric} {value:.4f} " + "; ".join(problems), pytrace=False)

    return check


@pytest.fixture
def pq_timer(request: pytest.FixtureRequest, pq_bench: Bench, pq_case: Case, pq_engine,
             pq_pruned, pq_accuracy, pq_floor):
    """``pq_timer(benchmark, engine, batch)``: warm up, time the rounds, record every metric."""
    from .measure import measure

    def run(benchmark, engine, batch) -> dict[str, Any]:
        record = measure(pq_bench, pq_case, benchmark, engine, batch, pq_pruned, pq_accuracy,
                         pq_floor, request.config.stash.get(PHASE_KEY, None))
        request.node.stash[RECORD_KEY] = record  # the record stage's result: read by the gate
        stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
        request.node.stash[SAMPLES_KEY] = list(stats.stats.data) if stats is not None else []
        warn_if_not_engaged(request.config, pq_case, record)
        return record

    return run


def warn_if_not_engaged(config: pytest.Config, case: Case, record: dict[str, Any]) -> None:
    engaged = record.get("precision_engaged")
    if case.precision != "fp32" and engaged is not None and engaged < 0.5:
        config.stash[WARNINGS_KEY].append(
            f"precision not engaged: {case.id}: {case.precision} requested but only "
            f"{engaged:.0%} of compute runs in {case.precision} ({record.get('provider')}); "
            f"its figures are not {case.precision}")


# ---- pytest-benchmark hooks ---------------------------------------------------------------------
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from .environment import machine_facts

    machine_info["pqbench"] = machine_facts(config.stash.get(SETTINGS_KEY, None))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict) -> None:
    from .results.record import add_ratio_metrics

    add_ratio_metrics(output_json.get("benchmarks", []))
    bench = config.stash.get(BENCH_KEY, None)
    timed = [b for b in output_json.get("benchmarks", []) if "p50_ms" in b.get("extra_info", {})]
    if bench is not None and timed:  # how close to this machine's peak each engine runs
        from .environment import machine_peaks
        from .results.record import add_efficiency

        peaks = machine_peaks(threads=bench.threads)
        output_json.setdefault("machine_info", {}).setdefault("pqbench", {})["peaks"] = peaks
        add_efficiency(timed, peaks)
    output_json["pqbench"] = {"schema_version": __import__("pytest_pqbench").SCHEMA_VERSION}
    gate = config.pluginmanager.get_plugin("pqbench-gate")
    if gate is not None:  # the in-pytest gate's verdicts, with their reasons
        output_json["pqbench"]["compare"] = gate.as_json()
    phase = config.stash.get(PHASE_KEY, None)
    if phase is not None:
        output_json["pqbench"]["timing_phase"] = {"cycles": phase.cycles,
                                                  "most_cycles": phase.most_cycles,
                                                  "looks": phase.looks,
                                                  "timed_on": phase.timed_on,
                                                  "seconds": round(phase.seconds, 3),
                                                  "errors": phase.errors}
    if bench is not None:
        stats = bench.cache.stats
        output_json["pqbench"].update({"cache_dir": str(bench.cache.root),
                                       "cache_hits": stats.hits, "cache_misses": stats.misses,
                                       "cache_hit_rate": stats.hit_rate})


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    warnings = config.stash.get(WARNINGS_KEY, [])
    bench = config.stash.get(BENCH_KEY, None)
    if bench is not None:  # the results table: one row per timed case
        from .summary import write_summary

        write_summary(terminalreporter, config, bench.records)
    if not warnings and bench is None:
        return
    terminalreporter.section("pqbench")
    for line in warnings:
        terminalreporter.write_line(f"WARNING {line}", yellow=True)
    if bench is not None:
        s = bench.cache.stats
        terminalreporter.write_line(
            f"artefact cache {bench.cache.root}: {s.hits} hits, {s.misses} builds "
            f"(hit rate {s.hit_rate_text}), {s.rebuilt_corrupt} corrupt entries rebuilt")
