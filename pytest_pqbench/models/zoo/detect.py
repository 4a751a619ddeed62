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
from functools import cache, partial

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
    them, :func:`.checkpoints.split_c2f`), as torch-pruning's YOLOv8 example does: a ``chunk`` /
    slice at a fixed channel count in ``forward`` would break once pruning changes that count."""

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


class Concat(nn.Module):
    """Ultralytics' ``Concat`` (no parameters): keeps the layer indices, and so the state-dict
    names ``model.N...``, those of ``yolov5s.yaml`` / ``yolov8n.yaml``."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class DetectV5(nn.Module):
    """YOLOv5's ``Detect``: one 1x1 convolution per scale (``m.0``, ``m.1``, ``m.2``) and the
    ``anchors`` buffer ``[3, 3, 2]`` in units of each scale's stride, as YOLOv5 v6.0+ keeps it
    (a checkpoint's anchors are checked against the decode's :data:`V5_ANCHORS` on load)."""

    def __init__(self, num_classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        grid_units = torch.tensor(V5_ANCHORS, dtype=torch.float32) / torch.tensor(
            STRIDES, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchors", grid_units)
        outputs = 5 + num_classes
        self.m = nn.ModuleList(nn.Conv2d(ch, 3 * outputs, 1) for ch in channels)
        for conv, stride in zip(self.m, STRIDES, strict=True):
            # Ultralytics' prior: ~8 objects per 640 image, class probability ~0.6 / C
            b = conv.bias.view(3, -1)
            b.data[:, 4] += math.log(8 / (640 / stride) ** 2)
            b.data[:, 5:] += math.log(0.6 / (num_classes - 0.99))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return _flatten([m(x) for m, x in zip(self.m, xs, strict=True)], 3)


class DetectV8(nn.Module):
    """YOLOv8's ``Detect``: box branches ``cv2.i`` (4 x 16 DFL bins) and class branches
    ``cv3.i`` per scale. Its fixed DFL convolution (``dfl.conv.weight`` = 0..15) is not held:
    the DFL expectation is part of :func:`decode_v8`, outside the graph."""

    def __init__(self, num_classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        box_c = max(16, channels[0] // 4, REG_MAX * 4)
        cls_c = max(channels[0], min(num_classes, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(ch, box_c, 3), Conv(box_c, box_c, 3),
                                               nn.Conv2d(box_c, 4 * REG_MAX, 1)) for ch in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(ch, cls_c, 3), Conv(cls_c, cls_c, 3),
                                               nn.Conv2d(cls_c, num_classes, 1))
                                 for ch in channels)
        for box, cls, stride in zip(self.cv2, self.cv3, STRIDES, strict=True):
            box[-1].bias.data[:] = 1.0  # Ultralytics' Detect.bias_init
            cls[-1].bias.data[:] = math.log(5 / num_classes / (640 / stride) ** 2)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return _flatten([torch.cat([b(x), c(x)], 1)
                         for b, c, x in zip(self.cv2, self.cv3, xs, strict=True)])


class YOLOv5(nn.Module):
    """``yolov5s.yaml`` (depth 0.33, width 0.50); other widths / depths by the same multiples.

    ``model.N`` is layer N of the yaml (11 / 15 upsample, 12 / 16 / 19 / 22 concat, 24 Detect):
    the state dict of YOLOv5 v6.0-v7.0's ``yolov5s.pt`` loads as it is."""

    def __init__(self, num_classes: int = 80, width: float = 0.5, depth: float = 0.33) -> None:
        super().__init__()
        c = [int(math.ceil(ch * width / 8) * 8) for ch in (64, 128, 256, 512, 1024)]
        n = [max(round(r * depth), 1) for r in (3, 6, 9, 3)]
        self.num_classes = num_classes
        up = partial(nn.Upsample, scale_factor=2, mode="nearest")
        self.model = nn.ModuleList([
            Conv(3, c[0], 6, 2, 2), Conv(c[0], c[1], 3, 2), C3(c[1], c[1], n[0]),  # 0-2
            Conv(c[1], c[2], 3, 2), C3(c[2], c[2], n[1]),  # 3-4 (P3/8)
            Conv(c[2], c[3], 3, 2), C3(c[3], c[3], n[2]),  # 5-6 (P4/16)
            Conv(c[3], c[4], 3, 2), C3(c[4], c[4], n[3]), SPPF(c[4], c[4]),  # 7-9 (P5/32)
            Conv(c[4], c[3]), up(), Concat(), C3(2 * c[3], c[3], n[0], False),  # 10-13
            Conv(c[3], c[2]), up(), Concat(), C3(2 * c[2], c[2], n[0], False),  # 14-17
            Conv(c[2], c[2], 3, 2), Concat(), C3(2 * c[2], c[3], n[0], False),  # 18-20
            Conv(c[3], c[3], 3, 2), Concat(), C3(2 * c[3], c[4], n[0], False),  # 21-23
            DetectV5(num_classes, (c[2], c[3], c[4]))])  # 24

    def forward(self, x):
        m = self.model
        p3 = m[4](m[3](m[2](m[1](m[0](x)))))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        t10 = m[10](p5)
        t14 = m[14](m[13](m[12]([m[11](t10), p4])))
        o17 = m[17](m[16]([m[15](t14), p3]))
        o20 = m[20](m[19]([m[18](o17), t14]))
        o23 = m[23](m[22]([m[21](o20), t10]))
        return m[24]([o17, o20, o23])


class YOLOv8(nn.Module):
    """``yolov8n.yaml`` (depth 0.33, width 0.25, max channels 1024).

    ``model.N`` is layer N of the yaml (10 / 13 upsample, 11 / 14 / 17 / 20 concat, 22 Detect);
    an Ultralytics state dict loads once its C2f ``cv1`` weights are split into the halves
    ``cv0`` / ``cv1`` (:mod:`.checkpoints` does it)."""

    def __init__(self, num_classes: int = 80, width: float = 0.25, depth: float = 0.33) -> None:
        super().__init__()
        c = [int(math.ceil(min(ch, 1024) * width / 8) * 8) for ch in (64, 128, 256, 512, 1024)]
        n = [max(round(r * depth), 1) for r in (3, 6, 6, 3)]
        self.num_classes = num_classes
        up = partial(nn.Upsample, scale_factor=2, mode="nearest")
        self.model = nn.ModuleList([
            Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], n[0], True),  # 0-2
            Conv(c[1], c[2], 3, 2), C2f(c[2], c[2], n[1], True),  # 3-4 (P3/8)
            Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], n[2], True),  # 5-6 (P4/16)
            Conv(c[3], c[4], 3, 2), C2f(c[4], c[4], n[3], True), SPPF(c[4], c[4]),  # 7-9
            up(), Concat(), C2f(c[4] + c[3], c[3], n[0]),  # 10-12
            up(), Concat(), C2f(c[3] + c[2], c[2], n[0]),  # 13-15
            Conv(c[2], c[2], 3, 2), Concat(), C2f(c[2] + c[3], c[3], n[0]),  # 16-18
            Conv(c[3], c[3], 3, 2), Concat(), C2f(c[3] + c[4], c[4], n[0]),  # 19-21
            DetectV8(num_classes, (c[2], c[3], c[4]))])  # 22

    def forward(self, x):
        m = self.model
        p3 = m[4](m[3](m[2](m[1](m[0](x)))))
        p4 = m[6](m[5](p3))
        p5 = m[9](m[8](m[7](p4)))
        t12 = m[12](m[11]([m[10](p5), p4]))
        o15 = m[15](m[14]([m[13](t12), p3]))
        o18 = m[18](m[17]([m[16](o15), t12]))
        o21 = m[21](m[20]([m[19](o18), p5]))
        return m[22]([o15, o18, o21])


def yolov5s(num_classes: int = 80) -> YOLOv5:
    return YOLOv5(num_classes)


def yolov8n(num_classes: int = 80) -> YOLOv8:
    return YOLOv8(num_classes)


def detect_head(model: nn.Module) -> list[nn.Module]:
    """The head kept whole by every pruner: its output channels are the decoded layout."""
    head = model.model[-1]
    if isinstance(head, DetectV5):
        return list(head.m)
    return [*head.cv2, *head.cv3]


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
