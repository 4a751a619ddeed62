"""The pytest plugin (entry point ``pytest11: pqbench``): options, settings, the matrix as
parametrized cases, and the timing phase before the items run.

Everything pytest-facing lives in this package, one module per concern: ``fixtures`` (the
``pq_*`` fixtures: each asks a stage for its part), ``output`` (what the run adds to
pytest-benchmark's JSON and the terminal), ``summary`` (the results table), ``gate``
(``--pqbench-compare``), ``faults`` (result files that are never half-written),
``scale`` (pytest-split estimates, xdist), ``progress`` and ``mistakes`` (terminal lines).
Hooks stay thin: the work is done by the stages (``pytest_pqbench.stages``), the figures by the
case record (``results.record``); what they share is in ``keys``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import isolation
from ..cache import ArtefactCache
from ..config import OPTIONS, Settings, check_ini_keys, read_pyproject
from ..errors import CacheError, UsageError
from ..stages.build import Builder
from ..stages.phase import run_phase
from ..stages.prepare import Preparer
from ..workflows import get_workflow
from .keys import (
    BUILDER_KEY,
    CASE_ARG,
    PHASE_KEY,
    RECORDS_KEY,
    SETTINGS_KEY,
    WARNINGS_KEY,
    selected_cases,
)

pytest_plugins = [f"pytest_pqbench.plugin.{name}" for name in (
    "fixtures", "output", "scale", "faults", "progress", "mistakes")]
isolation.keep_terminal_stderr()  # imported before pytest captures fd 2: the watchdog's stderr


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


def _given_twice(config: pytest.Config) -> None:
    """An option given twice on the command line: argparse keeps the last silently."""
    for name, (kind, _, _) in OPTIONS.items():
        if kind == "table":
            continue
        flag = _flag(name)
        uses = [a for a in config.invocation_params.args
                if isinstance(a, str) and (a == flag or a.startswith(flag + "="))]
        if len(uses) > 1:
            raise UsageError(f"{flag} given {len(uses)} times ({', '.join(uses)}); the last "
                             "would silently win: give it once (a list option takes a "
                             "comma-separated list, e.g. --pqbench-pruners=none,group0.2)")


def _cli_values(config: pytest.Config) -> dict[str, Any]:
    _given_twice(config)
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

        tool = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {})
        tool = tool.get("pytest", {}) if isinstance(tool, dict) else {}
        table = tool.get("ini_options", tool) if isinstance(tool, dict) else {}
        return keys + ([str(k) for k in table] if isinstance(table, dict) else [])
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


# Warnings the hosts (torch, torchao, the ONNX exporter) raise on every compile or export that
# concern no user of this plugin: ~14 torch.jit.script_method deprecations per inductor
# compile, pytree's LeafSpec deprecation on every export. Filtered as pytest's -W would, in the
# tests and in the timing phase (which runs outside pytest's own warning capture).
HOST_CHATTER = ((r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
                (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning))


@contextlib.contextmanager
def quiet_hosts() -> Iterator[None]:
    with warnings.catch_warnings():
        for message, category in HOST_CHATTER:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def pytest_configure(config: pytest.Config) -> None:
    for message, category in HOST_CHATTER:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")
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
    config.stash[RECORDS_KEY] = {}
    if config.stash[SETTINGS_KEY].compare:  # gate each case against a baseline run
        from .gate import RegressionGate  # only with a baseline: it loads the results readers

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
    """Every case of the matrix; one that cannot run here carries a skip mark with its reason:
    its workflow cannot run on this device, or its pruner does not apply to its model (``layer``
    on a model without BatchNorm would remove nothing)."""
    device = settings.resolved_device()
    params = []
    for case in settings.cases():
        reason = get_workflow(case.workflow).check(case.precision, device) \
            or pruner_does_not_apply(case)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def pruner_does_not_apply(case: Any) -> str | None:
    """Why the case's pruner cannot prune its model, from the model's structure alone (built
    untrained, once per model); None when it applies or the model cannot be built here (the
    run then decides, see ``pruners.base.prune``)."""
    from ..models import get_spec
    from ..pruners.base import PRUNERS

    if case.pruner.ratio <= 0 or getattr(PRUNERS.get(case.pruner.name), "applies", None) is None:
        return None
    reason = _applies(get_spec(case.model).builder, case.pruner.name)
    return f"pruner {case.pruner.name!r} does not apply to {case.model}: {reason}" if reason \
        else None


@functools.cache  # by builder: a conftest run again in one process registers a new one
def _applies(builder: Any, pruner: str) -> str | None:
    from ..pruners.base import not_applicable

    try:
        built = builder(2)
    except Exception:  # the builder needs its dataset's class count: the run decides
        return None
    return not_applicable(pruner, built)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_ARG in metafunc.fixturenames:
        metafunc.parametrize(CASE_ARG, case_params(metafunc.config.stash[SETTINGS_KEY]))


def get_builder(config: pytest.Config) -> Builder:
    """The session's building stage (and, through it, the preparing stage), made on first use."""
    if BUILDER_KEY not in config.stash:
        settings = config.stash[SETTINGS_KEY]
        prep = Preparer(settings, ArtefactCache(cache_dir(config, settings)))
        config.stash[BUILDER_KEY] = Builder(prep)
    return config.stash[BUILDER_KEY]


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
    cases = selected_cases(session.items) if not config.option.collectonly else []
    if cases and not hasattr(config, "workerinput"):
        try:  # a cache folder that cannot be used: a usage error before any case runs
            get_builder(config)
        except CacheError as exc:
            raise pytest.UsageError(str(exc)) from None
    if timing_phase_applies(config) and cases:
        gate = config.pluginmanager.get_plugin("pqbench-gate")
        writer = config.pluginmanager.get_plugin("terminalreporter")
        builder = get_builder(config)
        with quiet_hosts():
            config.stash[PHASE_KEY] = run_phase(
                builder, cases, getattr(gate, "baseline", None),
                write=(lambda line: writer.write_line(line)) if writer is not None else None,
                thresholds=gate.comparison.thresholds if gate is not None else None)
    return (yield)
