"""Scaling out: pytest-split groups balanced from the first run, and the build phase under xdist.

Timing never runs in parallel on one device (pytest-benchmark disables itself under xdist).
The matrix is sharded with pytest-split (``--splits N --group K``), one group per GPU or CI job,
and the groups' JSON merged with ``pqbench merge``. pytest-split balances groups by stored
durations (``--store-durations``); for cases it has no duration for, this plugin feeds it an
estimate from what it knows about a case (build cost of its workflow and precision, pruning,
timing rounds), with shared artefacts' cost divided among the cases that share them, so the
first split is already balanced. ``--pqbench-build-only -n N`` builds every artefact in
parallel into the shared, locked cache; the workers' cache figures are summed on the controller.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from ..case import Case
from ..config import Settings
from ..workflows.base import build_cost
from .keys import BUILDER_KEY, SETTINGS_KEY, case_of

# Rough seconds on a 2-core CPU (order of magnitude is what balancing needs). A workflow's own
# build, export and calibration costs are its ``cost`` (``workflows.base.BuildCost``).
PRUNE_SECONDS = 2.0
FINETUNE_EPOCH_SECONDS = 40.0
EVALUATION_SECONDS = 1.0  # accuracy over the evaluation split
ROUND_SECONDS_PER_IMAGE = 2e-4
# Settings that change nothing measured: runs differing only here may be merged.
MACHINE_LOCAL_SETTINGS = ("cache_dir", "build_timeout")
SKIPPED_SECONDS = 0.01


def estimate_seconds(cases: list[Case], settings: Settings) -> dict[str, float]:
    """Estimated wall seconds of each case (by id), shared build costs split among sharers."""
    costs = {name: build_cost(name) for name in {c.workflow for c in cases}}
    pruned = Counter((c.model, c.dataset, c.pruner) for c in cases)
    exported = Counter((c.model, c.dataset, c.pruner) for c in cases
                       if costs[c.workflow].export_s)
    engines = Counter((c.model, c.dataset, c.pruner, c.workflow, c.precision) for c in cases)
    out = {}
    for c in cases:
        model = (c.model, c.dataset, c.pruner)
        prune = 0.0
        if c.pruner.name != "none":
            prune = PRUNE_SECONDS + FINETUNE_EPOCH_SECONDS * settings.finetune_epochs
        cost = costs[c.workflow]
        engine = cost.build_s + cost.calibrate_s.get(c.precision, 0.0)
        export = cost.export_s
        per_round = c.batch_size * ROUND_SECONDS_PER_IMAGE
        timing = (settings.warmup_rounds * per_round + EVALUATION_SECONDS
                  + max(settings.min_time, settings.min_rounds * per_round))
        out[c.id] = (prune / pruned[model] + (export / exported[model] if export else 0.0)
                     + engine / engines[(*model, c.workflow, c.precision)]
                     + (0.0 if settings.build_only else timing))
    return out


def feed_split_estimates(config: pytest.Config, items: list[pytest.Item]) -> int:
    """Give pytest-split an estimate for every pqbench case it has no stored duration for.

    Returns how many estimates were added. Stored durations always win.
    """
    splitter = config.pluginmanager.get_plugin("pytestsplitplugin")
    if splitter is None:
        return 0
    settings = config.stash[SETTINGS_KEY]
    # a case skipped here (no GPU, unsupported precision) costs next to nothing
    by_item = {item.nodeid: (case_of(item), item.get_closest_marker("skip") is not None)
               for item in items}
    cases = [c for c, skipped in by_item.values() if c is not None and not skipped]
    estimates = estimate_seconds(cases, settings)
    # pytest-split has no public way to give it estimates (its documented options read stored
    # durations only); its splitter's durations dict is the one private access, checked here and
    # by tests/test_hosts.py
    durations = getattr(splitter, "cached_durations", None)
    if not isinstance(durations, dict):
        raise pytest.UsageError(
            "pytest-split's plugin has no cached_durations dict any more (a newer pytest-split?): "
            "pytest-pqbench cannot give it estimates of the cases' build and timing cost; "
            "pytest-split 0.9 to 0.11 are tested")
    added = 0
    for nodeid, (case, skipped) in by_item.items():
        if case is not None and nodeid not in durations:
            durations[nodeid] = SKIPPED_SECONDS if skipped else estimates[case.id]
            added += 1
    return added


def run_settings(settings: Settings) -> dict[str, Any]:
    """The run's configuration as recorded in the JSON (what ``pqbench merge`` compares)."""
    return {k: v for k, v in sorted(settings.as_dict().items())
            if k not in MACHINE_LOCAL_SETTINGS}


# ---- hooks --------------------------------------------------------------------------------------
@pytest.hookimpl(trylast=True)  # after the main plugin has resolved the settings
def pytest_configure(config: pytest.Config) -> None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None and settings.build_only:
        # build-only times nothing on purpose: the benchmark fixture is left unused
        config.addinivalue_line("filterwarnings",
                                "ignore:Benchmark fixture was not used at all")
        config.addinivalue_line("filterwarnings",
                                "ignore:Benchmarks are automatically disabled because xdist")


@pytest.hookimpl(tryfirst=True)  # before pytest-split's (trylast) selection reads the durations
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    added = feed_split_estimates(config, items)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if added and reporter is not None:
        reporter.write_line(f"[pqbench] pytest-split: estimated durations for {added} cases "
                            "with no stored duration (build cost, pruning, timing rounds)")


@pytest.hookimpl(trylast=True)  # after the main plugin has created output_json["pqbench"]
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict) -> None:
    info = output_json.setdefault("pqbench", {})
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is not None:
        info["settings"] = run_settings(settings)
    splits, group = config.getoption("splits", None), config.getoption("group", None)
    info["split"] = {"splits": splits, "group": group} if splits and group else None


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An empty split group is not an error; an xdist worker hands its cache figures over."""
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    deselected = reporter is not None and reporter.stats.get("deselected")
    if (session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and deselected
            and config.getoption("splits", None)):
        # pytest-split's duration_based_chunks can leave a group without cases when a few
        # dominate; that job has nothing to do, it has not failed
        session.exitstatus = pytest.ExitCode.OK
    builder = config.stash.get(BUILDER_KEY, None)
    if hasattr(config, "workeroutput") and builder is not None:
        s = builder.prep.cache.stats
        config.workeroutput["pqbench_cache"] = {
            "hits": s.hits, "misses": s.misses, "rebuilt_corrupt": s.rebuilt_corrupt,
            "builds_by_kind": dict(s.builds_by_kind)}


class XdistController:
    """Sums the workers' cache figures (registered only when xdist is active)."""

    def __init__(self) -> None:
        self.totals: dict[str, Any] = {"hits": 0, "misses": 0, "rebuilt_corrupt": 0,
                                       "builds_by_kind": Counter(), "workers": 0}

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        figures = getattr(node, "workeroutput", {}).get("pqbench_cache")
        if not figures:
            return
        self.totals["workers"] += 1
        for key in ("hits", "misses", "rebuilt_corrupt"):
            self.totals[key] += figures[key]
        self.totals["builds_by_kind"].update(figures["builds_by_kind"])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        t = self.totals
        if not t["workers"]:
            return
        total = t["hits"] + t["misses"]
        rate = t["hits"] / total if total else 1.0
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(t["builds_by_kind"].items())) or "none"
        terminalreporter.section("pqbench")
        terminalreporter.write_line(
            f"artefact cache over {t['workers']} workers: {t['hits']} hits, {t['misses']} builds "
            f"(hit rate {rate:.0%}; built: {kinds}), {t['rebuilt_corrupt']} corrupt entries "
            "rebuilt")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if config.pluginmanager.hasplugin("dsession"):  # xdist controller
        config.pluginmanager.register(XdistController(), "pqbench-xdist-controller")
