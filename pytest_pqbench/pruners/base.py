"""The Pruner contract, its registry, and the report every pruned model carries.

A pruner is a small object with a ``structure`` ("removed": channels are taken out and the
network gets smaller; "zero-fill": weights are set to zero and the shapes stay), the
``options`` it takes, optionally ``fixed_ratio = True`` when its structure sets the sparsity (no
ratio follows its name: ``none``, ``semi24``), and a
``__call__(model, ctx) -> nn.Module`` that prunes the copy it is given. ``prune`` makes that copy,
so the caller's model is never mutated, and measures params, MACs, zero fraction, size and time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ..errors import NothingPruned, StepFailed
from ..models.base import state_dict_bytes
from ..registry import Registry, UsageError
from .scope import protected_names, prunable_tensors, prune_scope

COMMON_OPTIONS = {"seed"}


@dataclass
class PruneContext:
    ratio: float
    example_inputs: torch.Tensor
    ignored_layers: list[nn.Module] = field(default_factory=list)
    calibration: Iterable[tuple[np.ndarray, Any]] | None = None  # (images, labels) batches
    task: str = "classify"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    notes: list[str] = field(default_factory=list)  # what a pruner wants the record to say


class Pruner(Protocol):
    structure: str
    options: frozenset[str]
    # optional ``fixed_ratio: bool`` (default False), read through ``fixed_ratio(name)``;
    # optional ``applies(model) -> str | None``: why the pruner cannot prune this model (the
    # case is then skipped with that reason, by ``pqbench list`` and pytest alike)

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module: ...


@dataclass
class PruneReport:
    pruner: str
    ratio: float
    structure: str
    params: int
    macs: int
    params_before: int
    macs_before: int
    zero_fraction: float
    model_bytes: int
    prune_seconds: float
    note: str = ""  # e.g. why a sparsity pattern gives no speed-up here (and ``notes``)
    options: dict[str, Any] = field(default_factory=dict)  # the prune options this pruner got
    pruned_layers: dict[str, list[int]] = field(default_factory=dict)  # kind -> [pruned, of]
    scope: str = ""  # one line: what was pruned, what was not, what was protected

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRUNERS: Registry[Pruner] = Registry("pruner", "pqbench.pruners")


def register_pruner(name: str, pruner: Pruner | None = None, *, replace: bool = False):
    return PRUNERS.register(name, pruner, replace=replace)


def fixed_ratio(name: str) -> bool:
    """Whether pruner ``name`` fixes its own sparsity (then its id carries no ratio)."""
    return bool(getattr(PRUNERS.get(name), "fixed_ratio", False))


def fixed_ratio_names() -> frozenset[str]:
    """The registered pruners whose ratio is fixed, for ``case.parse_pruner``."""
    return frozenset(name for name in PRUNERS.names() if fixed_ratio(name))


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    """Convolution, linear and attention projection weights (``scope.weight_units``)."""
    return prunable_tensors(model)


def not_applicable(name: str, model: nn.Module) -> str | None:
    """Why pruner ``name`` cannot prune ``model`` (its ``applies``), or None."""
    applies = getattr(PRUNERS.get(name), "applies", None)
    return applies(model) if applies is not None else None


@torch.no_grad()
def model_stats(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, Any]:
    """params and MACs from torch-pruning's counter; zero fraction of conv / linear weights."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs[:1])
    model.train(was_training)
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"params": int(params), "macs": int(macs),
            "zero_fraction": zeros / total if total else 0.0}


def accepted_options(name: str) -> set[str]:
    return set(PRUNERS.get(name).options) | COMMON_OPTIONS


def options_for(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The run's prune options as pruner ``name`` gets them.

    ``PRUNER:KEY=VALUE`` goes to that pruner only; a plain ``KEY=VALUE`` goes to every pruner of
    the run that accepts it (``round_to=8`` reaches ``group`` and ``layer``, not ``none`` or
    ``l1``). A scoped value wins over a plain one. ``check_options`` has already refused keys
    no pruner of the run accepts.
    """
    accepted = accepted_options(name)
    plain = {k: v for k, v in options.items() if ":" not in k and k in accepted}
    scoped = {k.split(":", 1)[1]: v for k, v in options.items() if k.split(":", 1)[0] == name
              and ":" in k}
    return plain | scoped


def check_options(options: dict[str, Any], pruner_names: Iterable[str]) -> None:
    """A usage error for an option no selected pruner takes, naming it and the valid keys."""
    names = sorted(set(pruner_names))
    for key in options:
        if ":" in key:
            name, option = key.split(":", 1)
            if name not in PRUNERS:
                raise UsageError(f"prune option {key!r}: unknown pruner {name!r}; valid pruners: "
                                 + ", ".join(PRUNERS.names()))
            if option not in accepted_options(name):
                raise UsageError(f"prune option {key!r}: pruner {name!r} has no option {option!r}; "
                                 "valid options: " + ", ".join(sorted(accepted_options(name))))
        elif not any(key in accepted_options(n) for n in names):
            valid = sorted(set().union(*(accepted_options(n) for n in names)))
            raise UsageError(f"prune option {key!r} is taken by none of the selected pruners "
                             f"({', '.join(names)}); valid options: {', '.join(valid)}")


def prune(model: nn.Module, name: str, ctx: PruneContext) -> tuple[nn.Module, PruneReport]:
    pruner = PRUNERS.get(name)
    unknown_options = set(ctx.options) - accepted_options(name)
    if unknown_options:
        valid = ", ".join(sorted(accepted_options(name)))
        raise UsageError(f"pruner {name!r}: unknown option(s) {sorted(unknown_options)}; "
                         f"valid options: {valid}")
    if not 0.0 <= ctx.ratio < 1.0:
        raise UsageError(f"pruner {name!r}: ratio {ctx.ratio:g} is outside [0, 1)")
    reason = not_applicable(name, model) if ctx.ratio > 0 else None
    if reason:
        raise NothingPruned(f"pruner {name!r} does not apply: {reason}")
    before = model_stats(model, ctx.example_inputs)
    work = copy.deepcopy(model).eval()
    # ignored layers name modules of the original: map them onto the copy.
    index = {id(m): n for n, m in model.named_modules()}
    copied = dict(work.named_modules())
    ctx = copy.copy(ctx)
    ctx.ignored_layers = [copied[index[id(m)]] for m in ctx.ignored_layers if id(m) in index]
    ctx.notes = []
    protected = protected_names(work, ctx.ignored_layers, ctx.options.get("ignore"))
    torch.manual_seed(ctx.seed)
    started = time.perf_counter()
    try:
        pruned = pruner(work, ctx)
    except (UsageError, NothingPruned):
        raise
    except Exception as exc:  # torch-pruning (or a user's pruner) on a graph it cannot cut
        raise StepFailed(failure_message(name, model, exc)) from exc
    seconds = time.perf_counter() - started
    pruned.eval()
    after = model_stats(pruned, ctx.example_inputs)
    scope = prune_scope(model, pruned, protected) if pruner.structure != "none" else \
        {"pruned_layers": {}, "prune_scope": "", "pruned_nothing": False}
    if pruner.structure != "none" and ctx.ratio > 0 and scope["pruned_nothing"]:
        raise NothingPruned(f"pruner {name!r} at ratio {ctx.ratio:g} changed no weight layer "
                            f"of the model ({scope['prune_scope']})"
                            + (f"; {'; '.join(ctx.notes)}" if ctx.notes else ""))
    notes = [n for n in (getattr(pruner, "note", ""), *ctx.notes) if n]
    report = PruneReport(
        pruner=name, ratio=ctx.ratio, structure=pruner.structure,
        params=after["params"], macs=after["macs"], params_before=before["params"],
        macs_before=before["macs"], zero_fraction=after["zero_fraction"],
        model_bytes=len(state_dict_bytes(pruned)), prune_seconds=seconds,
        note="; ".join(notes), options=dict(ctx.options),
        pruned_layers=scope["pruned_layers"], scope=scope["prune_scope"])
    return pruned, report


def failure_message(name: str, model: nn.Module, exc: Exception) -> str:
    """One line for a pruner that raised: what failed, the error, and what to try."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    top = sorted({n.split(".")[0] for n, _ in model.named_modules() if n})
    hint = ("torch-pruning could not cut its channel groups; a layer mixing another axis than "
            "the channels (a token-mixing Linear, a reshape) is a common cause: keep it whole "
            f"with --pqbench-prune-options ignore=NAME (modules: {', '.join(top[:8])}), or use "
            "a zero-fill pruner")
    return (f"pruner {name!r} failed on {type(model).__name__}: {type(exc).__name__}: {first}; "
            + (hint if PRUNERS.get(name).structure == "removed" or name == "soft" else
               "the pruner raised"))


class NoPruner:
    """``none``: the model as trained."""

    structure = "none"
    options: frozenset[str] = frozenset()
    fixed_ratio = True  # nothing is pruned: no ratio

    def __call__(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        return model


register_pruner("none", NoPruner())
