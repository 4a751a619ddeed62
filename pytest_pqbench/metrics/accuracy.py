"""Task accuracy of an engine over a whole evaluation split, scored the same for every workflow."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import NonFiniteOutput  # noqa: F401  (defined in errors.py)
from .detection import Scored, evaluate_detections

if TYPE_CHECKING:
    from ..datasets import Dataset


def run_split(engine: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
              batch_size: int) -> np.ndarray:
    """Outputs for every image, in batches of ``batch_size``; the last batch is padded (static
    shapes, e.g. TensorRT profiles, see only the batch size they were built for)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out = np.asarray(engine(np.ascontiguousarray(chunk, dtype=np.float32)))
        if not np.all(np.isfinite(out)):
            bad = int((~np.isfinite(out)).sum())
            raise NonFiniteOutput(f"engine produced {bad} NaN/Inf output values on evaluation "
                                  f"images {start}..{start + n - 1}")
        outputs.append(out[:n])
    return np.concatenate(outputs)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def evaluate(engine: Callable[[np.ndarray], np.ndarray], dataset: Dataset, spec: Scored,
             batch_size: int) -> dict[str, Any]:
    """``accuracy`` (the model's primary metric, a fraction) plus task-specific metrics."""
    outputs = run_split(engine, dataset.evaluation.images, batch_size)
    if spec.task == "classify":
        return {"accuracy": top1(outputs, dataset.evaluation.labels), "accuracy_metric": "top1"}
    return evaluate_detections(outputs, dataset, spec)
