"""Recovery after pruning (paper 000, IV-D/E): fine-tuning, optionally with knowledge
distillation from the unpruned model. The recovered weights are cached by content: pruning is
deterministic, so the pruned structure is rebuilt and the cached state_dict loaded into it.

A zero-fill pruner's zeros must survive the fine-tune, or recovery would quietly undo the
pruning. They are held without touching the model's structure (``HeldZeros``): a gradient hook
on each pruned tensor zeroes the gradient of its pruned entries, and a hook after every
optimizer step writes the zeros back (what weight decay or momentum might have moved). The
parameters stay the same objects under the same names, so any training loop works: one that
reads a weight directly (``nn.MultiheadAttention`` reads its ``out_proj.weight`` without calling
``out_proj``, which a ``torch.nn.utils.prune`` re-parametrisation recomputes only in that
module's forward: the second backward then went through a stale graph), one that builds its
optimizer from ``model.parameters()``, or one that saves and restores a state_dict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..cache import ArtefactCache, code_fingerprint
from ..errors import StepFailed, UsageError
from ..metrics.accuracy import evaluate
from ..models.base import ModelSpec, load_state, model_key, state_dict_bytes
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
        held = HeldZeros(pruned, teacher if keep_zeros else None)
        try:
            with held:
                trainer(pruned, data, seed=ctx.seed, epochs=epochs, lr=1e-3, target=1.01,
                        teacher=teacher.eval() if distill else None)
        except UsageError:
            raise
        except Exception as exc:  # the user's trainer or model: one line, cause kept
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise StepFailed(f"{ctx.case_id}: fine-tuning with {_name_of(trainer)} failed: "
                             f"{type(exc).__name__}: {first}") from exc
        pruned.eval()
        (tmp / "model.pt").write_bytes(state_dict_bytes(pruned))
        return {"recovery_seconds": time.perf_counter() - started,
                "zeros_held": held.count, "zeros_restored": held.restored}

    key = ctx.cache.key("recovered", {"pruned": model_key(pruned), "epochs": epochs,
                                      "distill": distill, "dataset": data.fingerprint,
                                      "seed": ctx.seed,
                                      "code": code_fingerprint(trainer, HeldZeros)})
    entry = ctx.cache.get_or_build("recovered", key, build)
    pruned.load_state_dict(load_state(entry.file("model.pt")))
    pruned.eval()
    return {"finetune_epochs": epochs, "distilled": distill, "accuracy_before_recovery": before,
            "accuracy_after_recovery": accuracy(), "recovery_seconds":
            entry.meta.get("recovery_seconds", 0.0), "recovery_cache_hit": entry.hit,
            "zero_fraction_after_recovery": zero_fraction(pruned),
            **{k: entry.meta[k] for k in ("zeros_held", "zeros_restored") if k in entry.meta}}


def zero_fraction(model: nn.Module) -> float:
    weights = prunable_weights(model)
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


def _name_of(trainer: Any) -> str:
    name = getattr(trainer, "__qualname__", None) or type(trainer).__name__
    module = getattr(trainer, "__module__", None)
    return f"trainer {module}.{name}" if module else f"trainer {name}"


class HeldZeros:
    """While the block runs, the entries a zero-fill pruner zeroed stay zero.

    The pruned entries are those zero in ``model`` where ``reference`` (the unpruned model, of
    the same shapes) is not; a parameter the pruner did not touch (a bias that is zero since
    initialisation) is left free. ``reference`` None: nothing is held (a removal pruner).
    ``count``: entries held; ``restored``: entries found moved after an optimizer step (or at
    the end) and set back to zero.
    """

    def __init__(self, model: nn.Module, reference: nn.Module | None) -> None:
        theirs = dict(reference.named_parameters()) if reference is not None else {}
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        for name, param in model.named_parameters():
            other = theirs.get(name)
            if other is None or other.shape != param.shape:
                continue
            zero = (param.detach() == 0) & (other.detach() != 0)
            if bool(zero.any()):
                self.masks.append((param, zero))
        self.count = sum(int(z.sum()) for _, z in self.masks)
        self.restored = 0
        self._handles: list[Any] = []

    def __enter__(self) -> HeldZeros:
        for param, zero in self.masks:
            keep = (~zero).to(param.dtype)
            self._handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))
        if self.masks:
            self._handles.append(register_optimizer_step_post_hook(lambda *_: self.restore()))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.restore()

    @torch.no_grad()
    def restore(self) -> None:
        for param, zero in self.masks:
            moved = int((param[zero] != 0).sum())
            if moved:
                self.restored += moved
                param.masked_fill_(zero, 0.0)
