"""Stage 1, preparing: a case's dataset, its trained model, and the pruned (and recovered) model.

``Preparer`` memoises per process what several cases share (a dataset, the trained model of a
model spec, a pruned model is the same for every workflow and precision) and keeps the expensive
artefacts in the content-addressed ``ArtefactCache``. It knows nothing of engines or timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cache import ArtefactCache
from ..case import Case
from ..config import Settings
from ..datasets import Dataset, get_dataset
from ..datasets.sources import request
from ..errors import TimeLimitExceeded
from ..metrics.accuracy import evaluate
from ..models import ModelSpec, get_spec, load_model
from ..models.base import model_key
from ..models.weights import with_weights
from ..models.zoo import generated_options, spec_at_size
from ..progress import cold_builds
from ..pruners import PruneContext, PruneReport, prune
from ..pruners.base import options_for
from ..pruners.recovery import RecoveryContext, recover


@dataclass
class Pruned:
    """A pruned model (fine-tuned when the run asks for recovery) and what pruning did."""

    model: nn.Module
    report: PruneReport
    key: str  # content hash of the model (``models.base.model_key``): engines' cache key
    recovery: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trained:
    model: nn.Module
    info: dict[str, Any]  # the trainer's facts (cache_hit, accuracy "not measured", ...)


class Preparer:
    """Datasets, trained models and pruned models of the run's cases."""

    def __init__(self, settings: Settings, cache: ArtefactCache) -> None:
        self.settings = settings
        self.cache = cache
        self._trained: dict[str, Trained] = {}
        self._failed: dict[str, BaseException] = {}  # model id -> why it could not be loaded
        self._pruned: dict[tuple, Pruned] = {}
        self._reference: dict[str, dict[str, Any]] = {}

    @staticmethod
    def model_id(case: Case) -> str:
        """What the trained model and the reference accuracy depend on."""
        return f"{case.model}@{case.dataset}:{case.input_size}"

    def spec(self, case: Case) -> ModelSpec:
        spec = with_weights(get_spec(case.model), self.settings.weights)  # --pqbench-weights
        return spec_at_size(spec, case.input_size)  # the case's input size

    def dataset(self, case: Case) -> Dataset:
        # on disk: the [tool.pqbench.datasets.NAME] entry's loader, path, size, normalisation
        factory, options = request(case.dataset, self.settings.datasets, self.spec(case),
                                   self.settings.seed)
        if "path" not in options:  # generated: rendered at the case's input size
            options.update(generated_options(self.spec(case), get_spec(case.model)))
        return get_dataset(factory, **options)

    def trained(self, case: Case) -> Trained:
        key = self.model_id(case)
        if key in self._failed:  # a model that cannot be loaded (or hangs) costs its time once
            raise self._failed[key]
        if key not in self._trained:
            try:
                with cold_builds(self.cache, f"{case.model} on {case.dataset} (first use)"):
                    model, info = load_model(self.spec(case), self.dataset(case), self.cache,
                                             seed=self.settings.seed)
            except (Exception, TimeLimitExceeded) as exc:
                self._failed[key] = exc
                raise
            self._trained[key] = Trained(model, info)
        return self._trained[key]

    def example(self, case: Case) -> np.ndarray:
        return self.dataset(case).batch(max(2, case.batch_size))

    def calibration(self, case: Case) -> list[np.ndarray]:
        size = self.settings.calibration_size
        return list(self.dataset(case).calibration_batches(min(32, max(1, size)), limit=size))

    def calibration_key(self, case: Case) -> str:
        return f"{self.dataset(case).fingerprint}:{self.settings.calibration_size}"

    def pruned(self, case: Case) -> Pruned:
        key = (case.model, case.dataset, case.input_size, case.pruner)
        if key not in self._pruned:
            self._pruned[key] = self._prune(case)
        return self._pruned[key]

    def _prune(self, case: Case) -> Pruned:
        model = self.trained(case).model
        spec, data = self.spec(case), self.dataset(case)
        example = torch.from_numpy(self.example(case)[:2])
        calibration = self.calibration(case)[:4]
        ctx = PruneContext(
            ratio=case.pruner.ratio, example_inputs=example,
            ignored_layers=spec.ignored_layers(model) if spec.ignored_layers else [],
            calibration=list(zip(calibration, label_batches(data, calibration), strict=True)),
            task=spec.task, options=options_for(case.pruner.name, self.settings.prune_options),
            seed=self.settings.seed)
        pruned, report = prune(model, case.pruner.name, ctx)
        recovery = self._recover(case, model, pruned)
        return Pruned(pruned, report, model_key(pruned), recovery)

    def _recover(self, case: Case, teacher: nn.Module, pruned: nn.Module) -> dict[str, Any]:
        epochs, distill = self.settings.finetune_epochs, self.settings.distill
        if case.pruner.name == "none" or (epochs == 0 and not distill):
            return {"finetune_epochs": 0, "distilled": False}
        ctx = RecoveryContext(case_id=case.id, pruner=case.pruner.name, spec=self.spec(case),
                              dataset=self.dataset(case), cache=self.cache,
                              seed=self.settings.seed, epochs=max(epochs, 1), distill=distill)
        with cold_builds(self.cache, f"{case.model} pruned by {case.pruner.token}",
                         recovered="distillation" if distill else "fine-tuning"):
            return recover(ctx, teacher, pruned)

    def reference_accuracy(self, case: Case) -> dict[str, Any]:
        """Accuracy of the unpruned model in eager FP32: what max_drop is measured against."""
        name = self.model_id(case)
        if name not in self._reference:
            model = self.trained(case).model

            def run(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(batch)).numpy()

            self._reference[name] = evaluate(run, self.dataset(case), self.spec(case), 64)
        return self._reference[name]


def label_batches(data: Dataset, batches: list[np.ndarray]) -> list[Any]:
    """The calibration labels matching ``batches`` (which start at calibration image 0)."""
    out, start = [], 0
    for batch in batches:
        out.append(data.calibration.labels[start:start + len(batch)])
        start += len(batch)
    return out
