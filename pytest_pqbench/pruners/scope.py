"""What a pruner did to each layer: which weight layers it pruned, which it left whole, and
which were protected, per kind of layer (convolution, depthwise convolution, linear, attention).

A pruner can do less than its name suggests and say nothing: torch-pruning's groups on a ViT
built with ``nn.MultiheadAttention`` cut only the MLP hidden width (the attention's width is the
residual stream's, which feeds the protected head), and a BatchNorm-scale ranking finds nothing
to rank in a model without BatchNorm. ``prune_scope`` compares the model before and after, so
every case records what really changed (``pruned_layers``, ``prune_scope``) and a pruner that
changed nothing is caught (``NothingPruned``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..models.base import CONV_TYPES

KINDS = ("conv", "depthwise conv", "linear", "attention")
LISTED = 4  # untouched layers named in the one-line scope, the rest counted


def attention_weights(module: nn.MultiheadAttention) -> list[str]:
    """The projection weights an ``nn.MultiheadAttention`` keeps as its own parameters (the
    fused ``in_proj_weight``, or separate q / k / v weights when kdim / vdim differ)."""
    names = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
    return [n for n in names if isinstance(getattr(module, n, None), torch.Tensor)]


def weight_units(model: nn.Module) -> Iterator[tuple[str, str, list[torch.Tensor]]]:
    """(module name, kind, weight tensors) of every layer that holds a weight matrix. An
    attention block is one unit: its q / k / v projection and its output projection."""
    inside_attention: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            tensors = [getattr(module, n) for n in attention_weights(module)]
            tensors.append(module.out_proj.weight)
            inside_attention.add(id(module.out_proj))
            yield name, "attention", tensors
        elif isinstance(module, CONV_TYPES):
            groups = getattr(module, "groups", 1)
            depthwise = groups > 1 and groups == module.in_channels
            yield name, "depthwise conv" if depthwise else "conv", [module.weight]
        elif isinstance(module, nn.Linear) and id(module) not in inside_attention:
            yield name, "linear", [module.weight]


def prunable_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every weight matrix a pruner may cut or zero (zero fractions are counted over these)."""
    return [t for _, _, tensors in weight_units(model) for t in tensors]


def _footprint(tensors: list[torch.Tensor]) -> tuple[tuple[tuple[int, ...], ...], int]:
    return tuple(tuple(t.shape) for t in tensors), sum(int((t == 0).sum()) for t in tensors)


def prune_scope(before: nn.Module, after: nn.Module, protected: list[str]) -> dict[str, Any]:
    """``pruned_layers`` ({kind: [pruned, of]}, protected layers not counted), ``prune_scope``
    (one line: what was pruned, what was not, what was protected) and ``pruned_nothing``."""
    now = {name: _footprint(tensors) for name, _, tensors in weight_units(after)}
    counts = {kind: [0, 0] for kind in KINDS}
    untouched: dict[str, list[str]] = {kind: [] for kind in KINDS}
    guarded = []
    for name, kind, tensors in weight_units(before):
        if any(name == p or name.startswith(p + ".") for p in protected):
            guarded.append(name)
            continue
        shapes, zeros = _footprint(tensors)
        after_shapes, after_zeros = now.get(name, ((), 0))
        changed = after_shapes != shapes or after_zeros > zeros
        counts[kind][1] += 1
        counts[kind][0] += int(changed)
        if not changed:
            untouched[kind].append(name)
    counts = {k: v for k, v in counts.items() if v[1]}
    parts = [f"{kind} {n}/{of}" for kind, (n, of) in counts.items()]
    text = "pruned " + (", ".join(parts) if parts else "no weight layer")
    left = [(kind, names) for kind, names in untouched.items() if names and counts[kind][0] == 0]
    if left:  # whole kinds the pruner did not reach: the limit a user must know of
        text += "; not pruned: " + "; ".join(f"{kind} ({_names(names)})" for kind, names in left)
    if guarded:
        text += f"; protected: {_names(guarded)}"
    return {"pruned_layers": counts, "prune_scope": text,
            "pruned_nothing": not any(n for n, _ in counts.values())}


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" +{len(names) - LISTED} more" if len(names) > LISTED else "")


def ignore_prefixes(raw: Any) -> list[str]:
    """The module-name prefixes of the ``ignore`` prune option (``fc+features.0``)."""
    if raw in (None, ""):
        return []
    items = raw if isinstance(raw, list | tuple) else str(raw).replace(";", "+").split("+")
    return [str(p).strip() for p in items]


def protected_names(model: nn.Module, modules: list[nn.Module], ignore: Any = None) -> list[str]:
    """The names of ``modules`` in ``model``, and the prefixes of the ``ignore`` option."""
    ids = {id(m) for m in modules}
    names = [name for name, m in model.named_modules() if id(m) in ids and name]
    return names + [p for p in ignore_prefixes(ignore) if p]
