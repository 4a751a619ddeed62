"""The Workflow protocol and the Engine it builds.

``Workflow.check(precision, device)`` returns None when the combination can run here, else the
reason it cannot (package missing, no GPU, precision unsupported): the case is then collected and
skipped with that reason. ``Workflow.build(model, precision, calibration, example, ctx)`` returns
an Engine: a callable on a float32 NCHW numpy batch that returns the outputs as float32 numpy,
synchronised (it returns only when results are ready), plus ``facts`` about itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..cache import ArtefactCache


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a dependency
        return os.cpu_count() or 1


@dataclass
class BuildContext:
    """What a workflow needs besides the model: where to cache, how many threads, options."""

    cache: ArtefactCache | None
    model_key: str  # content hash of the (pruned) model's weights and structure
    threads: int = field(default_factory=physical_cores)
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    options: dict[str, Any] = field(default_factory=dict)
    workdir: Path | None = None  # scratch space when no cache is given


class Engine:
    """A runnable artefact. Subclasses set ``_run``; ``facts`` describe what was built."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], facts: dict[str, Any]) -> None:
        self._run = run
        self.facts = facts

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)


class Workflow(Protocol):
    name: str
    precisions: frozenset[str]

    def check(self, precision: str, device: str) -> str | None: ...

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine: ...


WORKFLOWS: Registry[Workflow] = Registry("workflow", "pqbench.workflows")


def register_workflow(workflow: Workflow, *, replace: bool = False) -> Workflow:
    return WORKFLOWS.register(workflow.name, workflow, replace=replace)


def get_workflow(name: str) -> Workflow:
    return WORKFLOWS.get(name)


def unsupported(workflow: str, precision: str, supported: frozenset[str] | set[str]) -> str:
    return (f"workflow {workflow!r} does not run precision {precision!r} "
            f"(it runs: {', '.join(sorted(supported))})")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
