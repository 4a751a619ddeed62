"""``scenes_yolo``: a small YOLO-style one-stage detector, written here (torchvision does not
import on this machine), with its decode + NMS post-processing and its training loop.

Backbone of residual BasicBlocks (BatchNorm), a two-scale neck (upsample + concat, as a PAN/FPN
top-down path) and 1x1 heads at strides 8 and 16, one anchor per cell. ``forward`` returns ONE
float32 tensor ``[N, A, 5 + C]``: the raw head maps of both scales flattened and concatenated
(``tx, ty, tw, th, objectness, class logits``). Everything after that (sigmoid, grid offsets,
anchors, NMS) lives in :func:`postprocess`, shared by every workflow, so the exported graph
stays conv / BN / ReLU / upsample / concat and every engine is scored identically.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .base import ModelSpec, register_model
from .classifiers import BasicBlock, conv_bn
from .training import check_time_budget

if TYPE_CHECKING:
    from ..datasets import Dataset

STRIDES = (8, 16)
ANCHORS = (12.0, 26.0)  # box prior (pixels) per scale: w = h = anchor * (2 sigmoid(t))^2
SPLIT_SIZE = 18.0  # objects whose longer side is below this go to the stride-8 scale
CONF_THRESHOLD = 0.001  # COCO-style mAP keeps low-confidence boxes; P/R use their own threshold
NMS_IOU, MAX_DETECTIONS = 0.5, 100


class SceneDetector(nn.Module):
    def __init__(self, num_classes: int = 4,
                 widths: tuple[int, ...] = (16, 32, 48, 64, 96)) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = conv_bn(3, w0, 3, 2)  # stride 2
        self.stage1 = nn.Sequential(BasicBlock(w0, w1, 2), BasicBlock(w1, w1))  # stride 4
        self.stage2 = nn.Sequential(BasicBlock(w1, w2, 2), BasicBlock(w2, w2))  # stride 8
        self.stage3 = nn.Sequential(BasicBlock(w2, w4, 2), BasicBlock(w4, w4))  # stride 16
        self.lateral = conv_bn(w4, w3, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(conv_bn(w3 + w2, w3, 3), BasicBlock(w3, w3))
        outputs = 5 + num_classes
        self.head8 = nn.Conv2d(w3, outputs, 1)
        self.head16 = nn.Conv2d(w4, outputs, 1)
        self.num_classes = num_classes
        for head in (self.head8, self.head16):  # start with low objectness: most cells are empty
            nn.init.constant_(head.bias[4], -4.0)

    def forward(self, x):
        p8 = self.stage2(self.stage1(self.stem(x)))
        p16 = self.stage3(p8)
        f8 = self.fuse(torch.cat([self.up(self.lateral(p16)), p8], 1))
        maps = [self.head8(f8), self.head16(p16)]
        # [N, C, H, W] -> [N, H*W, C] per scale, stride-8 cells first
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def detector_head(model: nn.Module) -> list[nn.Module]:
    return [model.head8, model.head16]


# ---- decode + NMS (post-processing, shared by every workflow) ----------------------------------
def grids(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell origins (x, y), stride and anchor of every output row, in forward's order."""
    cells, strides, anchors = [], [], []
    for stride, anchor in zip(STRIDES, ANCHORS, strict=True):
        gy, gx = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride),
                                indexing="ij")
        cells.append(torch.stack([gx, gy], -1).reshape(-1, 2).float())
        strides.append(torch.full((cells[-1].shape[0], 1), float(stride)))
        anchors.append(torch.full((cells[-1].shape[0], 1), anchor))
    return torch.cat(cells), torch.cat(strides), torch.cat(anchors)


def decode_boxes(raw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[..., A, 4+]`` raw head values -> ``[..., A, 4]`` boxes (x1, y1, x2, y2) in pixels."""
    cells, strides, anchors = grids(height, width)
    if raw.shape[-2] != cells.shape[0]:
        raise ValueError(f"detector output has {raw.shape[-2]} rows; a {height}x{width} input "
                         f"gives {cells.shape[0]} cells at strides {STRIDES}")
    t = raw[..., :4].sigmoid()
    centre = (t[..., :2] * 2 - 0.5 + cells) * strides  # a cell predicts centres in [-0.5, 1.5]
    size = (t[..., 2:4] * 2) ** 2 * anchors  # (0, 4 x anchor)
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (indices kept, best first). Hand-written: torchvision,
    which has it, does not import here."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2])
                     - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3])
                     - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(outputs: np.ndarray, image_shape: tuple[int, int],
                conf_threshold: float = CONF_THRESHOLD, iou_threshold: float = NMS_IOU,
                max_detections: int = MAX_DETECTIONS) -> list[np.ndarray]:
    """Raw ``[N, A, 5 + C]`` outputs -> per image a float32 ``[k, 6]`` array of
    ``(x1, y1, x2, y2, score, class)``, score = objectness x class probability, NMS per class."""
    height, width = image_shape
    raw = torch.from_numpy(np.ascontiguousarray(outputs, dtype=np.float32))
    boxes = decode_boxes(raw, height, width).numpy()
    scores = (raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()).numpy()  # [N, A, C]
    return [select_detections(b, s, image_shape, conf_threshold, iou_threshold, max_detections)
            for b, s in zip(boxes, scores, strict=True)]


def select_detections(b: np.ndarray, s: np.ndarray, image_shape: tuple[int, int],
                      conf_threshold: float, iou_threshold: float,
                      max_detections: int) -> np.ndarray:
    """One image's decoded boxes ``[A, 4]`` and class scores ``[A, C]`` -> float32 ``[k, 6]``
    detections: score threshold, NMS per class, best ``max_detections``, clipped to the image
    (shared with the model zoo's detectors)."""
    height, width = image_shape
    cells, classes = np.nonzero(s > conf_threshold)
    kept = []
    for cls in np.unique(classes):
        pick = cells[classes == cls]
        keep = nms(b[pick], s[pick, cls], iou_threshold)
        kept.append(np.column_stack([b[pick[keep]], s[pick[keep], cls],
                                     np.full(len(keep), cls)]))
    dets = np.concatenate(kept) if kept else np.zeros((0, 6))
    dets = dets[np.argsort(-dets[:, 4], kind="stable")[:max_detections]]
    dets[:, [0, 2]] = dets[:, [0, 2]].clip(0, width)
    dets[:, [1, 3]] = dets[:, [1, 3]].clip(0, height)
    return dets.astype(np.float32)


# ---- training ---------------------------------------------------------------------------------
def build_targets(labels: list[np.ndarray], height: int, width: int,
                  num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOLOv5-style assignment: each box goes to one scale (by size), to the cell holding its
    centre and the two nearest neighbour cells. Returns (positive mask [N, A], boxes [N, A, 4],
    class one-hot [N, A, C])."""
    cells, strides, _ = grids(height, width)
    n, a = len(labels), cells.shape[0]
    positive = torch.zeros(n, a, dtype=torch.bool)
    boxes = torch.zeros(n, a, 4)
    classes = torch.zeros(n, a, num_classes)
    offsets, start = [], 0
    for stride in STRIDES:
        offsets.append(start)
        start += (height // stride) * (width // stride)
    for i, lab in enumerate(labels):
        # neighbour cells first, centre cells last: a box's own centre cell is never taken
        # over by a neighbouring box's extra positive
        for centre in (False, True):
            for cls, x1, y1, x2, y2 in lab:
                level = 0 if max(x2 - x1, y2 - y1) < SPLIT_SIZE else 1
                stride = STRIDES[level]
                gw, gh = width // stride, height // stride
                cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
                gx, gy = int(min(cx, gw - 1e-3)), int(min(cy, gh - 1e-3))
                near_x = gx - 1 if cx - gx < 0.5 else gx + 1
                near_y = gy - 1 if cy - gy < 0.5 else gy + 1
                cells = ((gx, gy),) if centre else ((near_x, gy), (gx, near_y))
                for x, y in cells:
                    if not (0 <= x < gw and 0 <= y < gh):
                        continue
                    row = offsets[level] + y * gw + x
                    positive[i, row] = True
                    boxes[i, row] = torch.tensor([x1, y1, x2, y2])
                    classes[i, row] = 0.0
                    classes[i, row, int(cls)] = 1.0
    return positive, boxes, classes


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(IoU, generalised IoU) of matching rows of ``[M, 4]`` box tensors."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area = lambda t: (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter + 1e-7
    iou = inter / union
    hull = ((torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0]))
            * (torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1]))) + 1e-7
    return iou, iou - (hull - union) / hull


def _loss(raw: torch.Tensor, targets: tuple[torch.Tensor, ...], height: int,
          width: int) -> torch.Tensor:
    positive, boxes, classes = targets
    bce = nn.functional.binary_cross_entropy_with_logits
    obj_target = torch.zeros_like(raw[..., 4])
    loss = raw.new_zeros(())
    if positive.any():
        pred = decode_boxes(raw, height, width)[positive]
        iou, g = giou(pred, boxes[positive])
        loss = loss + (1 - g).mean() * 2.0
        loss = loss + bce(raw[..., 5:][positive], classes[positive])
        obj_target[positive] = iou.detach().clamp(min=0)  # objectness learns the box quality
    return loss + bce(raw[..., 4], obj_target) * 4.0


@torch.no_grad()
def detection_map50(model: nn.Module, dataset: Dataset, batch_size: int = 128) -> float:
    from ..metrics.detection import evaluate_detections

    model.eval()
    images = dataset.evaluation.images
    outputs = np.concatenate([model(torch.from_numpy(images[s:s + batch_size])).numpy()
                              for s in range(0, len(images), batch_size)])
    return float(evaluate_detections(outputs, dataset, SPEC)["map50"])


def train_detector(model: nn.Module, dataset: Dataset, seed: int = 0, epochs: int = 8,
                   batch_size: int = 32, lr: float = 4e-3, target: float = 0.85,
                   time_budget_s: float | None = None, teacher: nn.Module | None = None,
                   alpha: float = 0.5, check_every: int = 2, threads: int = 1) -> dict[str, Any]:
    """AdamW + one-cycle, horizontal-flip augmentation for ``epochs`` epochs; stops early once
    the evaluation mAP50 reaches ``target`` (the seed decides, never the clock: the model is
    cached under its inputs). ``time_budget_s`` (default: none) raises ``TrainingCut``, and
    nothing is cached, when exceeded (``models.training``).

    With ``teacher`` (recovery after pruning) the loss adds output distillation: MSE between the
    student's and the teacher's raw head maps, weighted by ``alpha``.

    ``threads`` (default 1): this net's small convolutions gain little from a second thread, and
    on shared cores OpenMP threads that wait on each other slowed a training step 7x (measured),
    so training runs single-threaded; the caller's thread count is restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(model, dataset, seed, epochs, batch_size, lr, target, time_budget_s,
                      teacher, alpha, check_every)
    finally:
        torch.set_num_threads(previous)


def _train(model: nn.Module, dataset: Dataset, seed: int, epochs: int, batch_size: int, lr: float,
           target: float, time_budget_s: float | None, teacher: nn.Module | None, alpha: float,
           check_every: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(dataset.train.images)
    labels = dataset.train.labels
    height, width = images.shape[2:]
    targets = build_targets(labels, height, width, dataset.num_classes)
    flipped = [np.column_stack([lab[:, 0], width - lab[:, 3], lab[:, 2], width - lab[:, 1],
                                lab[:, 4]]) for lab in labels]
    targets_flipped = build_targets(flipped, height, width, dataset.num_classes)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.2)
    started = time.perf_counter()
    map50, epoch = 0.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            flip = bool(torch.rand((), generator=gen) < 0.5)
            x = images[idx].flip(-1) if flip else images[idx]
            batch_targets = tuple(t[idx] for t in (targets_flipped if flip else targets))
            raw = model(x)
            loss = _loss(raw, batch_targets, height, width)
            if teacher is not None:
                with torch.no_grad():
                    teacher_raw = teacher(x)
                loss = (1 - alpha) * loss + alpha * nn.functional.mse_loss(raw, teacher_raw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch % check_every == 0 or epoch == epochs:
            map50 = detection_map50(model, dataset)
            if map50 >= target:
                break
        check_time_budget(started, time_budget_s, "detector", epoch, epochs)
    model.eval()
    return {"epochs": epoch, "train_map50_eval_split": map50,
            "train_seconds": time.perf_counter() - started}


SPEC = register_model(ModelSpec(
    name="scenes_yolo", task="detect", input_shape=(3, 64, 64), builder=SceneDetector,
    default_dataset="scenes", trainer=train_detector,
    min_accuracy=0.6, max_drop=0.1, deadline_ms=33.3, ignored_layers=detector_head,
    postprocess=postprocess,
    description="YOLO-style one-stage detector (residual blocks, BatchNorm, strides 8 and 16), "
                "64x64 synthetic driving scenes",
))
