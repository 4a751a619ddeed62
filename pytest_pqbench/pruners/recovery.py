"""Recovery after pruning (paper 000, IV-D/E): fine-tuning, optionally with knowledge
distillation from the unpruned model. The recovered weights are cached by content: pruning is
deterministic, so the pruned structure is rebuilt and the cached state_dict loaded into it.

A zero-fill pruner's zeros must survive the fine-tune, or recovery would quietly undo the
pruning: its zeros are held by ``torch.nn.utils.prune`` masks while training (the masked entries
get no gradient) and the masks are made permanent again afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..cache import ArtefactCache, code_fingerprint
from ..errors import UsageError
from ..metrics.accuracy import evaluate
from ..models.base import (
    BATCHNORM_TYPES,
    CONV_TYPES,
    ModelSpec,
    load_state,
    model_key,
    state_dict_bytes,
)
from .base import PRUNERS, prunable_weights

if TYPE_CHECKING:
    from ..datasets import Dataset


@dataclass(frozen=True)
class RecoveryContext:
    """What recovery needs of the case, as ``PruneContext`` is for pruning."""

    case_id: str
    pruner: str
    spec: ModelSpec
    dataset: Dataset
    cache: ArtefactCache
    seed: int
    epochs: int
    distill: bool


def recover(ctx: RecoveryContext, teacher: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    """Fine-tune ``pruned`` in place; returns the facts recorded in ``extra_info``."""
    spec, data, epochs, distill = ctx.spec, ctx.dataset, ctx.epochs, ctx.distill
    keep_zeros = PRUNERS.get(ctx.pruner).structure == "zero-fill"

    def accuracy() -> float:
        def run(batch):
            with torch.inference_mode():
                return pruned.eval()(torch.from_numpy(batch)).numpy()
        return evaluate(run, data, spec, 64)["accuracy"]

    before = accuracy()
    trainer = spec.train_options.get("finetune") or spec.trainer
    if trainer is None:  # a UsageError is reported as one line (pytest_pqbench.plugin.mistakes)
        raise UsageError(f"model {spec.name!r} has no trainer, so pruned case {ctx.case_id} cannot "
                         f"be fine-tuned (finetune_epochs={epochs}, distill={distill}): give "
                         "ModelSpec(trainer=...), e.g. pytest_pqbench.models.training."
                         "train_classifier, or run with --pqbench-finetune-epochs=0")

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        pruned.train()
        masked = hold_zeros(pruned) if keep_zeros else []
        trainer(pruned, data, seed=ctx.seed, epochs=epochs, lr=1e-3, target=1.01,
                teacher=teacher.eval() if distill else None)
        for module, name in masked:
            torch_prune.remove(module, name)
        pruned.eval()
        (tmp / "model.pt").write_bytes(state_dict_bytes(pruned))
        return {"recovery_seconds": time.perf_counter() - started}

    key = ctx.cache.key("recovered", {"pruned": model_key(pruned), "epochs": epochs,
                                      "distill": distill, "dataset": data.fingerprint,
                                      "seed": ctx.seed,
                                      "code": code_fingerprint(trainer, hold_zeros)})
    entry = ctx.cache.get_or_build("recovered", key, build)
    pruned.load_state_dict(load_state(entry.file("model.pt")))
    pruned.eval()
    return {"finetune_epochs": epochs, "distilled": distill, "accuracy_before_recovery": before,
            "accuracy_after_recovery": accuracy(), "recovery_seconds":
            entry.meta.get("recovery_seconds", 0.0), "recovery_cache_hit": entry.hit,
            "zero_fraction_after_recovery": zero_fraction(pruned)}


def zero_fraction(model: nn.Module) -> float:
    weights = prunable_weights(model)
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


MASKED_TYPES = (*CONV_TYPES, nn.Linear, *BATCHNORM_TYPES)


def hold_zeros(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Mask every conv / linear / BatchNorm weight and bias that holds zeros, so they stay zero."""
    masked = []
    for module in model.modules():
        if not isinstance(module, MASKED_TYPES):
            continue
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter) and bool((param == 0).any()):
                torch_prune.custom_from_mask(module, name, mask=(param != 0))
                masked.append((module, name))
    return masked
