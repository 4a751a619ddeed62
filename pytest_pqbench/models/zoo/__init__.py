"""The source papers' own models: YOLOv5s, YOLOv8n, ResNet-18 / 50, MobileNetV2 / V3-Large.

Registered as model specs at their reference input sizes (224 px classifiers, 640 px detectors),
outside the default suite. ``--pqbench-input-size`` / ``input_size`` in ``[tool.pqbench]`` times
them (or any model) at other sizes; the generated datasets are then rendered at that size, with
split sizes scaled down so that a 640 px run stays within memory.

Weights: ``--pqbench-weights MODEL=PATH`` (or a spec replaced with ``weights=``) loads a published
checkpoint (torchvision's, Ultralytics'; :mod:`.checkpoints` converts where the zoo holds a layer
otherwise; docs/how-to/published-checkpoints.md says which files) and the model is measured for
accuracy as any other. Without weights these models are NOT trained here: one training step on this
2-core CPU took 1.1-8 s for 64 images at 64 px (ResNet-18 3.1 s, ResNet-50 8.0 s, MobileNetV2 7.2 s,
MobileNetV3-Large 1.1 s, measured under shared load), so reaching a meaningful accuracy would take
many minutes per model and size. They get their BatchNorm statistics from 32 training images (so
activations, and INT8 calibration, see realistic ranges) and their accuracy is recorded as "not
measured"; latency, MACs, params and size are real either way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import UsageError
from ..base import BATCHNORM_TYPES, ModelSpec, register_model
from . import checkpoints as ck
from .checkpoints import ZOO_BUILDERS
from .classify import BUILDERS, classifier_head
from .detect import detect_head, postprocess_v5, postprocess_v8, yolov5s, yolov8n

if TYPE_CHECKING:
    from ...datasets import Dataset

NOT_MEASURED = "not measured"
BN_IMAGES = 32  # training images whose statistics the untrained models' BatchNorm layers take
UNTRAINED_PARITY = 1.0
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@torch.no_grad()
def settle_batchnorm(model: nn.Module, dataset: Dataset, seed: int = 0, images: int = BN_IMAGES,
                     batch_size: int = 8, **recovery: Any) -> dict[str, Any]:
    """The zoo's "trainer" without weights: no gradient step, only BatchNorm running statistics
    re-estimated (cumulative average) on ``images`` training images. Accuracy: not measured.

    As the recovery trainer of a pruned copy (``recovery``: epochs, lr, teacher... ignored) it
    re-estimates the pruned network's statistics the same way: fine-tuning a model that was
    never trained would recover nothing."""
    bns = [m for m in model.modules() if isinstance(m, BATCHNORM_TYPES)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over every batch seen
    model.train()
    x = torch.from_numpy(dataset.train.images[:images])
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size])
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.eval()
    return {"trained": False, "accuracy": NOT_MEASURED, "bn_statistics_images": len(x),
            "epochs": 0}


def accuracy_not_measured(train_info: dict[str, Any]) -> bool:
    """True for an untrained zoo model: its accuracy is "not measured", never a floor pass."""
    return train_info.get("accuracy") == NOT_MEASURED


def parity_tolerance(train_info: dict[str, Any], tolerance: float) -> float:
    """The engine-vs-eager parity bound for a model: an untrained zoo model's outputs are noise
    with no dominant value, so reduced precision (bound >= 0.05) is held to
    ``UNTRAINED_PARITY`` (error as large as the outputs themselves) instead: INT8 measured
    0.14-0.74 on these models at 64-128 px. FP32 keeps its bound. The error is recorded either
    way (``parity_error``)."""
    if accuracy_not_measured(train_info) and tolerance >= 0.05:
        return max(tolerance, UNTRAINED_PARITY)
    return tolerance


# ---- input size ---------------------------------------------------------------------------------
def spec_at_size(spec: ModelSpec, size: int) -> ModelSpec:
    """``spec`` with a square ``size`` x ``size`` input (0 or its own size: ``spec`` itself)."""
    if not size or spec.input_shape[1:] == (size, size):
        return spec
    return replace(spec, input_shape=(spec.input_shape[0], size, size))


def check_size(spec: ModelSpec, size: int) -> None:
    stride = 32 if spec.task == "detect" else 1  # a detector's grids need whole cells
    if size < 32 or size % stride:
        raise UsageError(f"input size {size} for model {spec.name!r}: must be >= 32 pixels"
                         + (" and a multiple of 32 (the detector's largest stride)"
                            if stride > 1 else ""))


def input_sizes(tokens: list[str], models: list[str]) -> dict[str, list[int]]:
    """The ``input_size`` setting -> sizes per selected model (0: the model's default).

    A token is ``PIXELS`` (every selected model) or ``MODEL=PIXELS`` (that model, and then only
    its own tokens count); ``320,640`` times each model at both sizes."""
    from ..base import get_spec

    common: list[int] = []
    own: dict[str, list[int]] = {}
    for token in tokens:
        name, _, value = str(token).rpartition("=")
        name = name.strip()
        try:
            size = int(value)
        except ValueError:
            raise UsageError(f"input size {token!r}: expected PIXELS or MODEL=PIXELS, e.g. 640 "
                             "or yolov5s=320") from None
        if name and name not in models:
            raise UsageError(f"input size {token!r}: model {name!r} is not selected; selected "
                             f"models: {', '.join(models)}")
        for model in [name] if name else models:
            check_size(get_spec(model), size)
        (own.setdefault(name, []) if name else common).append(size)
    out = {}
    for model in models:
        sizes = own.get(model) or common or [0]
        default = get_spec(model).input_shape[-1]
        out[model] = list(dict.fromkeys(0 if s == default else s for s in sizes))
    return out


def generated_options(spec: ModelSpec, registered: ModelSpec) -> dict[str, Any]:
    """Options for a generated dataset (``shapes`` / ``scenes``) read at ``spec``'s input size:
    none for a built-in model at its own size; for the zoo, smaller splits as images grow
    (a 640 px scenes image is 4.9 MB in float32: the default 3000 training images would be
    14 GB)."""
    size = spec.input_shape[-1]
    if spec.name not in ZOO:
        return {} if spec.input_shape == registered.input_shape else {"size": size}
    scale = (128 / size) ** 2
    return {"size": size, "train": BN_IMAGES,
            "evaluation": int(min(1024, max(32, 1024 * scale / 4))),
            "calibration": int(min(256, max(32, 256 * scale)))}


# ---- registration -------------------------------------------------------------------------------
ZOO: dict[str, str] = {}  # name -> the published figures its definition reproduces


def _register(name: str, builder: Any, task: str, size: int, published: str,
              description: str) -> None:
    detect = task == "detect"
    steps = {"yolov8n": (ck.split_c2f, ck.drop_dfl)}.get(name, (ck.fill_batch_counters,))
    source = {"yolov5s": "YOLOv5 v6.0-v7.0", "yolov8n": "Ultralytics 8"}.get(name, "torchvision")
    head = detect_head if detect else classifier_head
    post = None
    if detect:
        post = postprocess_v5 if name == "yolov5s" else postprocess_v8
    ZOO[name] = published
    register_model(ModelSpec(
        name=name, task=task, input_shape=(3, size, size), builder=builder,
        default_dataset="scenes" if detect else "shapes",
        trainer=settle_batchnorm, min_accuracy=0.0, max_drop=0.05, deadline_ms=33.3,
        ignored_layers=head, postprocess=post, description=description,
        convert_weights=ck.Published(name, source, ck.EXPORT.get(name, ck.TORCHVISION), steps),
        mean=(0.0, 0.0, 0.0) if detect else IMAGENET_MEAN,
        std=(1.0, 1.0, 1.0) if detect else IMAGENET_STD))


_register("yolov5s", yolov5s, "detect", 640, "7.2 M params, 16.5 GFLOPs (= 2 x MACs) at 640",
          "YOLOv5s v6+ (C3, SPPF, SiLU, PAN, anchors at strides 8/16/32), 000's model")
_register("yolov8n", yolov8n, "detect", 640, "3.2 M params, 8.7 GFLOPs (= 2 x MACs) at 640",
          "YOLOv8n (C2f, SPPF, anchor-free decoupled DFL head at strides 8/16/32), 003's family")
_register("resnet18", BUILDERS["resnet18"], "classify", 224, "11.7 M params, 1.8 GMACs at 224",
          "ResNet-18 (basic blocks, residual adds), 001's model")
_register("resnet50", BUILDERS["resnet50"], "classify", 224, "25.6 M params, 4.1 GMACs at 224",
          "ResNet-50 v1.5 (bottlenecks, residual adds), 001's model")
_register("mobilenet_v2", BUILDERS["mobilenet_v2"], "classify", 224,
          "3.5 M params, 300 MMACs at 224",
          "MobileNetV2 (inverted residuals, depthwise, ReLU6), 001's model")
_register("mobilenet_v3_large", BUILDERS["mobilenet_v3_large"], "classify", 224,
          "5.5 M params, 220 MMACs at 224",
          "MobileNetV3-Large (depthwise, squeeze-excite, hardswish), 001's model")

__all__ = ["NOT_MEASURED", "ZOO", "ZOO_BUILDERS", "accuracy_not_measured", "generated_options",
           "input_sizes", "parity_tolerance", "settle_batchnorm", "spec_at_size"]
