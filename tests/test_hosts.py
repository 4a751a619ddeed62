"""The private pieces of the host plugins pytest-pqbench still relies on, where no public route
exists (issue 16). Each test names what changed when it fails; the behaviour they serve is
tested end to end in test_faults.py (saved runs never overwritten) and test_scale.py
(pytest-split estimates)."""

from __future__ import annotations

import inspect

import pytest


def test_pytest_benchmark_storage_has_what_no_clobber_save_uses(tmp_path):
    """plugin.faults replaces the storage's ``save`` and numbers runs from its public
    ``query()``: the session is found as the plugin named "pytest-benchmark"."""
    import logging

    from pytest_benchmark import plugin
    from pytest_benchmark.storage.file import FileStorage

    assert list(inspect.signature(FileStorage.save).parameters)[1:] == ["output_json", "save"]
    storage = FileStorage(tmp_path, logging.getLogger("x"), default_machine_id="m")
    storage.get("0007_a.json").write_text("{}")
    assert [p.name for p in storage.query("[0-9][0-9][0-9][0-9]_*")] == ["0007_a.json"]
    assert "register(bs, 'pytest-benchmark')" in inspect.getsource(plugin).replace('"', "'")


def test_pytest_benchmark_reads_the_json_option_when_its_session_is_made():
    """faults.py points ``--benchmark-json`` at a scratch file in a tryfirst configure hook:
    that works only while pytest-benchmark reads the option when it makes its session (in its
    own, trylast, configure) and writes the file at the end."""
    from pytest_benchmark import session

    source = inspect.getsource(session.BenchmarkSession)
    assert "getoption('benchmark_json')" in source.replace('"', "'")
    assert "open(self.json" in source


def test_pytest_split_keeps_its_durations_in_a_dict_we_can_extend():
    plugin = pytest.importorskip("pytest_split.plugin")
    source = inspect.getsource(plugin)
    assert "self.cached_durations" in source, (
        "pytest-split no longer keeps cached_durations: scale.feed_split_estimates cannot give it "
        "estimates")
