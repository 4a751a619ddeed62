"""Removal pruners built on torch-pruning's dependency graph: ``group``, ``layer``, ``taylor``.

Each removes whole channels, so the network gets smaller and faster. Residual adds,
concatenations and depthwise convolutions stay consistent because torch-pruning prunes every
coupled layer of a dependency group together (Fang et al., DepGraph).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch import nn

from ..errors import UsageError
from .base import PruneContext, register_pruner
from .options import (
    PROTECT_OPTIONS,
    RANKING_OPTIONS,
    ignored_modules,
    layer_options,
    protected_groups,
)

CHANNEL_OPTIONS = RANKING_OPTIONS | PROTECT_OPTIONS | {"iterative_steps", "round_to"}


def channel_pruner(model: nn.Module, ctx: PruneContext,
                   importance: tp.importance.Importance) -> tuple[tp.pruner.MetaPruner, int]:
    """A torch-pruning MetaPruner over ``model`` configured from the context's options."""
    opts = layer_options(ctx)
    round_to = ctx.options.get("round_to")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"prune option round_to={round_to!r} must be a positive integer")
    pruner = tp.pruner.MetaPruner(
        model, ctx.example_inputs, importance=importance, pruning_ratio=ctx.ratio,
        iterative_steps=opts["steps"], global_pruning=opts["global_pruning"],
        ignored_layers=ignored_modules(model, ctx), round_to=round_to,
    )
    return pruner, opts["steps"]


class GroupPruner:
    """``group`` (P_G): dependency-graph channel groups ranked by magnitude (L2), removed."""

    structure = "removed"
    options = CHANNEL_OPTIONS
    importance = staticmethod(lambda: tp.importance.GroupMagnitudeImportance(p=2))

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        if ctx.ratio == 0.0:
            return model
        pruner, steps = channel_pruner(model, ctx, self.importance())
        protected = protected_groups(model, ctx)
        for _ in range(steps):
            self.before_step(model, ctx)
            for group in pruner.step(interactive=True):
                if not protected(group):  # keeps a protected layer's input width too
                    group.prune()
        return model

    def before_step(self, model: nn.Module, ctx: PruneContext) -> None:
        """Hook for importances that need fresh data each step (Taylor's gradients)."""


class LayerPruner(GroupPruner):
    """``layer`` (P_L, paper 000 IV-A): channels ranked by their BatchNorm scale |gamma| and
    removed with the convolutions that produce and consume them. Groups without a BatchNorm
    (a classifier or detection head) have no BN score and are left alone."""

    importance = staticmethod(lambda: tp.importance.BNScaleImportance())


class TaylorPruner(GroupPruner):
    """``taylor``: first-order Taylor importance |w * dL/dw| (Molchanov et al.), channels removed.

    The gradients come from the calibration batches: cross-entropy on their labels for a
    classifier; for a detector, whose loss needs box matching, the sum of squared outputs stands
    in as a proxy loss (it still ranks channels by how much the outputs depend on them).
    Gradients are recomputed before every iterative step, on the already-pruned network.
    """

    importance = staticmethod(lambda: tp.importance.TaylorImportance())

    def before_step(self, model: nn.Module, ctx: PruneContext) -> None:
        if not ctx.calibration:
            raise UsageError("pruner 'taylor' needs calibration batches (images, labels) for its "
                             "gradients; none were given")
        model.eval()  # eval: BatchNorm running statistics must not move while we probe
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for images, labels in ctx.calibration:
                outputs = model(torch.as_tensor(images))
                taylor_loss(outputs, labels, ctx.task).backward()

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        pruned = super().__call__(model, ctx)
        pruned.zero_grad(set_to_none=True)  # the gradients were only for ranking
        return pruned


def taylor_loss(outputs: object, labels: object, task: str) -> torch.Tensor:
    if task == "classify" and labels is not None:
        return nn.functional.cross_entropy(outputs, torch.as_tensor(labels).long())
    return sum((t.float() ** 2).sum() for t in _tensors(outputs))


def _tensors(outputs: object) -> Iterator[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        yield outputs
    elif isinstance(outputs, list | tuple):
        for item in outputs:
            yield from _tensors(item)
    elif isinstance(outputs, dict):
        for item in outputs.values():
            yield from _tensors(item)


register_pruner("group", GroupPruner())
register_pruner("layer", LayerPruner())
register_pruner("taylor", TaylorPruner())
