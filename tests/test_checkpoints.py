"""Published checkpoints into the papers' models (issue 26): the publishers' state-dict layouts
load strict, reproduce the publishers' own outputs, round-trip through a weights file; wrong
files are one clear message; class indices mean what the checkpoints mean (ImageNet, COCO).

No weights can be downloaded here: ``tests/published.py`` fills the published layouts
(``tests/data/published_layouts.json``, written from torchvision 0.24.1's, YOLOv5 v7.0's and
Ultralytics 8.4.190's own model definitions by ``tests/data/make_published_layouts.py``) with
deterministic values, and that script recorded the publishers' outputs for those values.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_pqbench.datasets.classes import COCO80_IDS, COCO80_NAMES, coco80_to_coco91, imagenet
from pytest_pqbench.datasets.disk import coco_dataset, image_folder_dataset
from pytest_pqbench.errors import DatasetError, UsageError
from pytest_pqbench.models import get_spec
from pytest_pqbench.models.base import load_weights
from pytest_pqbench.models.zoo import ZOO, detect
from tests.conftest import SMOKE
from tests.published import layouts, published_state, reference_input

CLASSES = {"resnet18": 1000, "resnet50": 1000, "mobilenet_v2": 1000, "mobilenet_v3_large": 1000,
           "yolov5s": 80, "yolov8n": 80}


def build(name: str, classes: int | None = None) -> torch.nn.Module:
    return get_spec(name).builder(classes or CLASSES[name]).eval()


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def converted(name: str, state: dict, model: torch.nn.Module) -> dict:
    return get_spec(name).convert_weights(state, model)


# ---- the published layouts load strict ---------------------------------------------------------
def test_layouts_cover_every_zoo_model_with_the_published_parameter_counts():
    models = layouts()["models"]
    assert set(models) == set(ZOO)
    # the publishers' own summaries (torchvision's weights tables, YOLOv5 / Ultralytics yaml)
    published = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenet_v2": 3_504_872,
                 "mobilenet_v3_large": 5_483_032, "yolov5s": 7_235_389, "yolov8n": 3_157_200}
    assert {n: m["params"] for n, m in models.items()} == published


@pytest.mark.parametrize("name", [n for n in CLASSES if n != "yolov8n"])
def test_module_tree_is_the_published_one(name):
    """torchvision's and YOLOv5's names, shapes and order: their state dict loads as it is."""
    layout = layouts()["models"][name]
    model = build(name)
    assert [[k, list(s), str(v.dtype).removeprefix("torch.")] for (k, s), v in
            zip(shapes(model.state_dict()).items(), model.state_dict().values(),
                strict=True)] == layout["keys"]
    model.load_state_dict(published_state(name), strict=True)


def test_yolov8n_differs_only_by_the_c2f_halves_and_the_dfl_bins():
    published = shapes(published_state("yolov8n"))
    ours = shapes(build("yolov8n").state_dict())
    c2f = sorted({k.split(".cv0.")[0] for k in ours if ".cv0." in k},
                 key=lambda p: int(p.split(".")[1]))
    assert c2f == [f"model.{i}" for i in (2, 4, 6, 8, 12, 15, 18, 21)]  # the yaml's C2f layers
    assert set(published) - set(ours) == {"model.22.dfl.conv.weight"}
    assert set(ours) - set(published) == {f"{p}.cv0.{part}" for p in c2f for part in (
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked")}
    for p in c2f:  # Ultralytics' cv1 has 2c outputs; the zoo's two halves c each
        assert published[f"{p}.cv1.conv.weight"][0] == 2 * ours[f"{p}.cv1.conv.weight"][0]


@pytest.mark.parametrize("name", list(CLASSES))
def test_published_state_dict_loads_strict_after_conversion(name):
    model = build(name)
    state = converted(name, published_state(name), model)
    model.load_state_dict(state, strict=True)
    if name == "yolov8n":  # the split: first half to cv0, second to cv1, BN alike
        full = published_state(name)["model.2.cv1.bn.running_mean"]
        c = len(full) // 2
        assert torch.equal(model.model[2].cv0.bn.running_mean, full[:c])
        assert torch.equal(model.model[2].cv1.bn.running_mean, full[c:])


# ---- the publishers' outputs -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CLASSES))
def test_outputs_are_the_publishers_own(name):
    """The zoo model holding a published-layout state dict computes what torchvision's /
    YOLOv5's / Ultralytics' own model computed with it (recorded by the generator script);
    for the detectors the decode also gives Ultralytics' boxes and scores."""
    model = build(name)
    model.load_state_dict(converted(name, published_state(name), model), strict=True)
    ref = layouts()["models"][name]["outputs"]
    with torch.no_grad():
        out = model(reference_input()).numpy()
    if "logits" in ref:
        got = out[:, ref["columns"]]
        np.testing.assert_allclose(got, ref["logits"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.sum(1), ref["sum"], rtol=1e-4, atol=1e-3)
        return
    assert list(out.shape) == ref["shape"]
    rows = ref["rows"]
    np.testing.assert_allclose(out[:, rows], ref["raw"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.abs(out).sum((1, 2)), ref["raw_abs_sum"], rtol=1e-4)
    decode = detect.decode_v5 if name == "yolov5s" else detect.decode_v8
    boxes, scores = decode(out, *out_size(ref))
    np.testing.assert_allclose(boxes[:, rows], ref["boxes"], atol=2e-3)  # pixels
    np.testing.assert_allclose(scores[:, rows].max(-1), ref["best_score"], rtol=1e-4, atol=1e-6)
    assert scores[:, rows].argmax(-1).tolist() == ref["best_class"]


def out_size(ref: dict) -> tuple[int, int]:
    from tests.published import SIZE

    return SIZE, SIZE


# ---- through a weights file ------------------------------------------------------------------
def spec_with(name: str, path) -> object:
    return replace(get_spec(name), weights=str(path))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large", "yolov5s", "yolov8n"])
def test_published_file_round_trips_to_identical_outputs(name, tmp_path):
    """A file written in the published layout, read by the loader every run uses
    (weights_only=True), gives outputs identical to the state loaded in memory."""
    path = tmp_path / f"{name}.pt"
    torch.save(published_state(name), path)
    from_file, in_memory = build(name), build(name)
    assert load_weights(spec_with(name, path), from_file) == path
    in_memory.load_state_dict(converted(name, published_state(name), in_memory), strict=True)
    x = reference_input()
    with torch.no_grad():
        assert torch.equal(from_file(x), in_memory(x))
    # and the zoo's own state dict (the layout the artefact cache writes) loads unchanged
    again = build(name)
    torch.save(from_file.state_dict(), tmp_path / "zoo.pt")
    load_weights(spec_with(name, tmp_path / "zoo.pt"), again)
    with torch.no_grad():
        assert torch.equal(again(x), in_memory(x))


def test_torchvision_files_without_batchnorm_counters_load(tmp_path):
    """torchvision's older weight files have no num_batches_tracked (BatchNorm version 1)."""
    state = {k: v for k, v in published_state("resnet50").items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "resnet50-0676ba61.pth")
    model = build("resnet50")
    load_weights(spec_with("resnet50", tmp_path / "resnet50-0676ba61.pth"), model)
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_wrapped_state_dicts_are_unwrapped(tmp_path):
    state = published_state("mobilenet_v2")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90},
               tmp_path / "ckpt.pth")
    model = build("mobilenet_v2")
    load_weights(spec_with("mobilenet_v2", tmp_path / "ckpt.pth"), model)
    assert torch.equal(model.classifier[1].bias, state["classifier.1.bias"])


# ---- a wrong checkpoint is one clear message ----------------------------------------------------
def load_error(name: str, state: dict, tmp_path, classes: int | None = None) -> str:
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(UsageError) as info:
        load_weights(spec_with(name, path), build(name, classes), "the test's classes")
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize(("name", "file", "says"), [
    ("resnet18", "resnet50", "the file is a resnet50 checkpoint, not resnet18"),
    ("mobilenet_v2", "mobilenet_v3_large", "the file is a mobilenet_v3_large checkpoint"),
    ("yolov8n", "yolov5s", "the file is a yolov5s checkpoint, not yolov8n"),
    ("yolov5s", "yolov8n", "the file is a yolov8n checkpoint, not yolov5s"),
    ("yolov5s", "yolov5su", "anchor-free head"),
    ("yolov8n", "yolo11n", "YOLO11"),
    ("yolov8n", "yolov8s", "another size of the same family"),
])
def test_other_model_is_named(name, file, says, tmp_path):
    message = load_error(name, published_state(file), tmp_path)
    assert says in message and "does not fit" in message


@pytest.mark.parametrize(("name", "classes", "key"), [
    ("resnet50", 10, "fc.weight"), ("mobilenet_v3_large", 10, "classifier.3.weight"),
    ("yolov5s", 4, "model.24.m.0.weight"), ("yolov8n", 4, "model.22.cv3.0.0.conv.weight")])
def test_other_class_count_is_named(name, classes, key, tmp_path):
    message = load_error(name, published_state(name), tmp_path, classes)
    assert f"trained for {CLASSES[name]} classes, the model is built for {classes}" in message
    assert key in message  # and the shape mismatch itself


def test_pickled_ultralytics_model_says_how_to_export(tmp_path):
    """An Ultralytics .pt holds a pickled model object: weights_only=True refuses it, and the
    message gives the line that writes its state dict. (A pickled zoo model stands in for it:
    the refusal is the same for any pickled class.)"""
    path = tmp_path / "yolov8n.pt"
    torch.save({"model": build("yolov8n"), "epoch": -1}, path)
    with pytest.raises(UsageError, match="not a state_dict") as info:
        load_weights(spec_with("yolov8n", path), build("yolov8n"))
    assert "YOLO('yolov8n.pt').model.float().state_dict()" in str(info.value)


def test_other_anchors_are_refused(tmp_path):
    state = published_state("yolov5s")
    state["model.24.anchors"] = state["model.24.anchors"] * 1.5
    assert "trained with other anchors" in load_error("yolov5s", state, tmp_path)


# ---- class indices: ImageNet ------------------------------------------------------------------
# (index, WordNet id, torchvision name): torchvision 0.24.1 models/_meta.py _IMAGENET_CATEGORIES
# for the names; the WordNet ids of ImageNet's devkit (timm 1.0.31 data/_info/imagenet_synsets.txt)
IMAGENET_SAMPLES = [(0, "n01440764", "tench"), (1, "n01443537", "goldfish"),
                    (134, "n02012849", "crane bird"), (207, "n02099601", "golden retriever"),
                    (281, "n02123045", "tabby"), (409, "n02708093", "analog clock"),
                    (639, "n03710721", "maillot tank suit"), (817, "n04285008", "sports car"),
                    (999, "n15075141", "toilet tissue")]


def test_imagenet_order_is_the_sorted_wordnet_ids():
    wnids, names = imagenet()
    assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)
    for index, wnid, name in IMAGENET_SAMPLES:
        assert (wnids[index], names[index]) == (wnid, name)


def write_folders(root, folders: list[str], per: int = 2) -> None:
    for split in ("train", "val"):
        for k, folder in enumerate(folders):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                Image.new("RGB", (8, 8), (30 * k, 40, 200 - 30 * i)).save(
                    root / split / folder / f"{i}.png")


def test_imagenet_subset_labels_are_torchvision_indices(tmp_path):
    folders = ["n15075141", "n01440764", "n02123045"]  # toilet tissue, tench, tabby
    write_folders(tmp_path, folders, per=4)
    plain = image_folder_dataset(tmp_path, image_size=(8, 8))
    mapped = image_folder_dataset(tmp_path, image_size=(8, 8), classes="imagenet")
    assert plain.num_classes == 3 and mapped.num_classes == 1000
    assert sorted(set(mapped.train.labels.tolist())) == [0, 281, 999]
    assert sorted(set(plain.train.labels.tolist())) == [0, 1, 2]
    assert mapped.fingerprint != plain.fingerprint
    write_folders(tmp_path, ["tench"])
    with pytest.raises(DatasetError, match=r"\['tench'\].*not ImageNet WordNet ids"):
        image_folder_dataset(tmp_path, image_size=(8, 8), classes="imagenet")


def test_class_list_file_sets_the_index(tmp_path):
    write_folders(tmp_path / "data", ["cat", "dog"])
    (tmp_path / "classes.txt").write_text("# my checkpoint's order\nzebra\ndog\ncat\n")
    data = image_folder_dataset(tmp_path / "data", image_size=(8, 8),
                                classes=str(tmp_path / "classes.txt"))
    assert data.num_classes == 3 and data.class_names == ["zebra", "dog", "cat"]
    assert sorted(set(data.train.labels.tolist())) == [1, 2]


# ---- class indices: COCO ---------------------------------------------------------------------
# torchvision 0.24.1 models/_meta.py _COCO_CATEGORIES: index = COCO category id (91, "N/A" unused)
TORCHVISION_COCO = [
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"]
# Ultralytics 8.4.190 ultralytics/data/converter.py coco80_to_coco91_class()
ULTRALYTICS_COCO80_TO_91 = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54,
    55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
    82, 84, 85, 86, 87, 88, 89, 90]


def test_coco80_ids_are_the_published_category_list():
    assert [coco80_to_coco91(i) for i in range(80)] == ULTRALYTICS_COCO80_TO_91
    used = [(i, n) for i, n in enumerate(TORCHVISION_COCO) if n not in ("N/A", "__background__")]
    assert list(zip(COCO80_IDS, COCO80_NAMES, strict=True)) == used
    # YOLO's order is COCO's categories sorted by id: a json listing all 80 indexes alike
    assert list(COCO80_IDS) == sorted(COCO80_IDS)


def write_coco(root, categories: list[tuple[int, str]], boxes: list[int]) -> None:
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(4):
            Image.new("RGB", (32, 32), (20 * i, 80, 120)).save(root / "images" / split / f"{i}.jpg")
            images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 32, "width": 32})
            category = boxes[i % len(boxes)]
            annotations.append({"id": i + 1, "image_id": i + 1, "category_id": category,
                                "bbox": [4, 4, 10, 12], "area": 120, "iscrowd": 0})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations,
             "categories": [{"id": i, "name": n} for i, n in categories]}))


def test_coco_json_subset_maps_to_the_80_yolo_indices(tmp_path):
    write_coco(tmp_path, [(3, "car"), (18, "dog")], [3, 18])
    plain = coco_dataset(tmp_path, image_size=(32, 32))
    mapped = coco_dataset(tmp_path, image_size=(32, 32), classes="coco80")
    assert plain.num_classes == 2 and mapped.num_classes == 80
    labels = sorted({int(b[0]) for boxes in mapped.train.labels for b in boxes})
    assert labels == [COCO80_NAMES.index("car"), COCO80_NAMES.index("dog")] == [2, 16]
    assert sorted({int(b[0]) for boxes in plain.train.labels for b in boxes}) == [0, 1]


def test_coco80_refuses_categories_that_are_not_cocos(tmp_path):
    write_coco(tmp_path, [(3, "pedestrian")], [3])
    with pytest.raises(DatasetError, match="3 'pedestrian' \\(COCO: 'car'\\)"):
        coco_dataset(tmp_path, image_size=(32, 32), classes="coco80")


# ---- the one command --------------------------------------------------------------------------
def test_checkpoint_and_dataset_path_give_the_matrix_with_accuracy(bench_pytester, tmp_path):
    """``--pqbench-weights MODEL=PATH`` and a dataset entry named after the model: a published
    ResNet-18 layout scored on an ImageNet-subset ImageFolder (torchvision's indices), pruned
    and quantized, accuracy measured (not "not measured")."""
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.save(published_state("resnet18"), weights)
    write_folders(tmp_path / "imagenet", ["n01440764", "n01443537"], per=6)
    bench_pytester.makepyprojecttoml(f"""
        [tool.pqbench.datasets.resnet18]
        path = "{tmp_path / 'imagenet'}"
        classes = "imagenet"
    """)
    result = bench_pytester.runpytest_inprocess(
        "--pqbench-models=resnet18", "--pqbench-weights", f"resnet18={weights}",
        "--pqbench-input-size=64", "--pqbench-pruners=none,group0.2",
        "--pqbench-workflows=ort", "--pqbench-precisions=fp32,int8", "--pqbench-batch-sizes=2",
        "--pqbench-calibration-size=2", "--benchmark-json=out.json", *SMOKE)
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and outcomes.get("passed", 0) + outcomes.get(
        "failed", 0) == 4, result.outlines[-20:]
    records = [b["extra_info"] for b in
               json.loads((bench_pytester.path / "out.json").read_text())["benchmarks"]]
    assert {r["case_id"] for r in records} == {f"resnet18-s64-{p}-ort-{q}-bs2" for p in (
        "none", "group0.2") for q in ("fp32", "int8")}
    for r in records:
        assert r["weights_file"] == str(weights) and r["dataset"] == "resnet18"
        assert r["accuracy_metric"] == "top1" and 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["reference_accuracy"] <= 1.0
