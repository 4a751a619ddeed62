"""Datasets: images + labels with disjoint train / evaluation / calibration splits."""

from __future__ import annotations

from .base import DATASETS, Dataset, Split, get_dataset, register_dataset

__all__ = ["DATASETS", "Dataset", "Split", "get_dataset", "register_dataset"]

# Built-in datasets register themselves on import.
from . import disk, scenes, synthetic  # noqa: E402,F401
