"""Detection accuracy: mAP50 and mAP50-95 by pycocotools' COCOeval (COCO-style, 101-point
interpolated precision, up to 100 detections per image), plus precision and recall at a stated
confidence.

Inputs are the model's raw outputs for the whole evaluation split; the model spec's
``postprocess(outputs, (height, width)) -> [k, 6] (x1, y1, x2, y2, score, class) per image``
turns them into boxes, the same function for every workflow, so every engine is scored alike.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..datasets import Dataset

CONFIDENCE = 0.25  # the operating point of precision / recall (YOLOv5's detect.py default)
PR_IOU = 0.5


class Scored(Protocol):
    """What scoring reads of a model spec (``models.ModelSpec`` has it): the metrics package
    imports nothing of ``models``, which imports it to score its own training."""

    name: str
    task: str
    postprocess: Callable[..., Any] | None


def _coco_ground_truth(ground_truth: Sequence[np.ndarray], num_classes: int,
                       image_shape: tuple[int, int]):
    from pycocotools.coco import COCO

    height, width = image_shape
    images = [{"id": i + 1, "height": height, "width": width} for i in range(len(ground_truth))]
    annotations = []
    for i, boxes in enumerate(ground_truth):
        for cls, x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(cls) + 1, "bbox": [x1, y1, w, h],
                                "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def coco_map(detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray],
             num_classes: int, image_shape: tuple[int, int]) -> tuple[float, float]:
    """(mAP50, mAP50-95) of per-image ``[k, 6]`` detections against ``[k, 5]`` ground truth."""
    from pycocotools.cocoeval import COCOeval

    if not any(len(g) for g in ground_truth):
        raise ValueError("detection scoring needs at least one ground-truth box; the evaluation "
                         "split has none")
    gt = _coco_ground_truth(ground_truth, num_classes, image_shape)
    results = [{"image_id": i + 1, "category_id": int(d[5]) + 1,
                "bbox": [float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])],
                "score": float(d[4])}
               for i, dets in enumerate(detections) for d in np.asarray(dets).reshape(-1, 6)]
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # stats[0] = AP@[.5:.95], stats[1] = AP@.5 (area all, 100 detections); -1 means no data
    return max(float(evaluator.stats[1]), 0.0), max(float(evaluator.stats[0]), 0.0)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a[:, None, :], b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def precision_recall(detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray],
                     confidence: float = CONFIDENCE, iou: float = PR_IOU) -> tuple[float, float]:
    """Precision and recall of the detections scoring >= ``confidence``: greedy matching, best
    score first, one ground-truth box per detection of the same class at IoU >= ``iou``.
    Hand-written: COCOeval reports precision at recall levels, not at a confidence."""
    tp = fp = n_gt = 0
    for dets, gts in zip(detections, ground_truth, strict=True):
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
        gts = np.asarray(gts, dtype=np.float64).reshape(-1, 5)
        dets = dets[dets[:, 4] >= confidence]
        dets = dets[np.argsort(-dets[:, 4], kind="stable")]
        n_gt += len(gts)
        matched = np.zeros(len(gts), dtype=bool)
        overlaps = _iou_matrix(dets[:, :4], gts[:, 1:]) if len(gts) else np.zeros((len(dets), 0))
        for k, det in enumerate(dets):
            candidates = (~matched) & (gts[:, 0] == det[5]) & (overlaps[k] >= iou)
            if candidates.any():
                matched[np.argmax(np.where(candidates, overlaps[k], -1))] = True
                tp += 1
            else:
                fp += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_gt if n_gt else 0.0
    return precision, recall


def score_detections(detections: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray],
                     num_classes: int, image_shape: tuple[int, int],
                     confidence: float = CONFIDENCE) -> dict[str, Any]:
    map50, map50_95 = coco_map(detections, ground_truth, num_classes, image_shape)
    precision, recall = precision_recall(detections, ground_truth, confidence)
    return {"accuracy": map50, "accuracy_metric": "map50", "map50": map50, "map50_95": map50_95,
            "precision": precision, "recall": recall, "confidence": confidence}


def evaluate_detections(outputs: np.ndarray, dataset: Dataset, spec: Scored,
                        confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Score raw engine outputs for the whole evaluation split (see the module docstring)."""
    if spec.postprocess is None:
        raise ValueError(f"model {spec.name!r} is a detector without a postprocess function: "
                         "give its ModelSpec postprocess=(outputs, (height, width)) -> boxes")
    image_shape = tuple(dataset.evaluation.images.shape[2:4])
    detections = spec.postprocess(outputs, image_shape)
    return score_detections(detections, dataset.evaluation.labels, dataset.num_classes,
                            image_shape, confidence)
