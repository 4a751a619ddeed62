"""Zero-fill pruners: weights set to zero, every shape kept.

``soft`` (paper 000 IV-B) zeroes whole channels picked by torch-pruning; ``random``, ``l1``,
``l1-global`` and ``ln-structured`` (PQ Bench, thesis 001 3.3) use ``torch.nn.utils.prune``;
``semi24`` imposes 2:4 semi-structured sparsity (slides 002). Every mask is made permanent
(``prune.remove`` or direct zeroing): torch's pruning re-parametrisation keeps ``weight_orig`` and
``weight_mask`` side by side, which doubles the state_dict (thesis 5.5) and would be measured as
model size. The shapes stay, so dense kernels do the same work: no speed-up (thesis 5.4).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..errors import UsageError
from ..models.base import BATCHNORM_TYPES, CONV_TYPES
from .base import PruneContext, register_pruner
from .options import RANKING_OPTIONS, flag, ignored_modules, protected_groups
from .scope import attention_weights
from .structured import CHANNEL_OPTIONS, channel_pruner

LAYER_TYPES = (*CONV_TYPES, nn.Linear)


def weight_layers(model: nn.Module, ctx: PruneContext) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every convolution, linear layer and attention projection,
    minus the ignored ones (the head, ``ignore=...``). ``nn.MultiheadAttention`` keeps its
    q / k / v projection as its own parameter (``in_proj_weight``), not as a linear layer: it
    is listed by name, or the pruners would leave attention's largest weights dense."""
    ignored = {id(m) for m in ignored_modules(model, ctx)}
    slots = []
    for module in model.modules():
        if id(module) in ignored:
            continue
        if isinstance(module, LAYER_TYPES):
            slots.append((module, "weight"))
        elif isinstance(module, nn.MultiheadAttention):
            slots += [(module, name) for name in attention_weights(module)]
    return slots


def make_permanent(slots: list[tuple[nn.Module, str]]) -> None:
    """Fold each mask into its weight: no ``weight_orig`` / ``weight_mask`` pair is left, and no
    forward pre-hook that recomputes a weight another module reads directly (an attention block
    reads its ``out_proj.weight`` without calling ``out_proj``)."""
    for module, name in slots:
        if hasattr(module, f"{name}_mask"):
            torch_prune.remove(module, name)


class SoftPruner:
    """``soft`` (P_S): channels ranked by L2 magnitude within each layer (``global_pruning=true``
    ranks across layers), found with torch-pruning's interactive groups, then zeroed instead of
    removed: producers' output-channel weights and biases, consumers' input-channel weights and
    the BatchNorm scale and shift, as in paper 000 IV-B. It zeroes the very weights ``group``
    would remove, so its zero count equals ``group``'s parameter reduction."""

    structure = "zero-fill"
    options = CHANNEL_OPTIONS

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        if ctx.ratio == 0.0:
            return model
        pruner, steps = channel_pruner(model, ctx, tp.importance.GroupMagnitudeImportance(p=2))
        protected = protected_groups(model, ctx)
        for _ in range(steps):
            for group in pruner.step(interactive=True):
                if protected(group):  # zeroing them would zero a protected layer's inputs
                    continue
                for dep, idxs in group:
                    zero_channels(dep.target.module, dep.handler.__name__, list(idxs))
        return model


@torch.no_grad()
def zero_channels(module: nn.Module, handler: str, idxs: list[int]) -> None:
    """Zero what torch-pruning's ``handler`` would have cut out of ``module``."""
    if isinstance(module, BATCHNORM_TYPES):
        for p in (module.weight, module.bias):
            if p is not None:
                p[idxs] = 0
    elif isinstance(module, LAYER_TYPES):
        if handler == "prune_out_channels":
            module.weight[idxs] = 0
            if module.bias is not None:
                module.bias[idxs] = 0
        elif handler == "prune_in_channels" and getattr(module, "groups", 1) == 1:
            # A grouped / depthwise conv is coupled to its producer: its channels arrive
            # through prune_out_channels above.
            module.weight[:, idxs] = 0


class UnstructuredPruner:
    """Base of the ``torch.nn.utils.prune`` pruners: local (per layer) unless global."""

    structure = "zero-fill"
    options = RANKING_OPTIONS
    method: type[torch_prune.BasePruningMethod] = torch_prune.L1Unstructured
    always_global = False

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        if ctx.ratio == 0.0:
            return model
        slots = weight_layers(model, ctx)
        if self.always_global or flag(ctx, "global_pruning"):
            torch_prune.global_unstructured(slots, pruning_method=self.method, amount=ctx.ratio)
        else:
            for module, name in slots:
                self.method.apply(module, name, amount=ctx.ratio)
        make_permanent(slots)
        return model


class RandomPruner(UnstructuredPruner):
    """``random``: weights drawn at random and zeroed (a baseline every method should beat)."""

    method = torch_prune.RandomUnstructured


class L1Pruner(UnstructuredPruner):
    """``l1``: the smallest-|w| fraction of each layer's weights zeroed."""


class L1GlobalPruner(UnstructuredPruner):
    """``l1-global``: the smallest-|w| fraction of the whole network's weights zeroed; layers
    with many small weights lose more than the ratio, others less."""

    options = frozenset({"ignore"})
    always_global = True


class LnStructuredPruner:
    """``ln-structured``: whole slices along ``dim`` (0: output channels, 1: input channels)
    with the smallest Ln norm (``n``: 1, 2, ..., inf) zeroed in each layer; biases kept, as
    torch's ``ln_structured`` does."""

    structure = "zero-fill"
    options = frozenset({"n", "dim", "ignore"})

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        n, dim = ctx.options.get("n", 2), ctx.options.get("dim", 0)
        if not (isinstance(n, int | float) and n > 0 or n in ("fro", "nuc")):
            raise UsageError(f"pruner 'ln-structured': n={n!r} is not a norm order; valid: a "
                             "positive number, inf, fro, nuc")
        if dim not in (0, 1):
            raise UsageError(f"pruner 'ln-structured': dim={dim!r} is not valid; valid dims: "
                             "0 (output channels), 1 (input channels)")
        if ctx.ratio == 0.0:
            return model
        slots = weight_layers(model, ctx)
        for module, name in slots:
            torch_prune.ln_structured(module, name, amount=ctx.ratio, n=n, dim=dim)
        make_permanent(slots)
        return model


class Semi24Pruner:
    """``semi24``: 2:4 semi-structured sparsity; in every run of 4 consecutive weights along
    the input dimension the 2 of smallest |w| are zeroed (NVIDIA's ASP pattern, slides 002).

    The ratio is fixed at 0.5 by the pattern. Layers whose input width per group is not a
    multiple of 4 (an RGB stem, depthwise convolutions) cannot hold the pattern and are kept
    dense, as ASP does. Only sparse tensor cores (Ampere and newer GPUs) run 2:4 faster; on CPU
    the zeros are multiplied like any other weight, which ``note`` records in the results.
    ``to_sparse=true`` converts eligible linear weights with ``to_sparse_semi_structured`` and
    needs a CUDA GPU.
    """

    structure = "zero-fill"
    options = frozenset({"ignore", "to_sparse"})
    fixed_ratio = True  # 2 of every 4: no ratio follows the name
    note = "2:4 pattern applied; no sparse kernel on CPU, dense kernels run (no speed-up)"

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        to_sparse = flag(ctx, "to_sparse")
        if to_sparse and not torch.cuda.is_available():
            raise UsageError("pruner 'semi24': to_sparse=true needs a CUDA GPU with sparse "
                             "tensor cores; none is available here (valid here: to_sparse=false)")
        slots = [(m, n) for m, n in weight_layers(model, ctx) if semi24_eligible(m, n)]
        with torch.no_grad():
            for module, name in slots:
                weight = getattr(module, name)
                weight.mul_(semi24_mask(weight))
        if to_sparse:  # not exercised here: this machine has no GPU
            from torch.sparse import to_sparse_semi_structured

            for module, _ in slots:
                if isinstance(module, nn.Linear):
                    module.weight = nn.Parameter(to_sparse_semi_structured(module.weight))
        return model


def semi24_eligible(layer: nn.Module, name: str = "weight") -> bool:
    """Whether the weight's input width (per group) holds runs of 4."""
    return getattr(layer, name).shape[1] % 4 == 0


def semi24_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 along the input dimension (dim 1).

    A conv weight (out, in, kh, kw) is viewed as (out, kh, kw, in) so that runs of 4 are
    consecutive input channels at one kernel position, the layout sparse kernels consume.
    """
    moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
    runs = moved.abs().reshape(-1, 4)
    keep = runs.topk(2, dim=1).indices
    mask = torch.zeros_like(runs).scatter_(1, keep, 1.0).reshape(moved.shape)
    return mask.movedim(-1, 1) if weight.dim() > 2 else mask


register_pruner("soft", SoftPruner())
register_pruner("random", RandomPruner())
register_pruner("l1", L1Pruner())
register_pruner("l1-global", L1GlobalPruner())
register_pruner("ln-structured", LnStructuredPruner())
register_pruner("semi24", Semi24Pruner())
