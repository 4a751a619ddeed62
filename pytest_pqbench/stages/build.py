"""Stage 2, building: each case's engine from its pruned model, checked against eager FP32, and
its accuracy on the evaluation split.

``Builder`` takes what it builds from the ``Preparer`` (pruned models, calibration data) and
memoises engines per (pruned model, workflow, precision). A build that fails is kept and raised
again for the same case: the timing phase builds first, the case's own test reports the error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ..cache import ArtefactCache, package_versions
from ..case import Case
from ..config import Settings
from ..errors import NonFiniteOutput, ParityError, StepFailed, TimeLimitExceeded
from ..isolation import stage
from ..metrics.accuracy import evaluate
from ..models.zoo import accuracy_not_measured, parity_tolerance
from ..progress import UNCACHED_BUILDS, cold_builds
from ..workflows import BuildContext, Engine, get_workflow
from ..workflows.base import PARITY_BATCH, physical_cores, relative_error
from .limits import build_time_limit
from .prepare import Preparer

# Max relative error of an engine's outputs against eager FP32 torch, per precision.
PARITY_TOLERANCE = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.05, "int8": 0.3, "fp8": 0.3}


class Builder:
    """Engines, their parity check and their accuracy, for the cases of one process."""

    def __init__(self, prep: Preparer) -> None:
        self.prep = prep
        settings = prep.settings
        self.settings = settings
        self.device = settings.resolved_device()
        self.threads = settings.threads or physical_cores()
        self.versions = package_versions()
        self._engines: dict[tuple, Engine] = {}
        self._accuracy: dict[tuple, dict[str, Any]] = {}
        self.failures: dict[tuple, BaseException] = {}  # engine key -> why its build failed
        torch.set_num_threads(self.threads)

    @classmethod
    def open(cls, settings: Settings, cache_dir: Path | str) -> Builder:
        """A building stage (and its preparing stage) over the artefact cache at ``cache_dir``:
        what scripts and tests use outside a pytest session."""
        return cls(Preparer(settings, ArtefactCache(cache_dir)))

    @staticmethod
    def engine_key(case: Case) -> tuple:
        return (case.model, case.dataset, case.input_size, case.pruner, case.workflow,
                case.precision)

    def skip_reason(self, case: Case) -> str | None:
        return get_workflow(case.workflow).check(case.precision, self.device)

    def engine(self, case: Case) -> Engine:
        key = self.engine_key(case)
        if key not in self._engines:
            self._engines[key] = self._build(case)
        return self._engines[key]

    def _build(self, case: Case) -> Engine:
        prep, settings = self.prep, self.settings
        with stage("preparing the model (load or train, prune, recover)"):
            pruned = prep.pruned(case)
        ctx = BuildContext(
            cache=prep.cache, model_key=pruned.key, threads=self.threads, device=self.device,
            batch_sizes=tuple(sorted(set(settings.batch_sizes))),
            options={"calibration_key": prep.calibration_key(case),
                     "calibration_method": settings.calibration_method,
                     "ort_providers": list(settings.ort_providers),
                     "trt_workspace_mb": settings.trt_workspace_mb})
        started = time.perf_counter()
        with cold_builds(prep.cache, case.id, uncached=UNCACHED_BUILDS.get(case.workflow)):
            try:
                with stage(f"the {case.workflow} {case.precision} engine build"):
                    engine = get_workflow(case.workflow).build(
                        pruned.model, case.precision, prep.calibration(case), prep.example(case),
                        ctx)
            except Exception as exc:  # a workflow's own error names no case: add it
                if type(exc).__module__.startswith("pytest_pqbench"):
                    exc.add_note(f"while building case {case.id}")
                    raise
                # a runtime's own failure (torch.compile, ONNX Runtime): one line naming the
                # case, not pages of its internals (the traceback: --fulltrace)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                first = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])
                raise StepFailed(f"{case.id}: building the {case.workflow} {case.precision} "
                                 f"engine failed: {type(exc).__name__}: {first[:300]} "
                                 "(pytest --fulltrace shows the traceback)") from exc
        engine.facts.setdefault("engine_seconds", time.perf_counter() - started)
        with stage("the parity check against eager FP32"):
            engine.facts["parity_error"] = self.check_parity(case, engine)
        return engine

    def engine_guarded(self, case: Case) -> Engine:
        """``engine`` under the build time limit; a failure is kept and raised again for the
        same case."""
        key = self.engine_key(case)
        if key in self.failures:
            raise self.failures[key]
        try:
            with build_time_limit(self.settings.build_timeout, case.id):
                return self.engine(case)
        except (Exception, TimeLimitExceeded, pytest.skip.Exception,
                pytest.fail.Exception) as exc:
            self.failures[key] = exc
            raise

    def check_parity(self, case: Case, engine: Engine) -> float:
        """Compare the engine with the eager FP32 model on real evaluation batches."""
        batch = self.prep.dataset(case).batch(PARITY_BATCH)
        model = self.prep.pruned(case).model
        with torch.inference_mode():
            want = model.float().eval()(torch.from_numpy(batch)).numpy()
        got = np.asarray(engine(batch))
        if not np.all(np.isfinite(got)):
            raise NonFiniteOutput(f"{case.id}: engine produced {int((~np.isfinite(got)).sum())} "
                                  f"NaN/Inf output values on {len(batch)} evaluation images")
        err = relative_error(got, want)
        tolerance = parity_tolerance(self.prep.trained(case).info,
                                     PARITY_TOLERANCE.get(case.precision, 0.3))
        if not err <= tolerance:
            raise ParityError(f"{case.id}: engine output differs from eager FP32 torch by max "
                              f"relative error {err:.3g} > {tolerance:g} allowed for "
                              f"{case.precision}")
        return err

    def accuracy(self, case: Case) -> dict[str, Any]:
        """The engine's accuracy on the evaluation split; {} when not measured (an untrained
        zoo model, like a build-only run)."""
        if accuracy_not_measured(self.prep.trained(case).info):
            return {}
        key = self.engine_key(case)
        if key not in self._accuracy:
            self._accuracy[key] = evaluate(self.engine(case), self.prep.dataset(case),
                                           self.prep.spec(case), case.batch_size)
        return self._accuracy[key]
