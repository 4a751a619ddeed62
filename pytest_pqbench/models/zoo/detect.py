"""YOLOv5s (v6.0+ / v7.0) and YOLOv8n as published by Ultralytics, written here (neither
ultralytics nor torchvision is a dependency), with the decode + NMS every workflow shares.

Layer for layer the ``yolov5s.yaml`` and ``yolov8n.yaml`` definitions: Conv = Conv2d + BN +
SiLU, C3 / C2f blocks, SPPF, a PAN neck (upsample + concat) and three-stride heads (8, 16, 32).
At 640 px with 80 classes they have the published parameter counts and MACs (Ultralytics'
"GFLOPs" are 2 x MACs, thop's convention; ``tests/test_zoo.py`` checks both).

``forward`` returns ONE float32 tensor ``[N, A, K]`` of raw head values, the three scales
flattened and concatenated, smallest stride first:

* YOLOv5s: three anchors per cell, ``K = 5 + C`` (tx, ty, tw, th, objectness, class logits),
  anchor-major within a scale as Ultralytics' Detect orders them;
* YOLOv8n: anchor-free, decoupled box / class branches, ``K = 4 * 16 + C``: four 16-bin
  distance distributions (DFL) to the left, top, right and bottom edge, then class logits.

Everything after that (sigmoid, grids, anchors, DFL expectation, NMS) is :func:`postprocess`,
outside the graph, so every engine is scored alike and the head stays conv-only.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from torch import nn

from ..detector import CONF_THRESHOLD, MAX_DETECTIONS, NMS_IOU, select_detections

STRIDES = (8, 16, 32)
V5_ANCHORS = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
              ((116, 90), (156, 198), (373, 326)))  # pixels, per stride (COCO k-means)
REG_MAX = 16  # YOLOv8's bins per box edge


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1,
                 padding: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2 if padding is None else padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)  # Ultralytics' BN settings
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, shortcut: bool = True, k1: int = 1) -> None:
        super().__init__()
        self.cv1 = Conv(cin, cout, k1)  # 1x1 in YOLOv5, 3x3 in YOLOv8
        self.cv2 = Conv(cout, cout, 3)
        self.add = shortcut and cin == cout

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """YOLOv5's CSP block: two 1x1 branches, n bottlenecks on one, concat, 1x1."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = cout // 2
        self.cv1, self.cv2 = Conv(cin, hidden), Conv(cin, hidden)
        self.cv3 = Conv(2 * hidden, cout)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class C2f(nn.Module):
    """YOLOv8's CSP block: 1x1 to 2c, split in two, n bottlenecks chained on the second half,
    concat every output, 1x1.

    The 1x1 to 2c is held as two 1x1 convolutions to c (``cv0``, ``cv1``: the same parameters
    and MACs, and the same function: Ultralytics' ``cv1`` weights split in halves load into
    them), as torch-pruning's YOLOv8 example does: a ``chunk`` / slice at a fixed channel count
    in ``forward`` would break once pruning changes that count."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        c = cout // 2
        self.cv0, self.cv1 = Conv(cin, c), Conv(cin, c)
        self.cv2 = Conv((2 + n) * c, cout)
        self.m = nn.ModuleList(Bottleneck(c, c, shortcut, k1=3) for _ in range(n))

    def forward(self, x):
        ys = [self.cv0(x), self.cv1(x)]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        super().__init__()
        hidden = cin // 2
        self.cv1 = Conv(cin, hidden)
        self.cv2 = Conv(hidden * 4, cout)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


def _flatten(maps: list[torch.Tensor], anchors: int = 1) -> torch.Tensor:
    """Per scale ``[N, anchors * K, H, W]`` -> ``[N, anchors * H * W, K]``, then concatenated."""
    out = []
    for m in maps:
        n, _, h, w = m.shape
        out.append(m.view(n, anchors, -1, h * w).permute(0, 1, 3, 2).reshape(n, anchors * h * w,
                                                                             -1))
    return torch.cat(out, 1)


class YOLOv5(nn.Module):
    """``yolov5s.yaml`` (depth 0.33, width 0.50); other widths / depths by the same multiples."""

    def __init__(self, num_classes: int = 80, width: float = 0.5, depth: float = 0.33) -> None:
        super().__init__()
        c = [int(math.ceil(ch * width / 8) * 8) for ch in (64, 128, 256, 512, 1024)]
        n = [max(round(r * depth), 1) for r in (3, 6, 9, 3)]
        self.num_classes = num_classes
        self.b0 = Conv(3, c[0], 6, 2, 2)
        self.b1, self.b2 = Conv(c[0], c[1], 3, 2), C3(c[1], c[1], n[0])
        self.b3, self.b4 = Conv(c[1], c[2], 3, 2), C3(c[2], c[2], n[1])
        self.b5, self.b6 = Conv(c[2], c[3], 3, 2), C3(c[3], c[3], n[2])
        self.b7, self.b8 = Conv(c[3], c[4], 3, 2), C3(c[4], c[4], n[3])
        self.sppf = SPPF(c[4], c[4])
        self.h10, self.h13 = Conv(c[4], c[3]), C3(2 * c[3], c[3], n[0], False)
        self.h14, self.h17 = Conv(c[3], c[2]), C3(2 * c[2], c[2], n[0], False)
        self.h18, self.h20 = Conv(c[2], c[2], 3, 2), C3(2 * c[2], c[3], n[0], False)
        self.h21, self.h23 = Conv(c[3], c[3], 3, 2), C3(2 * c[3], c[4], n[0], False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        outputs = 5 + num_classes
        self.detect = nn.ModuleList(nn.Conv2d(ch, 3 * outputs, 1) for ch in (c[2], c[3], c[4]))
        for conv, stride in zip(self.detect, STRIDES, strict=True):
            # Ultralytics' prior: ~8 objects per 640 image, class probability ~0.6 / C
            b = conv.bias.view(3, -1)
            b.data[:, 4] += math.log(8 / (640 / stride) ** 2)
            b.data[:, 5:] += math.log(0.6 / (num_classes - 0.99))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.sppf(self.b8(self.b7(p4)))
        t10 = self.h10(p5)
        t14 = self.h14(self.h13(torch.cat([self.up(t10), p4], 1)))
        o3 = self.h17(torch.cat([self.up(t14), p3], 1))
        o4 = self.h20(torch.cat([self.h18(o3), t14], 1))
        o5 = self.h23(torch.cat([self.h21(o4), t10], 1))
        return _flatten([d(o) for d, o in zip(self.detect, (o3, o4, o5), strict=True)], 3)


class YOLOv8(nn.Module):
    """``yolov8n.yaml`` (depth 0.33, width 0.25, max channels 1024)."""

    def __init__(self, num_classes: int = 80, width: float = 0.25, depth: float = 0.33) -> None:
        super().__init__()
        c = [int(math.ceil(min(ch, 1024) * width / 8) * 8) for ch in (64, 128, 256, 512, 1024)]
        n = [max(round(r * depth), 1) for r in (3, 6, 6, 3)]
        self.num_classes = num_classes
        self.b0, self.b1 = Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2)
        self.b2 = C2f(c[1], c[1], n[0], True)
        self.b3, self.b4 = Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], n[1], True)
        self.b5, self.b6 = Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], n[2], True)
        self.b7, self.b8 = Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], n[3], True)
        self.sppf = SPPF(c[4], c[4])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(c[4] + c[3], c[3], n[0])
        self.h15 = C2f(c[3] + c[2], c[2], n[0])
        self.h16, self.h18 = Conv(c[2], c[2], 3, 2), C2f(c[2] + c[3], c[3], n[0])
        self.h19, self.h21 = Conv(c[3], c[3], 3, 2), C2f(c[3] + c[4], c[4], n[0])
        chans = (c[2], c[3], c[4])
        box_c, cls_c = max(16, chans[0] // 4, REG_MAX * 4), max(chans[0], min(num_classes, 100))
        self.box = nn.ModuleList(nn.Sequential(Conv(ch, box_c, 3), Conv(box_c, box_c, 3),
                                               nn.Conv2d(box_c, 4 * REG_MAX, 1)) for ch in chans)
        self.cls = nn.ModuleList(nn.Sequential(Conv(ch, cls_c, 3), Conv(cls_c, cls_c, 3),
                                               nn.Conv2d(cls_c, num_classes, 1)) for ch in chans)
        for box, cls, stride in zip(self.box, self.cls, STRIDES, strict=True):
            box[-1].bias.data[:] = 1.0  # Ultralytics' Detect.bias_init
            cls[-1].bias.data[:] = math.log(5 / num_classes / (640 / stride) ** 2)

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.sppf(self.b8(self.b7(p4)))
        t12 = self.h12(torch.cat([self.up(p5), p4], 1))
        o3 = self.h15(torch.cat([self.up(t12), p3], 1))
        o4 = self.h18(torch.cat([self.h16(o3), t12], 1))
        o5 = self.h21(torch.cat([self.h19(o4), p5], 1))
        maps = [torch.cat([b(o), c(o)], 1)
                for b, c, o in zip(self.box, self.cls, (o3, o4, o5), strict=True)]
        return _flatten(maps)


def yolov5s(num_classes: int = 80) -> YOLOv5:
    return YOLOv5(num_classes)


def yolov8n(num_classes: int = 80) -> YOLOv8:
    return YOLOv8(num_classes)


def detect_head(model: nn.Module) -> list[nn.Module]:
    """The head kept whole by every pruner: its output channels are the decoded layout."""
    if isinstance(model, YOLOv5):
        return list(model.detect)
    return [*model.box, *model.cls]


# ---- decode + NMS (outside the graph, shared by every workflow) -------------------------------
@cache
def _grid(height: int, width: int, anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell (x, y) and stride of every output row, in forward's order."""
    cells, strides = [], []
    for stride in STRIDES:
        gy, gx = np.meshgrid(np.arange(height // stride), np.arange(width // stride),
                             indexing="ij")
        xy = np.stack([gx, gy], -1).reshape(-1, 2).astype(np.float32)
        cells.append(np.tile(xy, (anchors, 1)))
        strides.append(np.full((len(xy) * anchors, 1), stride, np.float32))
    return np.concatenate(cells), np.concatenate(strides)


def _check_rows(raw: np.ndarray, rows: int, height: int, width: int) -> None:
    if raw.shape[-2] != rows:
        raise ValueError(f"detector output has {raw.shape[-2]} rows; a {height}x{width} input "
                         f"gives {rows} at strides {STRIDES}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_v5(raw: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, A, 5 + C]`` -> boxes ``[N, A, 4]`` (x1, y1, x2, y2 pixels) and scores ``[N, A, C]``
    (objectness x class probability), as YOLOv5's Detect: xy = (2 s - 0.5 + cell) * stride,
    wh = (2 s)^2 * anchor."""
    cells, strides = _grid(height, width, 3)
    _check_rows(raw, len(cells), height, width)
    anchors = np.concatenate([np.repeat(np.asarray(a, np.float32), (height // s) * (width // s),
                                        axis=0) for a, s in zip(V5_ANCHORS, STRIDES, strict=True)])
    t = _sigmoid(raw)
    centre = (t[..., :2] * 2 - 0.5 + cells) * strides
    size = (t[..., 2:4] * 2) ** 2 * anchors
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
    return boxes, t[..., 4:5] * t[..., 5:]


def decode_v8(raw: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, A, 64 + C]`` -> boxes and scores, as YOLOv8's Detect: each edge's distance from the
    cell centre is the expectation of a softmax over 16 bins (DFL), in strides."""
    cells, strides = _grid(height, width, 1)
    _check_rows(raw, len(cells), height, width)
    bins = raw[..., :4 * REG_MAX].reshape(*raw.shape[:-1], 4, REG_MAX)
    bins = np.exp(bins - bins.max(-1, keepdims=True))
    dist = (bins / bins.sum(-1, keepdims=True)) @ np.arange(REG_MAX, dtype=np.float32)
    centre = cells + 0.5
    boxes = np.concatenate([centre - dist[..., :2], centre + dist[..., 2:]], -1) * strides
    return boxes, _sigmoid(raw[..., 4 * REG_MAX:])


def _postprocess(decode, outputs: np.ndarray, image_shape: tuple[int, int],
                 conf_threshold: float, iou_threshold: float,
                 max_detections: int) -> list[np.ndarray]:
    raw = np.ascontiguousarray(outputs, dtype=np.float32)
    boxes, scores = decode(raw, *image_shape)
    return [select_detections(b, s, image_shape, conf_threshold, iou_threshold, max_detections)
            for b, s in zip(boxes, scores, strict=True)]


def postprocess_v5(outputs: np.ndarray, image_shape: tuple[int, int],
                   conf_threshold: float = CONF_THRESHOLD, iou_threshold: float = NMS_IOU,
                   max_detections: int = MAX_DETECTIONS) -> list[np.ndarray]:
    """Raw YOLOv5 outputs -> per image ``[k, 6]`` (x1, y1, x2, y2, score, class), NMS per class."""
    return _postprocess(decode_v5, outputs, image_shape, conf_threshold, iou_threshold,
                        max_detections)


def postprocess_v8(outputs: np.ndarray, image_shape: tuple[int, int],
                   conf_threshold: float = CONF_THRESHOLD, iou_threshold: float = NMS_IOU,
                   max_detections: int = MAX_DETECTIONS) -> list[np.ndarray]:
    """Raw YOLOv8 outputs -> per image ``[k, 6]`` (x1, y1, x2, y2, score, class), NMS per class."""
    return _postprocess(decode_v8, outputs, image_shape, conf_threshold, iou_threshold,
                        max_detections)
