"""The published checkpoints of the papers' models, loaded into the zoo's definitions.

The zoo's module trees carry the published names, so most files load as they are:

* torchvision's ResNet-18 / 50, MobileNetV2 and MobileNetV3-Large weights (``*.pth`` from
  download.pytorch.org: plain state dicts); its older files lack BatchNorm's
  ``num_batches_tracked`` counters, which ``load_state_dict`` would fill in for them (a
  version-1 BatchNorm entry), so they are filled here too (0: unused in eval);
* YOLOv5 v6.0-v7.0 (the ``ultralytics/yolov5`` repository's ``yolov5s.pt``): ``model.N...`` as
  the yaml's layer N, with ``model.24.anchors``;
* YOLOv8 (Ultralytics 8's ``yolov8n.pt``): the same, except two things the zoo holds otherwise,
  converted here as timm's ``checkpoint_filter_fn`` does: each C2f's ``cv1`` (one 1x1
  convolution to 2c, chunked in two in Ultralytics' ``forward``) is split into the zoo's
  halves ``cv0`` (the first c output channels) and ``cv1`` (the second), weights and BatchNorm
  alike, as torch-pruning's YOLOv8 example does; and the fixed DFL convolution
  (``model.22.dfl.conv.weight``, the bins 0..15) is checked and dropped (the decode applies it).

Ultralytics' ``.pt`` files are pickles of whole model objects, which ``torch.load(...,
weights_only=True)`` refuses, rightly: :data:`EXPORT` says the line that writes their state
dict, run once in the user's own Ultralytics (or yolov5) environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import UsageError
from . import detect
from .classify import BUILDERS

# every zoo model's builder, by name (the package re-exports it)
ZOO_BUILDERS = {**BUILDERS, "yolov5s": detect.yolov5s, "yolov8n": detect.yolov8n}

State = dict[str, torch.Tensor]

# The one line a user runs where the published code imports, to get a file this package reads.
EXPORT = {
    "yolov5s": (
        "in a clone of github.com/ultralytics/yolov5 (tag v7.0, its requirements installed), "
        "python -c \"import torch; torch.save(torch.load('yolov5s.pt', map_location='cpu', "
        "weights_only=False)['model'].float().state_dict(), 'yolov5s_state.pt')\""),
    "yolov8n": (
        "with the ultralytics package installed, python -c \"import torch; from ultralytics "
        "import YOLO; torch.save(YOLO('yolov8n.pt').model.float().state_dict(), "
        "'yolov8n_state.pt')\""),
}
TORCHVISION = ("torchvision's weights files are state dicts already: use the downloaded .pth "
               "as it is (docs/how-to/published-checkpoints.md lists them)")


def unwrap(state: dict) -> dict:
    """The state dict inside common wrappers: ``{"state_dict": ...}`` / ``{"model": ...}`` /
    ``{"ema": ...}`` holding one, and DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model", "ema"):
        inner = state.get(key) if len(state) <= 8 else None
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor)
                                                     for v in inner.values()):
            state = inner
            break
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def fill_batch_counters(state: State, want: State) -> State:
    """``num_batches_tracked`` (0) for each BatchNorm whose statistics the file has but whose
    counter it lacks, as ``BatchNorm._load_from_state_dict`` does for version-1 entries."""
    for key in want:
        if key.endswith(".num_batches_tracked") and key not in state:
            if key.removesuffix("num_batches_tracked") + "running_mean" in state:
                state[key] = torch.tensor(0, dtype=torch.long)
    return state


C2F_PARTS = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def split_c2f(state: State, want: State) -> State:
    """Each C2f's published ``cv1`` (2c outputs) into the zoo's ``cv0`` / ``cv1`` halves, at the
    file's own half (Ultralytics' ``chunk(2, 1)``); a file in the zoo's layout is left as is."""
    prefixes = [k.removesuffix("cv0.conv.weight") for k in want if k.endswith(".cv0.conv.weight")]
    for p in prefixes:
        if p + "cv0.conv.weight" in state or p + "cv1.conv.weight" not in state:
            continue
        full = {part: state[p + "cv1." + part] for part in C2F_PARTS if p + "cv1." + part in state}
        first = state.get(p + "m.0.cv1.conv.weight")  # the first bottleneck reads one half
        if (len(full) != len(C2F_PARTS) or first is None
                or full["conv.weight"].shape[0] != 2 * first.shape[1]):
            continue  # not a C2f's cv1 (YOLOv5's C3, say): the mismatch report names it
        half = full["conv.weight"].shape[0] // 2
        for part, tensor in full.items():
            state[p + "cv0." + part] = tensor[:half].clone()
            state[p + "cv1." + part] = tensor[half:].clone()
        counter = state.get(p + "cv1.bn.num_batches_tracked")
        if counter is not None:
            state[p + "cv0.bn.num_batches_tracked"] = counter.clone()
    return state


def drop_dfl(state: State, want: State) -> State:
    """Drop YOLOv8's fixed DFL convolution after checking it holds the bins 0..15."""
    for key in [k for k in state if k.endswith(".dfl.conv.weight") and k not in want]:
        bins = torch.arange(detect.REG_MAX, dtype=torch.float32).view(1, -1, 1, 1)
        value = state[key]
        if tuple(value.shape) == tuple(bins.shape) and torch.equal(value.float(), bins):
            del state[key]
    return state


def check_anchors(state: State, want: State, name: str, where: str) -> None:
    """A YOLOv5 checkpoint's anchors must be those the decode uses (COCO's k-means defaults)."""
    for key in [k for k in want if k.endswith(".anchors")]:
        got = state.get(key)
        if got is None or tuple(got.shape) != tuple(want[key].shape):
            continue  # reported with the other mismatches
        if not torch.allclose(got.float(), want[key].float(), rtol=1e-3, atol=1e-3):
            pixels = (got.float() * torch.tensor(detect.STRIDES).view(-1, 1, 1)).round()
            raise UsageError(
                f"model {name!r}: weights file {where} was trained with other anchors (pixels "
                f"{pixels.int().tolist()}, e.g. by YOLOv5's autoanchor on another dataset); "
                f"the zoo decodes with YOLOv5's COCO anchors {list(detect.V5_ANCHORS)}, so its "
                "boxes would be wrong: this checkpoint is not supported")


@dataclass(frozen=True)
class Published:
    """``ModelSpec.convert_weights`` of a zoo model: ``(state, model) -> state`` in the model's
    layout (timm's filter-function convention), plus what a user needs when a file does not
    fit: ``export`` (how to write a readable file) and :meth:`explain`."""

    name: str
    source: str  # who publishes the checkpoints, in words
    export: str
    steps: tuple[Callable[[State, State], State], ...] = ()

    def __call__(self, state: dict, model: nn.Module, where: str = "") -> State:
        state = unwrap(state)
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            return state  # the caller's "not a state_dict of tensors" error
        want = model.state_dict()
        for step in self.steps:
            state = step(state, want)
        if self.name == "yolov5s":
            check_anchors(state, want, self.name, where or "the weights file")
        return state

    def explain(self, state: State, model: nn.Module) -> str:
        """What the file is, when it does not fit: a family or size other than this model's,
        or the same model trained for another class count."""
        return describe(state, model, self.name)


def _shapes(state: State) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def head_classes(name: str, state: State) -> int | None:
    """The class count the head in ``state`` was trained for (None: no such head)."""
    keys = {"resnet18": "fc.weight", "resnet50": "fc.weight", "mobilenet_v2": "classifier.1.weight",
            "mobilenet_v3_large": "classifier.3.weight", "yolov8n": "model.22.cv3.0.2.weight",
            "yolov5s": "model.24.m.0.weight"}
    tensor = state.get(keys[name])
    if tensor is None:
        return None
    return tensor.shape[0] // 3 - 5 if name == "yolov5s" else tensor.shape[0]


# layouts outside the zoo that users will have, recognised by a key only they hold
OTHER_LAYOUTS = (
    ("model.24.cv2.0.0.conv.weight", "an Ultralytics 8 'YOLOv5u' checkpoint (yolov5su.pt: "
     "anchor-free head), not the anchor-based YOLOv5 v6.0-v7.0 of the zoo's yolov5s: use "
     "yolov5s.pt of the yolov5 repository's v7.0 release"),
    ("model.0.conv.conv.weight", "a YOLOv5 checkpoint from before v6.0 (Focus stem): the zoo's "
     "yolov5s is v6.0-v7.0 (6x6 stem convolution); use yolov5s.pt of the v7.0 release"),
    ("model.23.cv3.0.0.0.conv.weight", "a YOLO11 checkpoint (C3k2 blocks, depthwise class "
     "head), not YOLOv8"),
    ("model.10.m.0.attn.qkv.conv.weight", "a YOLO11 checkpoint (C2PSA attention), not YOLOv8"),
)


def describe(state: State, model: nn.Module, name: str) -> str:
    """One sentence on what ``state`` is, for the mismatch error (empty when nothing is known)."""
    for key, what in OTHER_LAYOUTS:
        if key in state:
            return f"the file looks like {what}"
    want = _shapes(model.state_dict())
    got = _shapes(state)
    if set(got) == set(want):
        theirs, ours = head_classes(name, state), head_classes(name, model.state_dict())
        if theirs is not None and theirs != ours:
            return (f"the file is a {name} trained for {theirs} classes, the model is built for "
                    f"{ours}: score it on a dataset with those {theirs} classes (for ImageNet "
                    "or COCO checkpoints see the dataset option classes = \"imagenet\" / "
                    "\"coco80\" in docs/how-to/published-checkpoints.md)")
        return (f"the file has {name}'s layers with other widths: another size of the same "
                "family (e.g. YOLOv5n/m for yolov5s, YOLOv8s for yolov8n)")
    for other, builder in ZOO_BUILDERS.items():
        if other == name:
            continue
        keys = set(builder().state_dict())
        if other == "yolov8n":  # a published YOLOv8 file, before the C2f split
            keys = {k.replace(".cv0.", ".cv1.") for k in keys} | {"model.22.dfl.conv.weight"}
        if set(got) == keys or set(got) == set(builder().state_dict()):
            return f"the file is a {other} checkpoint, not {name}"
    return ""
