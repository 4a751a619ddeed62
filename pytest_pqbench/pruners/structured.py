"""Removal pruners built on torch-pruning's dependency graph: ``group``, ``layer``, ``taylor``.

Each removes whole channels, so the network gets smaller and faster. Residual adds,
concatenations and depthwise convolutions stay consistent because torch-pruning prunes every
coupled layer of a dependency group together (Fang et al., DepGraph).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch import nn

from ..errors import UsageError
from ..models.base import BATCHNORM_TYPES
from .base import PruneContext, register_pruner
from .options import (
    PROTECT_OPTIONS,
    RANKING_OPTIONS,
    ignored_modules,
    layer_options,
    protected_groups,
)

CHANNEL_OPTIONS = RANKING_OPTIONS | PROTECT_OPTIONS | {"iterative_steps", "round_to",
                                                       "unwrapped"}
UNWRAPPED = re.compile(r"Unwrapped parameters detected: \[(.*?)\]")


def unwrapped_parameters(model: nn.Module, ctx: PruneContext) -> list[tuple[nn.Parameter, int]]:
    """The ``unwrapped`` prune option: parameters outside any layer torch-pruning knows (a
    layer scale, a class token, a position embedding), each with the dimension that holds its
    channels, as ``NAME:DIM`` separated by ``+`` (``unwrapped=stage1.gamma:0+pos:2``)."""
    raw = ctx.options.get("unwrapped")
    if raw in (None, ""):
        return []
    params = dict(model.named_parameters())
    out = []
    for item in str(raw).replace(";", "+").split("+"):
        name, _, dim = item.strip().rpartition(":")
        if name not in params or not dim.lstrip("-").isdigit():
            raise UsageError(f"prune option unwrapped: {item.strip()!r} is not NAME:DIM of a "
                             "parameter of the model; parameters outside known layers: "
                             + ", ".join(n for n in params if "." not in n or n.endswith(
                                 ("gamma", "scale", "token", "pos", "embed")))[:300])
        if not -params[name].dim() <= int(dim) < params[name].dim():
            raise UsageError(f"prune option unwrapped: {name} has {params[name].dim()} "
                             f"dimension(s); dimension {dim} does not exist")
        out.append((params[name], int(dim)))
    return out


def channel_pruner(model: nn.Module, ctx: PruneContext,
                   importance: tp.importance.Importance) -> tuple[tp.pruner.MetaPruner, int]:
    """A torch-pruning MetaPruner over ``model`` configured from the context's options.
    torch-pruning's warning about parameters outside any layer becomes a note of the case
    (``ctx.notes``), naming them and the option that sets their dimension."""
    opts = layer_options(ctx)
    round_to = ctx.options.get("round_to")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"prune option round_to={round_to!r} must be a positive integer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(
            model, ctx.example_inputs, importance=importance, pruning_ratio=ctx.ratio,
            iterative_steps=opts["steps"], global_pruning=opts["global_pruning"],
            ignored_layers=ignored_modules(model, ctx), round_to=round_to,
            unwrapped_parameters=unwrapped_parameters(model, ctx) or None,
        )
    for warning in caught:
        found = UNWRAPPED.search(str(warning.message))
        if found is None:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
            continue
        names = found.group(1).replace("'", "")
        ctx.notes.append(f"torch-pruning pruned parameters outside any layer ({names}) along "
                         "their last dimension of size > 1 (right for a layer scale or an "
                         "embedding whose channels are last); to set another, give prune "
                         "option unwrapped=NAME:DIM+...")
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

    def applies(self, model: nn.Module) -> str | None:
        if any(isinstance(m, BATCHNORM_TYPES) for m in model.modules()):
            return None
        norms = sorted({type(m).__name__ for m in model.modules()
                        if "Norm" in type(m).__name__})
        return (f"it ranks channels by their BatchNorm scale and {type(model).__name__} has no "
                "BatchNorm" + (f" (its {', '.join(norms)} are not ranked)" if norms else "")
                + "; use group or taylor")


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
