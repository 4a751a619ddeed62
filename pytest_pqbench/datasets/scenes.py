"""Synthetic driving scenes: a deterministic, generated 4-class object-detection dataset.

Each image is a road scene (sky with a random horizon, a grey road converging to a vanishing
point, lane markings, verges) with 1-5 objects: car, pedestrian, sign, cyclist. Objects lower in
the image are drawn larger (perspective) and later (they occlude the farther ones); size, place,
colour, lighting and noise vary, and boxes may overlap. Labels are float32 ``[k, 5]`` arrays of
``(class, x1, y1, x2, y2)`` in pixels. Splits come from independent random streams of one seed,
so they are disjoint and reproducible; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from .base import Dataset, generated_dataset, register_dataset

CLASS_NAMES = ["car", "pedestrian", "sign", "cyclist"]
MEAN, STD = 0.5, 0.25
# (width / height) of each class's box, and its height range as a fraction of the image size.
ASPECT = {0: 1.7, 1: 0.42, 2: 0.45, 3: 0.85}
HEIGHT = {0: (0.16, 0.34), 1: (0.18, 0.42), 2: (0.2, 0.38), 3: (0.2, 0.42)}
MAX_OVERLAP = 0.3  # IoU above which a new object is re-placed: partly hidden, never lost


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A random colour clearly different from ``avoid`` (the road / background under it)."""
    for _ in range(20):
        c = rng.uniform(0.0, 1.0, size=3)
        if np.abs(c - avoid).sum() > 0.8:
            return c
    return 1.0 - avoid


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    horizon = rng.uniform(0.28, 0.45) * size
    vx = rng.uniform(0.3, 0.7) * size  # vanishing point
    sky_top, sky_low = rng.uniform(0.45, 1.0, 3), rng.uniform(0.6, 1.0, 3)
    t = np.clip(yy / max(horizon, 1.0), 0, 1)[None]
    img = sky_top[:, None, None] * (1 - t) + sky_low[:, None, None] * t
    verge = rng.uniform(0.1, 0.6, 3) * np.array([0.6, 1.0, 0.5])  # grass-ish
    road = np.full(3, rng.uniform(0.25, 0.55)) + rng.normal(0, 0.03, 3)
    below = yy >= horizon
    depth = np.clip((yy - horizon) / (size - horizon), 0, 1)  # 0 at horizon, 1 at the bottom
    half_width = 0.05 * size + depth * rng.uniform(0.6, 0.9) * size
    on_road = below & (np.abs(xx - vx) < half_width)
    img = np.where(below[None], verge[:, None, None], img)
    img = np.where(on_road[None], road[:, None, None], img)
    lane = on_road & (np.abs(xx - vx) < 0.004 * size + depth * 0.02 * size)
    dashes = (np.floor(np.log1p(depth * 12) * 4) % 2) == 0
    img = np.where((lane & dashes)[None], np.array([0.95, 0.95, rng.uniform(0.4, 0.95)])[:, None,
                                                                                        None], img)
    return img.astype(np.float32), horizon, road


def _object_mask(cls: int, u: np.ndarray, v: np.ndarray, aspect: float) -> list[np.ndarray]:
    """Part masks of one object in box coordinates (``u`` across, ``v`` down, both 0..1)."""
    # distances measured in box-height units so circles stay round whatever the aspect
    ux = u * aspect
    if cls == 0:  # car: body, cabin with dark windows, two wheels
        body = (v > 0.35) & (v < 0.82)
        slope = 0.1 * (0.4 - v)
        cabin = (v > 0.02) & (v <= 0.4) & (u > 0.18 + slope) & (u < 0.82 - slope)
        window = (v > 0.1) & (v < 0.36) & (u > 0.28) & (u < 0.72) & (np.abs(u - 0.5) > 0.03)
        wheels = (((ux - 0.25 * aspect) ** 2 + (v - 0.8) ** 2) < 0.2 ** 2) | (
            ((ux - 0.75 * aspect) ** 2 + (v - 0.8) ** 2) < 0.2 ** 2)
        return [body | cabin, window, wheels]
    if cls == 1:  # pedestrian: head, torso, two legs
        head = ((ux - 0.5 * aspect) ** 2 + (v - 0.1) ** 2) < 0.09 ** 2
        torso = (v > 0.19) & (v < 0.58) & (u > 0.15) & (u < 0.85)
        legs = (v >= 0.58) & (((u > 0.18) & (u < 0.45)) | ((u > 0.55) & (u < 0.82)))
        return [torso, legs, head]
    if cls == 2:  # sign: round or triangular plate with a rim, on a thin pole
        pole = (v > 0.4) & (np.abs(u - 0.5) < 0.1)
        r2 = (ux - 0.5 * aspect) ** 2 + (v - 0.22) ** 2
        plate = r2 < 0.22 ** 2
        inner = r2 < 0.15 ** 2
        return [pole, plate, inner]
    # cyclist: two wheel rings, a frame bar, rider torso and head
    r_a = (ux - 0.2 * aspect) ** 2 + (v - 0.78) ** 2
    r_b = (ux - 0.8 * aspect) ** 2 + (v - 0.78) ** 2
    wheels = ((r_a < 0.2 ** 2) & (r_a > 0.12 ** 2)) | ((r_b < 0.2 ** 2) & (r_b > 0.12 ** 2))
    frame = (np.abs(v - 0.7) < 0.05) & (u > 0.2) & (u < 0.8)
    rider = (v > 0.18) & (v < 0.68) & (np.abs(u - 0.48 + (v - 0.4) * 0.2) < 0.13)
    head = ((ux - 0.45 * aspect) ** 2 + (v - 0.1) ** 2) < 0.09 ** 2
    return [wheels | frame, rider, head]


def render_scene(rng: np.random.Generator, size: int, noise: float,
                 max_objects: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One ``3 x size x size`` image in [0, 1] and its ``[k, 5]`` boxes."""
    img, horizon, road = _background(rng, size)
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        for _attempt in range(10):
            bottom = rng.uniform(horizon + 0.15 * size, size * 1.02)
            depth = (bottom - horizon) / (size - horizon)
            lo, hi = HEIGHT[cls]
            h = size * (lo + (hi - lo) * depth) * rng.uniform(0.85, 1.15)
            w = h * ASPECT[cls] * rng.uniform(0.9, 1.1)
            cx = rng.uniform(w / 2 - 0.1 * w, size - w / 2 + 0.1 * w)
            box = np.array([cx - w / 2, bottom - h, cx + w / 2, bottom], dtype=np.float32)
            if all(_box_iou(box, b[1:]) < MAX_OVERLAP for b in boxes):
                boxes.append(np.array([cls, *box], dtype=np.float32))
                break
    boxes.sort(key=lambda b: b[4])  # painter's order: farther (higher) objects first
    for b in boxes:
        cls, x1, y1, x2, y2 = int(b[0]), *b[1:]
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), size)
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), size)
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
        u, v = (xx - x1) / (x2 - x1), (yy - y1) / (y2 - y1)
        patch = img[:, r0:r1, c0:c1]
        base = patch.mean(axis=(1, 2)) if patch.size else road
        colours = [_colour(rng, base), rng.uniform(0.0, 0.2, 3), rng.uniform(0.0, 1.0, 3)]
        if cls == 2:
            colours[2] = np.array([1.0, 1.0, 1.0]) * rng.uniform(0.85, 1.0)
            colours[0] = rng.uniform(0.3, 0.5, 3)
        for mask, colour in zip(_object_mask(cls, u, v, (x2 - x1) / (y2 - y1)), colours,
                                strict=True):
            patch[:, mask] = colour[:, None]
    img = img * rng.uniform(0.75, 1.2) + rng.normal(0.0, noise, size=img.shape)
    labels = np.array(boxes, dtype=np.float32).reshape(-1, 5)
    labels[:, 1:] = np.clip(labels[:, 1:], 0, size)
    return np.clip(img, 0.0, 1.0).astype(np.float32), labels


def render_scenes(n: int, seed: int, size: int = 64,
                  noise: float = 0.04) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = []
    for i in range(n):
        images[i], boxes = render_scene(rng, size, noise)
        labels.append(boxes)
    return images, labels


def scenes_dataset(seed: int = 0, size: int = 64, train: int = 3000, evaluation: int = 500,
                   calibration: int = 256, noise: float = 0.04) -> Dataset:
    return generated_dataset(
        "scenes", "detect", CLASS_NAMES, render_scenes, seed=seed, stream=100, size=size,
        noise=noise, counts={"train": train, "evaluation": evaluation, "calibration": calibration},
        mean=MEAN, std=STD, info={"generator": "synthetic driving scenes"})


register_dataset("scenes", scenes_dataset)
