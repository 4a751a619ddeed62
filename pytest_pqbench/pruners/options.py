"""Reading and checking the prune options every pruner shares (``--pqbench-prune-options``).

``prune()`` already rejects option names a pruner does not know; this module checks the values
and turns them into what the pruners need, with one clear error per bad value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import UsageError
from .base import PruneContext
from .scope import ignore_prefixes

# Options shared by pruners that rank something (channels or weights).
RANKING_OPTIONS = frozenset({"global_pruning", "ignore"})
# Options of the channel pruners (torch-pruning groups): protect_inputs keeps the input width
# of protected layers too (see protected_groups).
PROTECT_OPTIONS = frozenset({"protect_inputs"})


def flag(ctx: PruneContext, name: str, default: bool = False) -> bool:
    value = ctx.options.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise UsageError(f"prune option {name}={value!r} is not a boolean; valid values: true, false")


def positive_int(ctx: PruneContext, name: str, default: int) -> int:
    value = ctx.options.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or float(value) != number:
        raise UsageError(f"prune option {name}={value!r} must be a positive integer")
    return number


def ignored_modules(model: nn.Module, ctx: PruneContext) -> list[nn.Module]:
    """The context's ignored layers plus the modules named by the ``ignore`` option.

    ``ignore`` holds module-name prefixes separated by ``+`` (commas already separate options),
    e.g. ``ignore=fc+features.0``; a prefix matches the module of that name and its children.
    """
    modules = list(ctx.ignored_layers)
    prefixes = ignore_prefixes(ctx.options.get("ignore"))
    if not prefixes:
        return modules
    named = dict(model.named_modules())
    for prefix in prefixes:
        hits = [m for n, m in named.items() if n == prefix or n.startswith(prefix + ".")]
        if not prefix or not hits:
            top = sorted({n.split(".")[0] for n in named if n})
            raise UsageError(f"prune option ignore: no module named {prefix!r}; module names "
                             f"start with one of: {', '.join(top)}")
        modules.extend(hits)
    return modules


def protected_groups(model: nn.Module, ctx: PruneContext) -> Callable[[Any], bool]:
    """A test for torch-pruning groups that would change a protected layer's input width.

    torch-pruning's ``ignored_layers`` only keeps a layer's *output* channels: a group rooted
    in the layer before it still removes the protected layer's input features (the convs that
    feed a classifier head). With ``protect_inputs`` (the default) such groups are skipped, so a
    protected layer keeps its shape on both sides; ``protect_inputs=false`` keeps only outputs.
    """
    if not flag(ctx, "protect_inputs", True):
        return lambda group: False
    protected = {id(m) for m in ignored_modules(model, ctx)}

    def touches(group: Any) -> bool:
        return any(id(dep.target.module) in protected
                   and getattr(dep.handler, "__name__", "") == "prune_in_channels"
                   for dep, _ in group)

    return touches


def layer_options(ctx: PruneContext) -> dict[str, Any]:
    return {"steps": positive_int(ctx, "iterative_steps", 1),
            "global_pruning": flag(ctx, "global_pruning")}
