"""Recovery after pruning (paper 000, IV-D/E): fine-tuning, optionally with knowledge
distillation from the unpruned model. The recovered weights are cached by content: pruning is
deterministic, so the pruned structure is rebuilt and the cached state_dict loaded into it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..models.base import load_state, state_dict_bytes

if TYPE_CHECKING:
    from ..bench import Bench
    from ..case import Case


def recover(bench: Bench, case: Case, teacher: nn.Module, pruned: nn.Module, epochs: int,
            distill: bool) -> dict[str, Any]:
    """Fine-tune ``pruned`` in place; returns the facts recorded in ``extra_info``."""
    from ..bench import model_key
    from ..metrics.accuracy import evaluate

    spec, data = bench.spec(case), bench.dataset(case)

    def accuracy() -> float:
        def run(batch):
            with torch.inference_mode():
                return pruned.eval()(torch.from_numpy(batch)).numpy()
        return evaluate(run, data, spec, 64)["accuracy"]

    before = accuracy()
    trainer = spec.train_options.get("finetune") or spec.trainer
    if trainer is None:
        raise ValueError(f"model {spec.name!r} has no trainer: it cannot be fine-tuned here")

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        pruned.train()
        trainer(pruned, data, seed=bench.settings.seed, epochs=epochs, lr=1e-3, target=1.01,
                teacher=teacher.eval() if distill else None)
        pruned.eval()
        (tmp / "model.pt").write_bytes(state_dict_bytes(pruned))
        return {"recovery_seconds": time.perf_counter() - started}

    key = bench.cache.key("recovered", {"pruned": model_key(pruned), "epochs": epochs,
                                        "distill": distill, "dataset": data.fingerprint,
                                        "seed": bench.settings.seed})
    entry = bench.cache.get_or_build("recovered", key, build)
    pruned.load_state_dict(load_state(entry.file("model.pt")))
    pruned.eval()
    return {"finetune_epochs": epochs, "distilled": distill, "accuracy_before_recovery": before,
            "accuracy_after_recovery": accuracy(), "recovery_seconds":
            entry.meta.get("recovery_seconds", 0.0), "recovery_cache_hit": entry.hit}
