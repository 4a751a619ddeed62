"""The Dataset contract shared by synthetic and on-disk datasets.

Images are float32 NCHW arrays, already resized and normalised as the model spec declares.
Classification labels are an int64 array ``[N]``; detection labels are a list of float32 arrays
``[k, 5]`` holding ``(class, x1, y1, x2, y2)`` in pixels of the (resized) image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..registry import Registry, UsageError


@dataclass
class Split:
    images: np.ndarray
    labels: Any

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Dataset:
    name: str
    task: str  # "classify" | "detect"
    num_classes: int
    class_names: list[str]
    train: Split
    evaluation: Split
    calibration: Split
    fingerprint: str  # content identity, part of every artefact cache key
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.evaluation.images.shape[1:])  # type: ignore[return-value]

    def batch(self, batch_size: int, offset: int = 0) -> np.ndarray:
        """``batch_size`` evaluation images (wrapping around a small split), contiguous float32."""
        n = len(self.evaluation)
        idx = (np.arange(batch_size) + offset) % n
        return np.ascontiguousarray(self.evaluation.images[idx], dtype=np.float32)

    def calibration_batches(self, batch_size: int,
                            limit: int | None = None) -> Iterator[np.ndarray]:
        """Batches of the calibration split: real images the model did not train on."""
        images = self.calibration.images
        stop = len(images) if limit is None else min(len(images), limit)
        for start in range(0, stop, batch_size):
            chunk = images[start:min(start + batch_size, stop)]
            yield np.ascontiguousarray(chunk, dtype=np.float32)


def generated_dataset(name: str, task: str, class_names: list[str],
                      render: Callable[..., tuple[np.ndarray, Any]], *, seed: int, stream: int,
                      size: int, noise: float, counts: dict[str, int], mean: float, std: float,
                      info: dict[str, Any]) -> Dataset:
    """A generated dataset whose splits come from independent random streams of one seed
    (``seed * 1000 + stream + split index``): disjoint and individually reproducible."""
    splits = {}
    for index, split in enumerate(("train", "evaluation", "calibration")):
        images, labels = render(counts[split], seed * 1000 + stream + index, size=size,
                                noise=noise)
        splits[split] = Split((images - mean) / std, labels)
    described = ":".join(str(counts[k]) for k in ("train", "evaluation", "calibration"))
    fingerprint = hashlib.sha256(
        f"{name}:{seed}:{size}:{described}:{noise}:v1".encode()).hexdigest()[:16]
    return Dataset(name=name, task=task, num_classes=len(class_names),
                   class_names=list(class_names), fingerprint=fingerprint,
                   info={**info, "seed": seed, "size": size}, **splits)


# A dataset factory takes keyword options (seed, path, image size...) and returns a Dataset.
DatasetFactory = Callable[..., Dataset]
DATASETS: Registry[DatasetFactory] = Registry("dataset", "pqbench.datasets")

_loaded: dict[tuple, Dataset] = {}
_failed: dict[tuple, str] = {}  # a dataset that failed to load fails every later case at once


def register_dataset(name: str, factory: DatasetFactory | None = None, *, replace: bool = False):
    return DATASETS.register(name, factory, replace=replace)


def get_dataset(name: str, /, **options: Any) -> Dataset:
    """Build (once per process) the dataset registered as ``name``."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key in _failed:
        raise UsageError(_failed[key])
    if key not in _loaded:
        try:
            _loaded[key] = DATASETS.get(name)(**options)
        except UsageError as exc:
            _failed[key] = str(exc)
            raise UsageError(str(exc)) from None
    return _loaded[key]
