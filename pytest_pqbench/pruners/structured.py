"""Removal pruners built on torch-pruning's dependency graph."""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from .base import PruneContext, register_pruner


class GroupPruner:
    """``group`` (P_G): dependency-graph channel groups ranked by magnitude (L2), removed.

    Residual adds, concatenations and depthwise convolutions stay consistent because every
    coupled layer of a group is pruned together (Fang et al., DepGraph).
    """

    structure = "removed"
    options = frozenset({"iterative_steps", "global_pruning", "round_to"})
    importance = staticmethod(lambda: tp.importance.GroupMagnitudeImportance(p=2))

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        if ctx.ratio == 0.0:
            return model
        steps = int(ctx.options.get("iterative_steps", 1))
        pruner = tp.pruner.MetaPruner(
            model, ctx.example_inputs, importance=self.importance(),
            pruning_ratio=ctx.ratio, iterative_steps=steps,
            global_pruning=bool(ctx.options.get("global_pruning", False)),
            ignored_layers=ctx.ignored_layers, round_to=ctx.options.get("round_to"),
        )
        for _ in range(steps):
            pruner.step()
        return model


register_pruner("group", GroupPruner())
