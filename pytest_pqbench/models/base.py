"""ModelSpec and the trained-model loader (train once, cache the weights, load weights-only)."""

from __future__ import annotations

import hashlib
import inspect
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..cache import code_fingerprint
from ..isolation import isolated
from ..registry import Registry, UsageError

if TYPE_CHECKING:
    from ..cache import ArtefactCache
    from ..datasets import Dataset

TASKS = ("classify", "detect")
# Layer kinds by their public classes (torch's common bases _ConvNd / _BatchNorm are private);
# the lazy variants become these after their first forward.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
              nn.ConvTranspose3d)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# A latency deadline every spec gets unless it says otherwise: one frame at 30 FPS.
DEFAULT_DEADLINE_MS = 33.3


def _declaring_file() -> str | None:
    """The file of the first caller outside this module and the dataclass-generated
    ``__init__``: the conftest.py or module whose ``ModelSpec(...)`` call declares the spec."""
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    while frame is not None:
        name = frame.f_code.co_filename
        if name != __file__ and not name.startswith("<"):
            return name
        frame = frame.f_back
    return None


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and what it is judged by.

    ``builder(num_classes)`` returns an untrained module. An embedded model has a ``trainer``
    and trains itself once on its dataset; a user's model gives ``weights`` (a state_dict file
    loaded with ``weights_only=True``) instead, and a ``trainer`` only to be fine-tuned after
    pruning. The trainer is called as ``trainer(model, dataset, seed=, **train_options)`` to
    train from scratch and ``trainer(model, dataset, seed=, epochs=, lr=, target=, teacher=)``
    to fine-tune (``teacher`` is the unpruned model with ``--pqbench-distill``, else None); it
    trains ``model`` in place and returns a dict of facts. ``models.training.train_classifier``
    has that signature and is reusable for any classifier.

    A relative ``weights`` path is resolved from the folder of the file that declares the spec
    (``declared_in``: the file whose code called ``ModelSpec(...)``, found at creation; pass
    ``declared_in=`` to choose another), not from the current directory.
    """

    name: str
    task: str
    input_shape: tuple[int, int, int]
    builder: Callable[[int], nn.Module]
    default_dataset: str
    trainer: Callable[..., dict[str, Any]] | None = None
    weights: str | None = None
    min_accuracy: float = 0.0  # absolute accuracy floor (fraction)
    max_drop: float = 1.0  # max drop vs unpruned eager FP32 (fraction, e.g. 0.02 = 2 pp)
    deadline_ms: float | None = DEFAULT_DEADLINE_MS
    ignored_layers: Callable[[nn.Module], list[nn.Module]] | None = None  # heads kept by pruners
    postprocess: Callable[..., Any] | None = None  # detection decode + NMS
    train_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # how a dataset on disk is prepared for this model: (x / 255 - mean) / std, per channel
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    declared_in: str | None = None  # the file that declared the spec (relative weights)
    # (state, model) -> state in the model's layout, applied to a weights file before loading
    # (timm's filter-function convention): the zoo's published-checkpoint converters
    convert_weights: Callable[..., dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"model {self.name!r}: unknown task {self.task!r}; valid: {TASKS}")
        if self.declared_in is None:
            object.__setattr__(self, "declared_in", _declaring_file())

    def weights_path(self) -> Path | None:
        """``weights`` as a path: absolute as given, relative from the declaring file's folder."""
        if not self.weights:
            return None
        path = Path(self.weights).expanduser()
        if path.is_absolute() or self.declared_in is None:
            return path
        return Path(self.declared_in).resolve().parent / path


MODELS: Registry[ModelSpec] = Registry("model", "pqbench.models")


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    return MODELS.register(spec.name, spec, replace=replace)


def get_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def model_key(model: nn.Module) -> str:
    """Content hash of a model: every tensor's name, shape, dtype and bytes, plus its structure."""
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def state_dict_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def load_state(path: Path | str) -> dict[str, torch.Tensor]:
    # weights_only=True: a weights file never executes code.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(spec: ModelSpec, model: nn.Module, built_for: str = "this dataset") -> Path:
    """Load the spec's weights file into ``model``; one error naming the file and what is wrong
    (missing file, not a weights-only state_dict, keys or shapes that do not fit)."""
    path = spec.weights_path()
    assert path is not None
    where = f" (declared in {spec.declared_in})" if spec.declared_in and not Path(
        str(spec.weights)).is_absolute() else ""
    if not path.is_file():
        raise UsageError(f"model {spec.name!r}: weights file {str(path)!r} does not exist"
                         f"{where}; a relative path is read from the folder of the file that "
                         "declares the ModelSpec")
    try:
        state = load_state(path)
    except Exception as exc:  # torch raises several types for a bad or unsafe file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        export = getattr(spec.convert_weights, "export", None)
        raise UsageError(f"model {spec.name!r}: weights file {str(path)!r} is not a state_dict "
                         f"torch.load(weights_only=True) can read: {first}. "
                         + (f"Write one {export}" if export else
                            "Save it with torch.save(model.state_dict(), path)")) from None
    if spec.convert_weights is not None and isinstance(state, dict):
        state = spec.convert_weights(state, model, repr(str(path)))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UsageError(f"model {spec.name!r}: weights file {str(path)!r} holds a "
                         f"{type(state).__name__}, not a state_dict of tensors; save it with "
                         "torch.save(model.state_dict(), path)")
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        explain = getattr(spec.convert_weights, "explain", None)
        what = explain(state, model) if explain else ""
        raise UsageError(f"model {spec.name!r}: weights file {str(path)!r} does not fit "
                         f"{type(model).__name__} built for {built_for}: "
                         + (f"{what}. " if what else "") + "; ".join(problems))
    model.load_state_dict(state)
    return path


def state_dict_mismatch(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor],
                        limit: int = 6) -> list[str]:
    """What keeps ``got`` from loading into a model whose state_dict is ``want``: missing and
    unexpected keys, and shapes that differ (at most ``limit`` of each, then a count)."""

    def some(items: list[str]) -> str:
        extra = f" and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + extra

    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} in the file vs {tuple(want[k].shape)} in the model"
              for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    out = []
    if missing:
        out.append(f"missing keys {some(missing)}")
    if unexpected:
        out.append(f"unexpected keys {some(unexpected)}")
    if shapes:
        out.append(f"shape mismatch {some(shapes)}")
    return out


def check_output_width(spec: ModelSpec, model: nn.Module, dataset: Dataset) -> None:
    """The model's first forward, on one evaluation image: a classifier must return one tensor
    of shape (batch, the dataset's class count). Checked once, when the model is first loaded."""
    if len(dataset.evaluation) == 0:
        return
    with torch.inference_mode():
        out = model.eval()(torch.from_numpy(dataset.batch(1)))
    if spec.task != "classify":
        return
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        parts = (f" with keys {sorted(map(str, out))[:6]}" if isinstance(out, dict) else
                 f" of {len(out)} items" if isinstance(out, list | tuple) else "")
        raise UsageError(
            f"model {spec.name!r}: forward returns a {kind}{parts}, not a tensor; a classifier's "
            "forward must return one tensor of logits, shape (batch, classes) (return e.g. "
            "out[0] or out['logits'] from forward, or wrap the model in a module that does)")
    width = int(out.shape[-1]) if out.ndim == 2 else None
    if width != dataset.num_classes:
        shown = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        where = dataset.info.get("path") or dataset.name
        raise UsageError(
            f"model {spec.name!r} outputs {shown} per batch ({width} classes) but dataset "
            f"{dataset.name!r} ({where}) has {dataset.num_classes} classes "
            f"({', '.join(dataset.class_names[:10])}); the builder is called as "
            f"builder(num_classes) and must return a classifier with that many outputs")


def load_model(spec: ModelSpec, dataset: Dataset, cache: ArtefactCache | None,
               seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The spec's trained model in eval mode, plus facts about how it was obtained."""
    model, info = _load_model(spec, dataset, cache, seed)
    # the model's first forward: in a killable worker process under a time limit, so a forward
    # that hangs where no signal reaches it fails this model's cases, never the session
    isolated(check_output_width, f"the first forward of model {spec.name!r}")(spec, model,
                                                                               dataset)
    return model, info


def _load_model(spec: ModelSpec, dataset: Dataset, cache: ArtefactCache | None,
                seed: int) -> tuple[nn.Module, dict[str, Any]]:
    model = spec.builder(dataset.num_classes)
    if spec.weights:
        path = load_weights(spec, model, f"the {dataset.num_classes} classes of dataset "
                                         f"{dataset.name!r}")
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
