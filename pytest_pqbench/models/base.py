"""ModelSpec and the trained-model loader (train once, cache the weights, load weights-only)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..cache import code_fingerprint
from ..registry import Registry, UsageError

if TYPE_CHECKING:
    from ..cache import ArtefactCache
    from ..datasets import Dataset

TASKS = ("classify", "detect")


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and what it is judged by.

    ``builder(num_classes)`` returns an untrained module. An embedded model has a ``trainer``
    (``trainer(model, dataset, seed) -> info``) and trains itself once on its dataset; a user's
    model gives ``weights`` (a state_dict file loaded with ``weights_only=True``) instead.
    """

    name: str
    task: str
    input_shape: tuple[int, int, int]
    builder: Callable[[int], nn.Module]
    default_dataset: str
    metric: str = "top1"
    trainer: Callable[..., dict[str, Any]] | None = None
    weights: str | None = None
    min_accuracy: float = 0.0  # absolute accuracy floor (fraction)
    max_drop: float = 1.0  # max drop vs unpruned eager FP32 (fraction, e.g. 0.02 = 2 pp)
    deadline_ms: float | None = None
    ignored_layers: Callable[[nn.Module], list[nn.Module]] | None = None  # heads kept by pruners
    postprocess: Callable[..., Any] | None = None  # detection decode + NMS
    train_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # how a dataset on disk is prepared for this model: (x / 255 - mean) / std, per channel
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"model {self.name!r}: unknown task {self.task!r}; valid: {TASKS}")


MODELS: Registry[ModelSpec] = Registry("model", "pqbench.models")


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    return MODELS.register(spec.name, spec, replace=replace)


def get_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def state_dict_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def load_state(path: Path | str) -> dict[str, torch.Tensor]:
    # weights_only=True: a weights file never executes code.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(spec: ModelSpec, dataset: Dataset, cache: ArtefactCache | None,
               seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The spec's trained model in eval mode, plus facts about how it was obtained."""
    model = spec.builder(dataset.num_classes)
    if spec.weights:
        path = Path(spec.weights)
        if not path.is_file():
            raise UsageError(f"model {spec.name!r}: weights file {str(path)!r} does not exist")
        model.load_state_dict(load_state(path))
        return model.eval(), {"weights": str(path), "trained_seconds": 0.0, "cache_hit": True}
    if spec.trainer is None:
        return model.eval(), {"weights": None, "trained_seconds": 0.0, "cache_hit": True}

    def train(tmp: Path) -> dict[str, Any]:
        torch.manual_seed(seed)
        started = time.perf_counter()
        trained = spec.builder(dataset.num_classes)
        info = spec.trainer(trained, dataset, seed=seed, **spec.train_options)
        (tmp / "model.pt").write_bytes(state_dict_bytes(trained))
        return {**info, "trained_seconds": time.perf_counter() - started}

    if cache is None:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            meta = train(Path(tmp))
            model.load_state_dict(load_state(Path(tmp) / "model.pt"))
        return model.eval(), {**meta, "cache_hit": False}
    key = cache.key("trained", {"model": spec.name, "dataset": dataset.fingerprint, "seed": seed,
                                "train_options": spec.train_options,
                                "builder": getattr(spec.builder, "__qualname__",
                                                   str(spec.builder)),
                                "code": code_fingerprint(spec.builder, spec.trainer)})
    entry = cache.get_or_build("trained", key, train)
    model.load_state_dict(load_state(entry.file("model.pt")))
    return model.eval(), {**entry.meta, "cache_hit": entry.hit}
