"""The session's work: datasets, trained / pruned models and engines, built once and cached.

Fixtures ask the ``Bench`` for what a case needs; it memoises per process and persists the
expensive artefacts in the content-addressed ``ArtefactCache``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import ArtefactCache, package_versions
from .case import Case
from .config import Settings
from .datasets import Dataset, get_dataset
from .errors import ParityError  # noqa: F401  (defined in errors.py)
from .metrics.accuracy import NonFiniteOutput, evaluate
from .models import ModelSpec, get_spec, load_model
from .models.base import load_state
from .pruners import PruneContext, PruneReport, prune
from .pruners.base import options_for
from .workflows import BuildContext, Engine, get_workflow
from .workflows.base import physical_cores

# Max relative error of an engine's outputs against eager FP32 torch, per precision.
PARITY_TOLERANCE = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.05, "int8": 0.3, "fp8": 0.3}


def model_key(model: nn.Module) -> str:
    """Content hash of a model: every tensor's name, shape, dtype and bytes, plus its structure."""
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


@dataclass
class Pruned:
    model: nn.Module
    report: PruneReport
    key: str
    recovery: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, settings: Settings, cache_dir: Path) -> None:
        self.settings = settings
        self.cache = ArtefactCache(cache_dir)
        self.device = settings.resolved_device()
        self.threads = settings.threads or physical_cores()
        self.versions = package_versions()
        self._trained: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
        self._pruned: dict[tuple, Pruned] = {}
        self._engines: dict[tuple, Engine] = {}
        self.failures: dict[tuple, BaseException] = {}  # engine key -> why its build failed
        self._accuracy: dict[tuple, dict[str, Any]] = {}
        self._reference: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}  # case id -> extra_info, for ratio metrics
        torch.set_num_threads(self.threads)

    # ---- data and models -------------------------------------------------------------------
    def spec(self, case: Case) -> ModelSpec:
        from .models.weights import with_weights
        from .models.zoo import spec_at_size

        spec = with_weights(get_spec(case.model), self.settings.weights)  # --pqbench-weights
        return spec_at_size(spec, case.input_size)  # the case's input size

    def dataset(self, case: Case) -> Dataset:
        from .datasets.sources import request

        # on disk: the [tool.pqbench.datasets.NAME] entry's loader, path, size, normalisation
        factory, options = request(case.dataset, self.settings.datasets, self.spec(case),
                                   self.settings.seed)
        if "path" not in options:  # generated: rendered at the case's input size
            from .models.zoo import generated_options

            options.update(generated_options(self.spec(case), get_spec(case.model)))
        return get_dataset(factory, **options)

    def trained(self, case: Case) -> tuple[nn.Module, dict[str, Any]]:
        key = f"{case.model}@{case.dataset}:{case.input_size}"
        if key not in self._trained:
            from .progress import cold_builds

            with cold_builds(self.cache, f"{case.model} on {case.dataset} (first use)"):
                self._trained[key] = load_model(self.spec(case), self.dataset(case), self.cache,
                                                seed=self.settings.seed)
        return self._trained[key]

    def example(self, case: Case) -> np.ndarray:
        return self.dataset(case).batch(max(2, case.batch_size))

    def calibration(self, case: Case) -> list[np.ndarray]:
        size = self.settings.calibration_size
        return list(self.dataset(case).calibration_batches(min(32, max(1, size)), limit=size))

    def calibration_key(self, case: Case) -> str:
        return f"{self.dataset(case).fingerprint}:{self.settings.calibration_size}"

    # ---- pruning ---------------------------------------------------------------------------
    def pruned(self, case: Case) -> Pruned:
        key = (case.model, case.dataset, case.input_size, case.pruner)
        if key not in self._pruned:
            self._pruned[key] = self._prune(case)
        return self._pruned[key]

    def _prune(self, case: Case) -> Pruned:
        model, _ = self.trained(case)
        spec, data = self.spec(case), self.dataset(case)
        example = torch.from_numpy(self.example(case)[:2])
        calibration = self.calibration(case)[:4]
        ctx = PruneContext(
            ratio=case.pruner.ratio, example_inputs=example,
            ignored_layers=spec.ignored_layers(model) if spec.ignored_layers else [],
            calibration=list(zip(calibration, _label_batches(data, calibration), strict=True)),
            task=spec.task, options=options_for(case.pruner.name, self.settings.prune_options),
            seed=self.settings.seed)
        pruned, report = prune(model, case.pruner.name, ctx)
        recovery = self._recover(case, model, pruned)
        return Pruned(pruned, report, model_key(pruned), recovery)

    def _recover(self, case: Case, teacher: nn.Module, pruned: nn.Module) -> dict[str, Any]:
        epochs, distill = self.settings.finetune_epochs, self.settings.distill
        if case.pruner.name == "none" or (epochs == 0 and not distill):
            return {"finetune_epochs": 0, "distilled": False}
        from .progress import cold_builds
        from .pruners.recovery import recover

        with cold_builds(self.cache, f"{case.model} pruned by {case.pruner.token}",
                         recovered="distillation" if distill else "fine-tuning"):
            return recover(self, case, teacher, pruned, max(epochs, 1), distill)

    # ---- engines ---------------------------------------------------------------------------
    def engine_key(self, case: Case) -> tuple:
        return (case.model, case.dataset, case.input_size, case.pruner, case.workflow,
                case.precision)

    def skip_reason(self, case: Case) -> str | None:
        return get_workflow(case.workflow).check(case.precision, self.device)

    def engine(self, case: Case) -> Engine:
        key = self.engine_key(case)
        if key not in self._engines:
            pruned = self.pruned(case)
            workflow = get_workflow(case.workflow)
            ctx = BuildContext(
                cache=self.cache, model_key=pruned.key, threads=self.threads, device=self.device,
                batch_sizes=tuple(sorted(set(self.settings.batch_sizes))),
                options={"calibration_key": self.calibration_key(case),
                         "calibration_method": self.settings.calibration_method,
                         "ort_providers": list(self.settings.ort_providers),
                         "trt_workspace_mb": self.settings.trt_workspace_mb})
            from .progress import UNCACHED_BUILDS, cold_builds

            started = time.perf_counter()
            with cold_builds(self.cache, case.id, uncached=UNCACHED_BUILDS.get(case.workflow)):
                try:
                    engine = workflow.build(pruned.model, case.precision,
                                            self.calibration(case), self.example(case), ctx)
                except Exception as exc:  # a workflow's own error names no case: add it
                    exc.add_note(f"while building case {case.id}")
                    raise
            engine.facts.setdefault("engine_seconds", time.perf_counter() - started)
            engine.facts["parity_error"] = self.check_parity(case, engine, pruned.model)
            self._engines[key] = engine
        return self._engines[key]

    def engine_guarded(self, case: Case) -> Engine:
        """``engine`` under the build time limit; a failure is kept and raised again for the
        same case (the timing phase builds first, the case's own item reports the error)."""
        import pytest

        from .faults import build_time_limit

        key = self.engine_key(case)
        if key in self.failures:
            raise self.failures[key]
        try:
            with build_time_limit(self.settings.build_timeout, case.id):
                return self.engine(case)
        except (Exception, pytest.skip.Exception, pytest.fail.Exception) as exc:
            self.failures[key] = exc
            raise

    def check_parity(self, case: Case, engine: Engine, model: nn.Module) -> float:
        """Compare the engine with the eager FP32 model on real evaluation batches."""
        from .workflows.base import PARITY_BATCH
        from .workflows.onnx_export import relative_error

        batch = self.dataset(case).batch(PARITY_BATCH)
        with torch.inference_mode():
            want = model.float().eval()(torch.from_numpy(batch)).numpy()
        got = np.asarray(engine(batch))
        if not np.all(np.isfinite(got)):
            raise NonFiniteOutput(f"{case.id}: engine produced {int((~np.isfinite(got)).sum())} "
                                  f"NaN/Inf output values on {len(batch)} evaluation images")
        err = relative_error(got, want)
        from .models.zoo import parity_tolerance

        tolerance = parity_tolerance(self.trained(case)[1],
                                     PARITY_TOLERANCE.get(case.precision, 0.3))
        if not err <= tolerance:
            raise ParityError(f"{case.id}: engine output differs from eager FP32 torch by max "
                              f"relative error {err:.3g} > {tolerance:g} allowed for "
                              f"{case.precision}")
        return err

    # ---- accuracy --------------------------------------------------------------------------
    def accuracy(self, case: Case) -> dict[str, Any]:
        from .models.zoo import accuracy_not_measured

        if accuracy_not_measured(self.trained(case)[1]):
            return {}  # an untrained zoo model: "not measured", like a build-only run
        key = self.engine_key(case)
        if key not in self._accuracy:
            engine = self.engine(case)
            self._accuracy[key] = evaluate(engine, self.dataset(case), self.spec(case),
                                           case.batch_size)
        return self._accuracy[key]

    def reference_accuracy(self, case: Case) -> dict[str, Any]:
        """Accuracy of the unpruned model in eager FP32: what max_drop is measured against."""
        name = f"{case.model}@{case.dataset}:{case.input_size}"
        if name not in self._reference:
            model, _ = self.trained(case)

            def run(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(batch)).numpy()

            self._reference[name] = evaluate(run, self.dataset(case), self.spec(case), 64)
        return self._reference[name]


def _label_batches(data: Dataset, batches: list[np.ndarray]) -> list[Any]:
    """The calibration labels matching ``batches`` (which start at calibration image 0)."""
    out, start = [], 0
    for batch in batches:
        out.append(data.calibration.labels[start:start + len(batch)])
        start += len(batch)
    return out


__all__ = ["Bench", "ParityError", "Pruned", "load_state", "model_key"]
