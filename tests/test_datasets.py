"""Datasets on disk, read from small files the tests write: ImageFolder, YOLO-txt, COCO-json
(and the kitti / bdd100k names, which take either detection layout). Each broken layout must
give one clear error naming the file or folder at fault."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_pqbench.datasets import DATASETS, get_dataset
from pytest_pqbench.datasets.disk import (
    DatasetError,
    coco_dataset,
    detection_dataset,
    image_folder_dataset,
    yolo_dataset,
)
from pytest_pqbench.registry import UsageError

SIZE = (16, 24)  # (height, width) the model declares


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 40)) -> Path:
    """A solid RGB image of ``size`` (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), colour).save(path)
    return path


# ---- ImageFolder ------------------------------------------------------------------------------
def image_folder(root: Path, calibration: bool = False) -> Path:
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    counts = {"train": 3, "val": 4, **({"calibration": 2} if calibration else {})}
    for split, n in counts.items():
        for cls, colour in colours.items():
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", colour)
    (root / "train" / "cat" / "notes.txt").write_text("not an image: skipped")
    return root


def test_image_folder_reads_resizes_normalises_and_holds_out_calibration(tmp_path):
    data = image_folder_dataset(image_folder(tmp_path), image_size=SIZE, mean=(0.5, 0.5, 0.5),
                                std=(0.5, 0.5, 0.5))
    assert data.task == "classify" and data.class_names == ["cat", "dog"]
    assert data.train.images.shape == (6, 3, *SIZE)
    assert list(data.train.labels) == [0, 0, 0, 1, 1, 1]
    # red cat: R = 1 -> (1 - 0.5) / 0.5 = 1, G = B = 0 -> -1
    assert np.allclose(data.train.images[0, :, 0, 0], [1.0, -1.0, -1.0])
    # 8 val images: every 4th (2) to calibration, 6 left for evaluation, none shared
    assert len(data.calibration) == 2 and len(data.evaluation) == 6
    assert "held out" in data.info["calibration"]


def test_image_folder_uses_a_calibration_folder_when_there_is_one(tmp_path):
    data = image_folder_dataset(image_folder(tmp_path, calibration=True), image_size=SIZE)
    assert len(data.calibration) == 4 and len(data.evaluation) == 8


def test_fingerprint_follows_the_files(tmp_path):
    root = image_folder(tmp_path)
    before = image_folder_dataset(root, image_size=SIZE).fingerprint
    assert image_folder_dataset(root, image_size=SIZE).fingerprint == before
    assert image_folder_dataset(root, image_size=(8, 8)).fingerprint != before
    write_image(root / "train" / "dog" / "extra.png", (0, 255, 0))
    assert image_folder_dataset(root, image_size=SIZE).fingerprint != before


@pytest.mark.parametrize(("breakage", "named"), [
    ("no_val", "is not an ImageFolder layout"),
    ("empty_val", "val"),
    ("unknown_class", "bird"),
])
def test_image_folder_errors_name_the_file(tmp_path, breakage, named):
    root = image_folder(tmp_path / "data")
    if breakage == "no_val":
        for f in sorted((root / "val").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (root / "val").rmdir()
    elif breakage == "empty_val":
        for f in (root / "val").rglob("*.png"):
            f.unlink()
    else:
        write_image(root / "val" / "bird" / "0.png", (0, 255, 0))
    with pytest.raises(DatasetError, match=named) as err:
        image_folder_dataset(root, image_size=SIZE)
    assert str(root) in str(err.value)


# ---- unreadable images: skipped, counted, named once -----------------------------------------
def _break_imagefolder(root: Path) -> str:
    bad = root / "val" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG truncated")
    return str(bad)


def _break_yolo(root: Path) -> str:
    bad = root / "images" / "val" / "2.jpg"
    bad.write_bytes(b"not a jpeg")
    return str(bad)


def _break_coco(root: Path) -> str:
    bad = root / "images" / "val2017" / "000001.jpg"
    bad.unlink()  # listed in the annotations, missing on disk
    return str(bad)


@pytest.mark.parametrize("layout", ["imagefolder", "yolo", "coco"])
def test_unreadable_image_is_skipped_counted_and_named_once(tmp_path, layout):
    make, load, breaker = {
        "imagefolder": (image_folder, image_folder_dataset, _break_imagefolder),
        "yolo": (lambda r: yolo_folder(r), detection_dataset, _break_yolo),
        "coco": (lambda r: coco_folder(r), detection_dataset, _break_coco)}[layout]
    root = make(tmp_path / "data")
    whole = load(root, image_size=SIZE)
    bad = breaker(root)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image") as caught:
        data = load(root, image_size=SIZE)
    assert len(caught) == 1 and bad in str(caught[0].message)
    assert data.info["skipped_images"] == 1 and bad in data.info["skipped_files"][0]
    assert whole.info["skipped_images"] == 0
    loaded = len(data.train) + len(data.evaluation) + len(data.calibration)
    assert loaded == len(whole.train) + len(whole.evaluation) + len(whole.calibration) - 1


# ---- YOLO-txt ---------------------------------------------------------------------------------
def yolo_folder(root: Path, names=("car", "person")) -> Path:
    for split, n in (("train", 2), ("val", 4)):
        for i in range(n):
            write_image(root / "images" / split / f"{i}.jpg", (90, 90, 90))
            label = root / "labels" / split / f"{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.5 0.25\n1 0.25 0.75 0.1 0.2\n" if i != 1 else "")
    (root / "images" / "val" / "1.jpg").rename(root / "images" / "val" / "no_label.jpg")
    (root / "data.yaml").write_text(
        f"path: .\ntrain: images/train\nval: images/val\nnames: {list(names)}\n")
    return root


def test_yolo_reads_boxes_in_resized_pixels(tmp_path):
    data = yolo_dataset(yolo_folder(tmp_path), image_size=SIZE)
    assert data.task == "detect" and data.class_names == ["car", "person"]
    first = data.train.labels[0]
    # cx 0.5, cy 0.5, w 0.5, h 0.25 of a 16 x 24 (h x w) image -> x 6..18, y 6..10
    assert first.dtype == np.float32 and first.shape == (2, 5)
    assert np.allclose(first[0], [0, 6, 6, 18, 10])
    assert np.allclose(first[1], [1, 4.8, 10.4, 7.2, 13.6])
    assert len(data.evaluation) + len(data.calibration) == 4
    # an image without a label file has no objects
    assert any(len(lab) == 0 for lab in [*data.evaluation.labels, *data.calibration.labels])


def test_yolo_names_as_mapping_and_explicit_calibration(tmp_path):
    root = yolo_folder(tmp_path)
    write_image(root / "images" / "calib" / "c.jpg", (10, 10, 10))
    (root / "data.yaml").write_text("train: images/train\nval: images/val\n"
                                    "calibration: images/calib\nnames: {0: car, 1: person}\n")
    data = yolo_dataset(root, image_size=SIZE)
    assert data.class_names == ["car", "person"]
    assert len(data.calibration) == 1 and len(data.evaluation) == 4


@pytest.mark.parametrize(("breakage", "named"), [
    ("class_range", r"labels/val/0.txt' line 2: class 5 outside the class range 0..1"),
    ("bad_line", r"labels/train/0.txt' line 1: expected 'class cx cy w h'"),
    ("empty", r"images/val' holds no images"),
    ("no_yaml", "neither a YOLO-txt layout"),
])
def test_yolo_errors_name_the_file(tmp_path, breakage, named):
    root = yolo_folder(tmp_path / "data")
    if breakage == "class_range":
        (root / "labels" / "val" / "0.txt").write_text("0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n")
    elif breakage == "bad_line":
        (root / "labels" / "train" / "0.txt").write_text("car 0.5 0.5\n")
    elif breakage == "empty":
        for f in (root / "images" / "val").iterdir():
            f.unlink()
    else:
        (root / "data.yaml").unlink()
    with pytest.raises(DatasetError, match=named):
        detection_dataset(root, image_size=SIZE)


# ---- COCO-json --------------------------------------------------------------------------------
def coco_folder(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}]  # non-contiguous ids
    for split, n in (("train2017", 2), ("val2017", 4)):
        images, annotations = [], []
        for i in range(n):
            write_image(root / "images" / split / f"{i:06d}.jpg", (50, 60, 70), size=(40, 80))
            images.append({"id": 10 + i, "file_name": f"{i:06d}.jpg", "height": 40, "width": 80})
            annotations.append({"id": 100 + i, "image_id": 10 + i, "category_id": 7,
                                "bbox": [20, 10, 40, 20], "area": 800, "iscrowd": 0})
            annotations.append({"id": 200 + i, "image_id": 10 + i, "category_id": 3,
                                "bbox": [0, 0, 80, 40], "area": 3200, "iscrowd": 1})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_coco_maps_categories_scales_boxes_and_skips_crowds(tmp_path):
    data = coco_dataset(coco_folder(tmp_path), image_size=SIZE)
    assert data.class_names == ["car", "person"] and data.num_classes == 2
    lab = data.train.labels[0]
    # person (id 7 -> class 1), bbox 20,10,40x20 of an 80 x 40 image, resized to 24 x 16
    assert lab.shape == (1, 5) and np.allclose(lab[0], [1, 6, 4, 18, 12])
    assert len(data.evaluation) == 3 and len(data.calibration) == 1


@pytest.mark.parametrize(("breakage", "named"), [
    ("category", r"instances_val2017.json': annotation 101 has category_id 9"),
    ("no_images", r"instances_val2017.json' list no images"),
    ("no_val", "is not a COCO-json layout"),
])
def test_coco_errors_name_the_file(tmp_path, breakage, named):
    root = coco_folder(tmp_path / "data")
    val = root / "annotations" / "instances_val2017.json"
    content = json.loads(val.read_text())
    if breakage == "category":
        content["annotations"][2]["category_id"] = 9
    elif breakage == "no_images":
        content["images"] = []
    else:
        val.unlink()
    if val.exists():
        val.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=named):
        detection_dataset(root, image_size=SIZE)


# ---- registry names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["kitti", "bdd100k", "detection"])
def test_driving_dataset_names_take_either_layout(tmp_path, name):
    yolo = get_dataset(name, path=str(yolo_folder(tmp_path / "y")), image_size=SIZE, seed=0)
    coco = get_dataset(name, path=str(coco_folder(tmp_path / "c")), image_size=SIZE, seed=0)
    assert (yolo.info["layout"], coco.info["layout"]) == ("yolo-txt", "coco-json")
    assert yolo.name == coco.name == name


def test_disk_dataset_without_a_path_says_how_to_give_one():
    assert {"imagefolder", "imagenette", "imagewoof", "yolo", "coco"} <= set(DATASETS.names())
    with pytest.raises(UsageError, match="--pqbench-dataset imagenette=PATH"):
        DATASETS.get("imagenette")(seed=0)


# ---- datasets by path: [tool.pqbench.datasets.NAME] -------------------------------------------
def _settings(tmp_path: Path, toml: str, cli: dict | None = None, cwd: Path | None = None):
    from pytest_pqbench.config import Settings, read_pyproject

    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "pyproject.toml").write_text(toml)
    return Settings.resolve(cli or {}, {}, read_pyproject(project / "pyproject.toml"))


TABLE = '''
[tool.pqbench.datasets.flowers]
kind = "imagefolder"
path = "data/flowers"
normalization = "imagenet"
input_size = [12, 20]
'''


def test_table_entry_with_relative_path_resolves_from_the_pyproject_folder(tmp_path, monkeypatch):
    from pytest_pqbench.datasets.sources import request
    from pytest_pqbench.models import get_spec

    image_folder(tmp_path / "project" / "data" / "flowers")
    monkeypatch.chdir(tmp_path)  # not the project folder: the path must not depend on the cwd
    settings = _settings(tmp_path, TABLE)
    entry = settings.datasets["flowers"]
    assert entry["path"] == str(tmp_path / "project" / "data" / "flowers")
    factory, options = request("flowers", settings.datasets, get_spec("shapes_resnet"), 0)
    assert factory == "imagefolder" and options["name"] == "flowers"
    data = get_dataset(factory, **options)
    assert data.name == "flowers" and data.train.images.shape[1:] == (3, 12, 20)
    # imagenet normalisation, not the spec's 0.5 / 0.25: red channel of a red image
    assert np.isclose(data.train.images[0, 0, 0, 0], (1.0 - 0.485) / 0.229)


def test_command_line_path_overrides_one_entry_and_keeps_its_other_keys(tmp_path):
    other = image_folder(tmp_path / "elsewhere")
    image_folder(tmp_path / "project" / "birds")
    settings = _settings(tmp_path, TABLE + '\n[tool.pqbench.datasets.birds]\npath = "birds"\n',
                         cli={"datasets": f"flowers={other}"})
    flowers, birds = settings.datasets["flowers"], settings.datasets["birds"]
    assert flowers["path"] == str(other) and flowers["normalization"] == "imagenet"
    assert flowers["input_size"] == [12, 20]
    assert birds["path"] == str(tmp_path / "project" / "birds")  # the other entry is kept


@pytest.mark.parametrize(("toml", "expected"), [
    ('[tool.pqbench.datasets.flowers]\npath = "."\nsize = 3\n',
     "datasets.flowers in *pyproject.toml: unknown key(s) ['size']; valid keys: kind, path*"),
    ('[tool.pqbench.datasets.flowers]\npath = "nowhere"\n',
     "dataset 'flowers': path '*nowhere' does not exist (datasets.flowers in *pyproject.toml)"),
    ('[tool.pqbench.datasets.flowers]\npath = "."\nkind = "voc"\n',
     "datasets.flowers in *pyproject.toml: unknown kind 'voc'; valid kinds: imagefolder, yolo, *"),
    ('[tool.pqbench.datasets.flowers]\npath = "."\n',
     "*: cannot tell the layout: expected train/<class>/ (imagefolder), data.yaml*"),
    ('[tool.pqbench.datasets.flowers]\npath = "."\nkind="imagefolder"\nnormalization = "coco"\n',
     "datasets.flowers in *: unknown normalization 'coco'; valid: imagenet, none (or mean*"),
])
def test_bad_table_entries_name_the_entry_the_file_and_the_choices(tmp_path, toml, expected):
    import fnmatch

    with pytest.raises(UsageError) as err:
        _settings(tmp_path, toml)
    assert fnmatch.fnmatch(str(err.value), expected.replace("[", "[[]")), str(err.value)


def test_a_model_reading_an_undeclared_dataset_is_told_how_to_declare_it():
    from pytest_pqbench.datasets.sources import check

    with pytest.raises(UsageError, match=r"model 'mine' reads dataset 'flowers', which is neither"
                       r" registered nor declared; declare it with "
                       r"\[tool.pqbench.datasets.flowers\].*Registered datasets: .*shapes"):
        check({}, {"mine": "flowers"})
