"""Pruners: (model, example inputs, ratio, optional data) -> pruned copy + report."""

from __future__ import annotations

from .base import (
    PRUNERS,
    PruneContext,
    Pruner,
    PruneReport,
    fixed_ratio_names,
    model_stats,
    prune,
    register_pruner,
)

__all__ = ["PRUNERS", "PruneContext", "PruneReport", "Pruner", "fixed_ratio_names",
           "model_stats", "prune", "register_pruner"]

# built-in pruners register themselves
from . import structured, zerofill  # noqa: E402,F401
