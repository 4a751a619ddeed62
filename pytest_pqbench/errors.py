"""Every error pytest-pqbench raises on purpose, in one place, imported downward only (this
module imports nothing of the package; pytest only for the time limit's base class).

- ``UsageError``: a bad setting or name; names the bad value and the valid choices. pytest turns
  it into a usage error (exit 4), ``pqbench`` into exit status 2.
- ``InputError``: an unusable input file (not a run, damaged, no case in common): ``pqbench``
  exit status 2, never 1 (1 means "regressed").
"""

from __future__ import annotations

import pytest


class UsageError(ValueError):
    """Bad user input: names the bad value and the valid choices."""


class InputError(Exception):
    """Unusable input (a file that is not a run, no case in common): exit status 2."""


class NonFiniteOutput(AssertionError):
    """An engine produced NaN / Inf outputs (parity check, evaluation or the timed batch)."""


class TimeLimitExceeded(pytest.fail.Exception):
    """A block run under ``time_limit`` ran past its limit.

    Not an ``Exception`` (pytest's ``Failed`` is a ``BaseException``, as pytest-timeout raises
    it): the code a limit interrupts (the ONNX exporter's fallbacks, ONNX Runtime's tools, a
    user's model) catches ``Exception`` and would carry on with the clock spent; a limit must end
    the stage. pytest reports it as the case's failure, in a fixture too. Catch it by name where
    a case's failure is kept (``stages.build``, ``stages.timing``)."""


class BuildTimeout(TimeLimitExceeded):
    """A case's build (prune, export, calibrate, engine) ran past ``--pqbench-build-timeout``."""


class ParityError(AssertionError):
    """An engine's outputs differ from eager FP32 torch beyond its precision's tolerance."""


class ExportParityError(AssertionError):
    """An ONNX export does not reproduce the torch model on real inputs."""


class DatasetError(UsageError):
    """A dataset on disk is not usable: the message names the file or folder and the problem."""


class UnreadableImage(DatasetError):
    """One image file Pillow cannot read: skipped and counted, not fatal (see ``Skipped``)."""


class NothingPruned(Exception):
    """A pruner that would leave the model as it was (it does not apply to this model, or it
    changed no layer at its ratio): the case is skipped with this reason, never recorded as
    pruned."""


class StepFailed(RuntimeError):
    """A step of a case failed inside code the user gave (a trainer, a model's forward): the
    message names the case, the step and the original error in one line (the traceback stays
    available with ``--fulltrace``)."""


class TrainingCut(RuntimeError):
    """Training reached its ``time_budget_s`` before its epochs: the model is not the one its
    cache key names, so it is discarded (never cached) and the case fails with this message."""


class CorruptEntry(Exception):
    """An artefact cache entry failed its check (hashes, manifest, layout): rebuilt."""


class CacheError(Exception):
    """A cache entry that cannot be repaired by this process (e.g. it cannot be removed)."""
