"""Recovery after pruning (paper 000, IV-D/E): fine-tuning, optionally with knowledge
distillation from the unpruned model. The recovered weights are cached by content: pruning is
deterministic, so the pruned structure is rebuilt and the cached state_dict loaded into it.

A zero-fill pruner's zeros must survive the fine-tune, or recovery would quietly undo the
pruning: its zeros are held by ``torch.nn.utils.prune`` masks while training (the masked entries
get no gradient) and the masks are made permanent again afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..cache import code_fingerprint
from ..models.base import load_state, state_dict_bytes
from .base import PRUNERS, prunable_weights

if TYPE_CHECKING:
    from ..bench import Bench
    from ..case import Case


def recover(bench: Bench, case: Case, teacher: nn.Module, pruned: nn.Module, epochs: int,
            distill: bool) -> dict[str, Any]:
    """Fine-tune ``pruned`` in place; returns the facts recorded in ``extra_info``."""
    from ..bench import model_key
    from ..metrics.accuracy import evaluate

    spec, data = bench.spec(case), bench.dataset(case)
    keep_zeros = PRUNERS.get(case.pruner.name).structure == "zero-fill"

    def accuracy() -> float:
        def run(batch):
            with torch.inference_mode():
                return pruned.eval()(torch.from_numpy(batch)).numpy()
        return evaluate(run, data, spec, 64)["accuracy"]

    before = accuracy()
    trainer = spec.train_options.get("finetune") or spec.trainer
    if trainer is None:  # a UsageError is reported as this one line (pytest_pqbench.mistakes)
        from ..errors import UsageError

        raise UsageError(f"model {spec.name!r} has no trainer, so pruned case {case.id} cannot "
                         f"be fine-tuned (finetune_epochs={epochs}, distill={distill}): give "
                         "ModelSpec(trainer=...), e.g. pytest_pqbench.models.training."
                         "train_classifier, or run with --pqbench-finetune-epochs=0")

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        pruned.train()
        masked = hold_zeros(pruned) if keep_zeros else []
        trainer(pruned, data, seed=bench.settings.seed, epochs=epochs, lr=1e-3, target=1.01,
                teacher=teacher.eval() if distill else None)
        for module, name in masked:
            torch_prune.remove(module, name)
        pruned.eval()
        (tmp / "model.pt").write_bytes(state_dict_bytes(pruned))
        return {"recovery_seconds": time.perf_counter() - started}

    key = bench.cache.key("recovered", {"pruned": model_key(pruned), "epochs": epochs,
                                        "distill": distill, "dataset": data.fingerprint,
                                        "seed": bench.settings.seed,
                                        "code": code_fingerprint(trainer, hold_zeros)})
    entry = bench.cache.get_or_build("recovered", key, build)
    pruned.load_state_dict(load_state(entry.file("model.pt")))
    pruned.eval()
    return {"finetune_epochs": epochs, "distilled": distill, "accuracy_before_recovery": before,
            "accuracy_after_recovery": accuracy(), "recovery_seconds":
            entry.meta.get("recovery_seconds", 0.0), "recovery_cache_hit": entry.hit,
            "zero_fraction_after_recovery": zero_fraction(pruned)}


def zero_fraction(model: nn.Module) -> float:
    weights = prunable_weights(model)
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


MASKED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


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
