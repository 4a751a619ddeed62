"""One line per user mistake: a ``UsageError`` raised while a case runs (a weights file that
does not fit, a dataset that cannot be read, a model without a trainer in a fine-tuning run, a
wrong class count) and a ``StepFailed`` (a user's trainer that raised while fine-tuning) are
reported as their message, without a traceback. The message already names
the file or setting at fault; the traceback would only show this package's internals.

Loaded by ``pytest_pqbench.plugin`` (``pytest_plugins``).
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from ..errors import StepFailed, UsageError


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator:
    outcome = yield
    report = outcome.get_result()
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, UsageError | StepFailed) and report.failed:
        if not item.config.getoption("fulltrace", False):  # --fulltrace still shows it all
            notes = getattr(excinfo.value, "__notes__", None) or []  # e.g. the case it built
            report.longrepr = f"pqbench: {excinfo.value}" + (f" ({'; '.join(notes)})"
                                                               if notes else "")
