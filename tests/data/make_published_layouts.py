"""Writes ``published_layouts.json``: the state-dict layouts (keys, shapes, dtypes in order) of
the published model definitions, and their outputs for the deterministic values of
``tests/published.py`` on a fixed 64 px input. Not run by the tests: they read its output.

The definitions are the publishers' own code, read from their wheels (not installed):

    pip download --no-deps torchvision==0.24.1 ultralytics==8.4.190 yolov5==7.0.14 -d SRC
    (cd SRC && for f in *.whl; do mkdir -p ${f%%-*} && unzip -qo $f -d ${f%%-*}; done)
    python tests/data/make_published_layouts.py SRC

* torchvision 0.24.1: ``models/resnet.py`` (resnet18, resnet50), ``models/mobilenetv2.py``,
  ``models/mobilenetv3.py`` (mobilenet_v3_large): the definitions of the IMAGENET1K weights;
* yolov5 7.0.14 (PyPI packaging of github.com/ultralytics/yolov5 v7.0): ``models/yolo.py`` with
  ``models/yolov5s.yaml``: the definition of the v7.0 release's anchor-based ``yolov5s.pt``;
* ultralytics 8.4.190: ``nn/tasks.py`` with ``cfg/models/v8/yolov8.yaml`` scale n: the
  definition of ``yolov8n.pt``.

torchvision's compiled operators do not load against this machine's torch, and Ultralytics /
YOLOv5 import modules that are not installed here (OpenCV, pandas, ...); none of them is used by
the model definitions, so they are stubbed below. Only the layers' own code runs.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.published import SIZE, published_state, reference_input, sample_rows  # noqa: E402

SOURCES = {
    "resnet18": "torchvision 0.24.1, torchvision/models/resnet.py: resnet18()",
    "resnet50": "torchvision 0.24.1, torchvision/models/resnet.py: resnet50()",
    "mobilenet_v2": "torchvision 0.24.1, torchvision/models/mobilenetv2.py: mobilenet_v2()",
    "mobilenet_v3_large": "torchvision 0.24.1, torchvision/models/mobilenetv3.py: "
                          "mobilenet_v3_large()",
    "yolov5s": "yolov5 7.0.14 (ultralytics/yolov5 v7.0), yolov5/models/yolo.py: "
               "DetectionModel('models/yolov5s.yaml')",
    "yolov8n": "ultralytics 8.4.190, ultralytics/nn/tasks.py: DetectionModel('yolov8n.yaml') "
               "(cfg/models/v8/yolov8.yaml, scale n)",
}


# layouts users have that the zoo does not load (keys and shapes only): the mismatch messages
OTHERS = {
    "yolov5su": "ultralytics 8.4.190: DetectionModel('yolov5su.yaml') (cfg/models/v5/yolov5.yaml, "
                "scale s: Ultralytics 8's anchor-free YOLOv5s, yolov5su.pt)",
    "yolov8s": "ultralytics 8.4.190: DetectionModel('yolov8s.yaml') (cfg/models/v8/yolov8.yaml, "
               "scale s)",
    "yolo11n": "ultralytics 8.4.190: DetectionModel('yolo11n.yaml') (cfg/models/11/yolo11.yaml, "
               "scale n)",
}


class _Stub(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return mock.MagicMock()


def _stub(name: str) -> _Stub:
    module = _Stub(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__path__ = []
    sys.modules[name] = module
    return module


def import_published(src: Path) -> None:
    import os
    import tempfile

    # Ultralytics writes a settings file on import: into a scratch folder, not the home folder
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))
    sys.path[:0] = [str(src / "torchvision"), str(src / "ultralytics"), str(src / "yolov5")]
    _stub("torchvision._meta_registrations")  # registers compiled ops this torch lacks
    _stub("cv2").__version__ = "4.10.0"
    for name in ("pandas", "seaborn", "tqdm", "requests", "thop", "pkg_resources"):
        try:
            __import__(name)
        except ImportError:
            _stub(name)
    if isinstance(sys.modules["pkg_resources"], _Stub):
        from packaging.version import parse

        sys.modules["pkg_resources"].parse_version = parse


def build(name: str, src: Path) -> torch.nn.Module:
    if name == "yolov5s":
        from yolov5.models.yolo import DetectionModel

        return DetectionModel(str(src / "yolov5" / "yolov5" / "models" / "yolov5s.yaml"))
    if name == "yolov8n":
        from ultralytics.nn.tasks import DetectionModel

        return DetectionModel("yolov8n.yaml", verbose=False)
    import torchvision.models

    return getattr(torchvision.models, name)()


def _round(values: torch.Tensor) -> list:
    return [float(f"{v:.6g}") for v in values.flatten().tolist()]


def outputs(name: str, model: torch.nn.Module) -> dict:
    x = reference_input()
    with torch.no_grad():
        out = model.eval()(x)
    if name not in ("yolov5s", "yolov8n"):
        cols = sample_rows(out.shape[1], 40)
        return {"columns": cols, "logits": [_round(row[cols]) for row in out],
                "sum": _round(out.sum(1)), "abs_sum": _round(out.abs().sum(1))}
    if name == "yolov5s":  # (decoded [N, A, 85], raw per scale [N, 3, H, W, 85])
        decoded, maps = out
        raw = torch.cat([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], 1)
        xywh, scores = decoded[..., :4], decoded[..., 4:5] * decoded[..., 5:]
    else:  # (decoded [N, 4 + C, A], {"boxes": [N, 64, A], "scores": [N, C, A]})
        decoded, preds = out
        raw = torch.cat([preds["boxes"], preds["scores"]], 1).permute(0, 2, 1)
        decoded = decoded.permute(0, 2, 1)
        xywh, scores = decoded[..., :4], decoded[..., 4:]
    boxes = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)
    rows = sample_rows(raw.shape[1])
    best, cls = scores.max(-1)
    return {"rows": rows, "shape": list(raw.shape),
            "raw": [[_round(r[i]) for i in rows] for r in raw],
            "raw_sum": _round(raw.sum((1, 2))), "raw_abs_sum": _round(raw.abs().sum((1, 2))),
            "boxes": [[_round(b[i]) for i in rows] for b in boxes],
            "best_score": [_round(s[rows]) for s in best],
            "best_class": [c[rows].tolist() for c in cls]}


def main(src: Path) -> None:
    import_published(src)
    out: dict = {"input": f"torch.rand(2, 3, {SIZE}, {SIZE}) from torch.Generator seed 0",
                 "models": {}}
    for name, source in SOURCES.items():
        model = build(name, src)
        state = model.state_dict()
        layout = {"source": source, "params": sum(p.numel() for p in model.parameters()),
                  "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")]
                           for k, v in state.items()],
                  "fixed": {k: v.tolist() for k, v in state.items()
                            if k.endswith((".anchors", ".dfl.conv.weight"))}}
        out["models"][name] = layout
        model.load_state_dict(published_state_from(layout), strict=True)
        layout["outputs"] = outputs(name, model)
    from ultralytics.nn.tasks import DetectionModel

    out["others"] = {}
    for name, source in OTHERS.items():
        state = DetectionModel(f"{name}.yaml", verbose=False).state_dict()
        out["others"][name] = {"source": source,
                               "keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")]
                                        for k, v in state.items()],
                               "fixed": {k: v.tolist() for k, v in state.items()
                                         if k.endswith(".dfl.conv.weight")}}
    path = Path(__file__).with_name("published_layouts.json")
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path}")


def published_state_from(layout: dict) -> dict:
    import tests.published as published

    published.layouts.cache_clear()
    original = published.layouts
    published.layouts = lambda: {"models": {"_": layout}, "others": {}}
    try:
        return published_state("_")
    finally:
        published.layouts = original


if __name__ == "__main__":
    main(Path(sys.argv[1]))
