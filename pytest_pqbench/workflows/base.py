"""The Workflow protocol, the Engine it builds, and what every workflow shares.

``Workflow.check(precision, device)`` returns None when the combination can run here, else the
reason it cannot (package missing, no GPU, precision unsupported): the case is then collected and
skipped with that reason. ``Workflow.build(model, precision, calibration, example, ctx)`` returns
an Engine: a callable on a float32 NCHW numpy batch that returns the outputs as float32 numpy,
synchronised (it returns only when results are ready), plus ``facts`` about itself
(``EngineFacts``). A workflow may also declare ``cost`` (a ``BuildCost``: what pytest-split's
first split is balanced by); one without it is estimated with ``DEFAULT_COST``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import numpy as np
from torch import nn

from ..errors import UsageError
from ..registry import Registry

if TYPE_CHECKING:
    from ..cache import ArtefactCache

# Bench.check_parity's batch size. Workflows that compile or build per shape (inductor, the
# TensorRT profiles) prepare it in ``build`` too, so parity never triggers a build of its own.
PARITY_BATCH = 16
# INT8 calibration methods of ``--pqbench-calibration-method`` (a workflow may offer fewer and
# skip the others with its reason, as inductor does).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil is a dependency
        return os.cpu_count() or 1


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: scale-free, so one tolerance fits logits and box regressions."""
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale


@dataclass
class BuildContext:
    """What a workflow needs besides the model: where to cache, how many threads, options."""

    cache: ArtefactCache  # every artefact a build writes goes here (tests give a scratch one)
    model_key: str  # content hash of the (pruned) model's weights and structure
    threads: int = field(default_factory=physical_cores)
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    options: dict[str, Any] = field(default_factory=dict)


class EngineFacts(TypedDict, total=False):
    """Every fact key the built-in workflows and ``Bench`` report on ``Engine.facts``. The
    results record copies all of an engine's facts (a workflow may add its own keys; a value
    that is not JSON-serialisable is left out, and a case field of the same name wins)."""

    provider: str  # what runs it: execution provider or backend and device
    providers: list[str]  # ONNX Runtime: the session's providers, in priority order
    model_bytes: int  # size of the artefact that runs
    artefact: dict[str, Any] | None  # portable artefact (path, sha256, ...) for pairing
    # ---- preparation, in seconds; see PREP_STAGES for what ``prep_seconds`` sums
    export_seconds: float  # torch -> ONNX export (0 cost on a cache hit)
    export_cache_hit: bool
    export_parity_error: float  # ONNX Runtime vs torch on real inputs, max relative error
    convert_seconds: float  # FP32 -> FP16 ONNX conversion
    calibrate_seconds: float  # INT8 calibration / quantization
    calibrate_cache_hit: bool
    calibration_method: str  # minmax, entropy, percentile, modelopt-max
    build_seconds: float  # engine build from its inputs (0 when a cached engine was loaded)
    compile_seconds: float  # inductor: compiling every batch size (part of build_seconds)
    engine_cache_hit: bool  # TensorRT: the serialized engine came from the cache
    engine_seconds: float  # Bench: wall seconds of ``Workflow.build`` in this process
    trt_profiles: list[list[list[int]]]  # TensorRT optimization profiles (min, opt, max)
    trt_workspace_mb: int
    # ---- which precision really ran
    precision_engaged: float | None  # share of compute in the requested precision
    precision_by_op: dict[str, float]  # "op@precision" -> share of compute
    precision_engaged_basis: str  # macs, weight_elements, nodes or unavailable
    int8_mac_share: float
    int8_coverage_basis: str
    qdq_pairs: int  # Quantize/Dequantize pairs left in the executed graph
    quant_format: str  # e.g. "QDQ per-channel u8s8"
    parity_error: float  # Bench: engine vs eager FP32 torch, max relative error


# Preparation stages ``prep_seconds`` adds up: stage seconds key -> the fact saying the stage's
# artefact came from the cache (its seconds were spent by an earlier run), or None: always paid.
PREP_STAGES: Mapping[str, str | None] = {"export_seconds": "export_cache_hit",
                                         "calibrate_seconds": "calibrate_cache_hit",
                                         "build_seconds": None}


def prep_seconds_of(facts: Mapping[str, Any]) -> float:
    """Seconds this process spent preparing the engine, by ``PREP_STAGES``."""
    return sum(float(facts.get(stage, 0.0)) for stage, hit in PREP_STAGES.items()
               if hit is None or not facts.get(hit))


class Engine:
    """A runnable artefact. Subclasses set ``_run``; ``facts`` describe what was built."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray],
                 facts: EngineFacts | dict[str, Any]) -> None:
        self._run = run
        self.facts: dict[str, Any] = facts  # type: ignore[assignment]  # filled in later too

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)


@dataclass(frozen=True)
class BuildCost:
    """Rough build seconds of a workflow on a 2-core CPU (the order of magnitude is what
    balancing pytest-split groups needs): ``build_s`` per engine once its inputs exist,
    ``export_s`` for the torch -> ONNX export shared by the ONNX workflows (0: none), and
    ``calibrate_s`` per precision that calibrates, per (pruned model, workflow)."""

    build_s: float
    export_s: float = 0.0
    calibrate_s: Mapping[str, float] = field(default_factory=dict)


DEFAULT_COST = BuildCost(build_s=10.0, calibrate_s={"int8": 4.0})  # a workflow without ``cost``


class Workflow(Protocol):
    """A way to run a model. ``check`` / ``build`` as the module docstring says; the attributes:

    - ``cost``: rough build seconds (``BuildCost``), what pytest-split's first split is
      balanced by;
    - ``portable``: ``load_portable(artefact, threads, device)`` loads an engine from the
      artefact a run recorded (``EngineFacts.artefact``), so a baseline's engine can be timed
      beside this run's in alternating blocks; False: its verdicts are unpaired;
    - ``pair_both_from_artefacts``: this run's engine is not the artefact (eager torch runs the
      module, the artefact is its torch.export program), so both sides of a pair are timed as
      their artefacts;
    - ``runtime_packages``: packages whose version change means pairing would time the new
      runtime on both sides (the comparison is then unpaired, and says so).

    ``BaseWorkflow`` gives the defaults; ``register_workflow`` adapts an object that declares
    only ``name``, ``precisions``, ``check`` and ``build``.
    """

    name: str
    precisions: frozenset[str]
    cost: BuildCost
    portable: bool
    pair_both_from_artefacts: bool
    runtime_packages: tuple[str, ...]

    def check(self, precision: str, device: str) -> str | None: ...

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine: ...

    def load_portable(self, artefact: dict[str, Any], threads: int, device: str) -> Engine: ...


class BaseWorkflow:
    """The defaults of the ``Workflow`` attributes: estimated cost, no portable artefact."""

    name: str = ""
    precisions: frozenset[str] = frozenset()
    cost: BuildCost = DEFAULT_COST
    portable: bool = False
    pair_both_from_artefacts: bool = False
    runtime_packages: tuple[str, ...] = ()

    def check(self, precision: str, device: str) -> str | None:
        raise NotImplementedError

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        raise NotImplementedError

    def load_portable(self, artefact: dict[str, Any], threads: int, device: str) -> Engine:
        raise LookupError(f"workflow {self.name!r} has no portable artefact")


class Adapted(BaseWorkflow):
    """A user's workflow object with the defaults of what it does not declare."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.precisions = inner.name, frozenset(inner.precisions)
        for attr in ("cost", "portable", "pair_both_from_artefacts", "runtime_packages"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))
        if hasattr(inner, "load_portable"):
            self.portable = getattr(inner, "portable", True)

    def check(self, precision: str, device: str) -> str | None:
        return self.inner.check(precision, device)

    def build(self, model: nn.Module, precision: str, calibration: Sequence[np.ndarray],
              example: np.ndarray, ctx: BuildContext) -> Engine:
        return self.inner.build(model, precision, calibration, example, ctx)

    def load_portable(self, artefact: dict[str, Any], threads: int, device: str) -> Engine:
        if not hasattr(self.inner, "load_portable"):
            return super().load_portable(artefact, threads, device)
        return self.inner.load_portable(artefact, threads, device)


WORKFLOWS: Registry[Workflow] = Registry("workflow", "pqbench.workflows")


def register_workflow(workflow: Any, *, replace: bool = False) -> Workflow:
    """Register ``workflow`` under its ``name``: a ``BaseWorkflow``, or any object with
    ``name``, ``precisions``, ``check`` and ``build`` (adapted with the defaults)."""
    missing = [a for a in ("name", "precisions", "check", "build") if not hasattr(workflow, a)]
    if missing:
        raise UsageError(f"workflow {workflow!r} lacks {', '.join(missing)}: a workflow has "
                         "name, precisions, check(precision, device) and build(model, precision, "
                         "calibration, example, ctx) (see pytest_pqbench.workflows.base)")
    if not isinstance(workflow, BaseWorkflow):
        workflow = Adapted(workflow)
    return WORKFLOWS.register(workflow.name, workflow, replace=replace)


def get_workflow(name: str) -> Workflow:
    """The workflow ``name``; one registered without the whole protocol (through
    ``WORKFLOWS.register`` or an entry point) is adapted here, once."""
    workflow = WORKFLOWS.get(name)
    if not isinstance(workflow, BaseWorkflow):
        workflow = Adapted(workflow)
        WORKFLOWS.register(name, workflow, replace=True)
    return workflow


def build_cost(name: str) -> BuildCost:
    """The ``cost`` workflow ``name`` declares (``DEFAULT_COST`` when it declares none)."""
    return get_workflow(name).cost


def unsupported(workflow: str, precision: str, supported: frozenset[str] | set[str]) -> str:
    return (f"workflow {workflow!r} does not run precision {precision!r} "
            f"(it runs: {', '.join(sorted(supported))})")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
