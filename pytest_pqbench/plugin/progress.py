"""Progress lines in the terminal: the sink of ``pytest_pqbench.progress`` for one session.

Lines go to pytest's terminal reporter with output capture lifted for the line (as pytest's live
logging does), so they show with ``-q`` and while a test's output is captured. An xdist worker
installs no sink: a worker's terminal is not the user's, its lines go to the logger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from ..progress import LOGGER, pop_sink, push_sink

SINK_KEY = pytest.StashKey[Callable[[str], None]]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return

    def sink(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            LOGGER.info(line)
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        lifted = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with lifted:
            reporter.write_line(line)
            # now, not at exit: torch.compile forks workers, and a child inherits an unflushed
            # buffer and writes it again (duplicate lines when the output is a file or a pipe)
            reporter.flush()

    config.stash[SINK_KEY] = sink
    push_sink(sink)


def pytest_unconfigure(config: pytest.Config) -> None:
    sink = config.stash.get(SINK_KEY, None)
    if sink is not None:
        pop_sink(sink)
