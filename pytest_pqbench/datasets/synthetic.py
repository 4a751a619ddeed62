"""Synthetic shapes: a deterministic, generated 10-class image-classification dataset.

Each image is a coloured geometric shape (disk, square, triangle, plus, ring, diamond, bar,
cross, half-disk, frame) at a random position, scale and small rotation, over a random background
with Gaussian noise. Splits are drawn from independent random streams of one seed, so they are
disjoint and reproducible; no file is downloaded.
"""

from __future__ import annotations

import numpy as np

from .base import Dataset, generated_dataset, register_dataset

SHAPE_NAMES = ["disk", "square", "triangle", "plus", "ring", "diamond", "bar", "cross",
               "half_disk", "frame"]
MEAN, STD = 0.5, 0.25


def _mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    if cls == 0:
        return r2 < 0.8
    if cls == 1:
        return np.maximum(au, av) < 0.75
    if cls == 2:
        return (v < 0.7) & (au < (0.7 - v) * 0.55)
    if cls == 3:
        return ((au < 0.22) & (av < 0.95)) | ((av < 0.22) & (au < 0.95))
    if cls == 4:
        return (r2 > 0.35) & (r2 < 0.95)
    if cls == 5:
        return au + av < 0.95
    if cls == 6:
        return (au < 0.95) & (av < 0.28)
    if cls == 7:
        d1, d2 = np.abs(u - v) / 1.414, np.abs(u + v) / 1.414
        return ((d1 < 0.18) | (d2 < 0.18)) & (np.maximum(au, av) < 0.8)
    if cls == 8:
        return (r2 < 0.85) & (v > 0.0)
    return (np.maximum(au, av) < 0.85) & (np.maximum(au, av) > 0.55)


def render_shapes(n: int, seed: int, size: int = 32, noise: float = 0.08,
                  num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``size``x``size`` (float32 in [0, 1], NCHW) and their int64 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((n, 3, size, size), dtype=np.float32)
    for i, cls in enumerate(labels):
        scale = rng.uniform(0.22, 0.4)
        cx, cy = rng.uniform(scale, 1 - scale, size=2)
        angle = rng.uniform(-0.25, 0.25)
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = (xx - cx) / scale, (yy - cy) / scale
        u, v = c * dx + s * dy, -s * dx + c * dy
        mask = _mask(int(cls), u, v)
        bg = rng.uniform(0.0, 1.0, size=3)
        fg = rng.uniform(0.0, 1.0, size=3)
        while np.abs(fg - bg).sum() < 0.9:  # keep the shape visible
            fg = rng.uniform(0.0, 1.0, size=3)
        img = np.where(mask[None], fg[:, None, None], bg[:, None, None])
        img = img + rng.normal(0.0, noise, size=img.shape)
        images[i] = np.clip(img, 0.0, 1.0)
    return images, labels.astype(np.int64)


def shapes_dataset(seed: int = 0, size: int = 32, train: int = 6000, evaluation: int = 1024,
                   calibration: int = 256, noise: float = 0.08) -> Dataset:
    return generated_dataset(
        "shapes", "classify", SHAPE_NAMES, render_shapes, seed=seed, stream=1, size=size,
        noise=noise, counts={"train": train, "evaluation": evaluation, "calibration": calibration},
        mean=MEAN, std=STD, info={"generator": "synthetic shapes"})


register_dataset("shapes", shapes_dataset)
