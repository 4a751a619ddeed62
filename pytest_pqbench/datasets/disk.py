"""Datasets on disk: ImageFolder classification, YOLO-txt and COCO-json detection.

Every factory takes ``path`` plus the model spec's ``image_size`` (height, width), ``mean`` and
``std``; images are read with Pillow, converted to RGB, resized (boxes scaled with them) and
normalised. Splits: ``train``; evaluation = ``val`` (or ``validation`` / ``test``); calibration =
a ``calibration`` split when the layout has one, else every 4th evaluation image, which is then
held out of evaluation (INT8 calibration never sees the images it is scored on, nor training
images). Any problem is a :class:`DatasetError` naming the file or folder at fault.

Registered names: ``imagefolder`` (also ``imagenette``, ``imagewoof``) for classification;
``yolo``, ``coco`` and ``detection`` (also ``kitti``, ``bdd100k``, once converted to YOLO-txt or
COCO-json) for detection, the layout recognised from the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, UnreadableImage, UsageError  # noqa: F401  (defined in errors.py)
from .base import Dataset, Split, register_dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
EVALUATION_NAMES = ("val", "validation", "test")
CALIBRATION_NAMES = ("calibration", "calib")
CALIBRATION_EVERY, CALIBRATION_MAX = 4, 256


class Skipped(list):
    """The unreadable image files of one dataset load (skipped, counted in ``Dataset.info``)."""

    def read(self, path: Path, image_size: tuple[int, int]):
        try:
            return load_image(path, image_size)
        except UnreadableImage as exc:
            self.append(str(exc))
            return None

    def info(self, name: str) -> dict[str, Any]:
        if not self:
            return {"skipped_images": 0}
        # once per dataset load, not per case: the dataset is loaded once per process
        warnings.warn(f"dataset {name!r}: skipped {len(self)} unreadable image(s): "
                      + "; ".join(self[:3]) + (" ..." if len(self) > 3 else ""), stacklevel=2)
        return {"skipped_images": len(self), "skipped_files": list(self[:20])}


def _per_channel(value: float | Sequence[float]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    return (np.repeat(arr, 3) if arr.size == 1 else arr).reshape(3, 1, 1)


def load_image(path: Path, image_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """``3 x H x W`` float32 in [0, 1] resized to ``image_size``, and the original (h, w)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            original = (img.height, img.width)
            rgb = img.convert("RGB").resize((image_size[1], image_size[0]),
                                            Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        reason = type(exc).__name__ if str(path) in str(exc) else str(exc)  # no path twice
        raise UnreadableImage(f"cannot read image {str(path)!r}: {reason}") from None
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0, original


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    """The class sub-folders of a split, sorted; hidden ones (``.ipynb_checkpoints``) are not
    classes."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _first_existing(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def _fingerprint(kind: str, files: Sequence[Path], options: dict[str, Any]) -> str:
    """Content identity from every file's path, size and modification time, plus the options."""
    h = hashlib.sha256(f"{kind}:{sorted(options.items())!r}".encode())
    for f in files:
        st = f.stat() if f.exists() else None  # a missing image (skipped) counts as missing
        h.update(f"{f}:{st and st.st_size}:{st and st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _split_calibration(evaluation: Split) -> tuple[Split, Split]:
    """Hold every 4th evaluation image out as calibration data (at most 256)."""
    n = len(evaluation)
    picked = np.arange(0, n, CALIBRATION_EVERY)[:CALIBRATION_MAX]
    if n < 2:
        raise DatasetError("evaluation split too small to hold out calibration images")
    rest = np.setdiff1d(np.arange(n), picked)

    def take(idx: np.ndarray) -> Split:
        labels = evaluation.labels
        chosen = labels[idx] if isinstance(labels, np.ndarray) else [labels[i] for i in idx]
        return Split(evaluation.images[idx], chosen)

    return take(rest), take(picked)


def _normalised(images: list[np.ndarray], mean, std) -> np.ndarray:
    return ((np.stack(images) - _per_channel(mean)) / _per_channel(std)).astype(np.float32)


def _check_root(path: str | Path, layout: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{layout} dataset path {str(root)!r} does not exist")
    return root


# ---- classification: ImageFolder (root/train/<class>/*.jpg, root/val/<class>/*.jpg) ------------
def _folder_split(folder: Path, classes: list[str], image_size: tuple[int, int], mean,
                  std, skipped: Skipped) -> tuple[Split, list[Path]]:
    images, labels, files = [], [], []
    for sub in _class_folders(folder):
        if sub.name not in classes:
            more = f" ... ({len(classes)} in all)" if len(classes) > 20 else ""
            raise DatasetError(f"class folder {str(sub)!r} is not a class of the train split; "
                               f"valid classes: {', '.join(classes[:20])}{more}")
        for f in _images_in(sub):
            files.append(f)  # an unreadable file is part of the fingerprint too
            loaded = skipped.read(f, image_size)
            if loaded is None:
                continue
            images.append(loaded[0])
            labels.append(classes.index(sub.name))
    if not images:
        raise DatasetError(f"split folder {str(folder)!r} holds no images "
                           f"(expected <class>/<image> files with suffixes "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return Split(_normalised(images, mean, std), np.asarray(labels, dtype=np.int64)), files


def image_folder_dataset(path: str | Path, image_size: Sequence[int] = (64, 64),
                         mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.25,
                         name: str = "imagefolder", splits: Any = (), classes: str | None = None,
                         **_: Any) -> Dataset:
    """``splits``: (role, folder) pairs naming the folders of the roles ``train``,
    ``evaluation`` and ``calibration`` (default: train, val|validation|test, calibration|calib).
    ``classes``: what label i means (:mod:`.classes`; default: the train folders, sorted).
    """
    root = _check_root(path, "ImageFolder")
    size = (int(image_size[0]), int(image_size[1]))
    named = dict(splits)
    for role, folder in named.items():
        if not (root / str(folder)).is_dir():
            raise DatasetError(f"{role} split folder {str(root / str(folder))!r} (splits.{role})"
                               " does not exist")
    train_dir = root / str(named.get("train", "train"))
    eval_dir = (root / str(named["evaluation"]) if "evaluation" in named
                else _first_existing(root, EVALUATION_NAMES))
    if not train_dir.is_dir() or eval_dir is None:
        raise DatasetError(f"{str(root)!r} is not an ImageFolder layout: expected folders "
                           f"train/<class>/ and one of {', '.join(EVALUATION_NAMES)}/<class>/")
    classes_found = [p.name for p in _class_folders(train_dir)]
    if not classes_found:
        raise DatasetError(f"train folder {str(train_dir)!r} has no class sub-folders")
    empty = [name for name in classes_found if not _images_in(train_dir / name)]
    if empty:  # it would count as a class: the model would be built with one output too many
        raise DatasetError(
            f"class folder(s) {', '.join(repr(str(train_dir / e)) for e in empty)} hold no "
            f"images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}); every sub-folder of "
            f"train/ is a class ({len(classes_found)} here): add images or remove the folder")
    from .classes import folder_classes

    class_list = classes
    classes = folder_classes(class_list, classes_found, root) if class_list else classes_found
    skipped = Skipped()
    train, files = _folder_split(train_dir, classes, size, mean, std, skipped)
    evaluation, more = _folder_split(eval_dir, classes, size, mean, std, skipped)
    files += more
    calib_dir = (root / str(named["calibration"]) if "calibration" in named
                 else _first_existing(root, CALIBRATION_NAMES))
    if calib_dir is not None:
        calibration, more = _folder_split(calib_dir, classes, size, mean, std, skipped)
        files += more
        source = calib_dir.name
    else:
        evaluation, calibration = _split_calibration(evaluation)
        source = f"every {CALIBRATION_EVERY}th image of {eval_dir.name}/, held out of evaluation"
    options = {"size": size, "mean": repr(mean), "std": repr(std), "splits": sorted(named.items()),
               "classes": class_list}
    return Dataset(name=name, task="classify", num_classes=len(classes), class_names=classes,
                   train=train, evaluation=evaluation, calibration=calibration,
                   fingerprint=_fingerprint("imagefolder", files, options),
                   info={"path": str(root), "layout": "imagefolder", "calibration": source,
                         **skipped.info(name)})


# ---- detection: YOLO-txt (data.yaml + images/<split>/ + labels/<split>/) -----------------------
def _yolo_labels(label_file: Path, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    if not label_file.is_file():
        return np.zeros((0, 5), dtype=np.float32)  # YOLO convention: no file = no objects
    rows = []
    for number, line in enumerate(label_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            cls, cx, cy, w, h = (float(v) for v in line.split()[:5])
            if len(line.split()) < 5:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{str(label_file)!r} line {number}: expected 'class cx cy w h' "
                               f"(normalised), got {line.strip()!r}") from None
        if not (cls.is_integer() and 0 <= cls < num_classes):
            raise DatasetError(f"{str(label_file)!r} line {number}: class {cls:g} outside the "
                               f"class range 0..{num_classes - 1} of data.yaml")
        height, width = size
        rows.append([cls, (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                     (cy + h / 2) * height])
    boxes = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, size[1])
    boxes[:, [2, 4]] = boxes[:, [2, 4]].clip(0, size[0])
    return boxes


def _yolo_split(image_dir: Path, num_classes: int, size: tuple[int, int], mean,
                std, skipped: Skipped) -> tuple[Split, list[Path]]:
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {str(image_dir)!r} named in data.yaml does not exist")
    files = _images_in(image_dir)
    if not files:
        raise DatasetError(f"split folder {str(image_dir)!r} holds no images")
    # images/<split>/a.jpg -> labels/<split>/a.txt (the last 'images' path part becomes 'labels')
    parts = list(image_dir.parts)
    where = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    label_dir = Path(*parts[:where], "labels", *parts[where + 1:]) if where is not None \
        else image_dir
    images, labels, used = [], [], list(files)
    for f in files:
        loaded = skipped.read(f, size)
        if loaded is None:
            continue
        images.append(loaded[0])
        label_file = label_dir / (f.stem + ".txt")
        labels.append(_yolo_labels(label_file, num_classes, size))
        if label_file.is_file():
            used.append(label_file)
    if not images:
        raise DatasetError(f"split folder {str(image_dir)!r} holds no readable image")
    return Split(_normalised(images, mean, std), labels), used


def yolo_dataset(path: str | Path, image_size: Sequence[int] = (64, 64),
                 mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.25,
                 name: str = "yolo", classes: str | None = None, **_: Any) -> Dataset:
    import yaml

    root = _check_root(path, "YOLO-txt")
    if classes:
        raise DatasetError(f"{str(root)!r} is a YOLO-txt layout: its classes are the names of "
                           f"its data.yaml, in order (classes = {classes!r} is for ImageFolder "
                           "and COCO-json)")
    data_yaml = root / "data.yaml" if root.is_dir() else root
    if not data_yaml.is_file():
        raise DatasetError(f"{str(root)!r} is not a YOLO-txt layout: no data.yaml")
    try:
        config = yaml.safe_load(data_yaml.read_text()) or {}  # data only: safe_load runs no code
    except yaml.YAMLError as exc:
        raise DatasetError(f"cannot parse {str(data_yaml)!r}: {exc}") from None
    names = config.get("names")
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{str(data_yaml)!r}: 'names' must list the class names")
    base = data_yaml.parent / str(config.get("path", "."))
    size = (int(image_size[0]), int(image_size[1]))

    skipped = Skipped()

    def split(key: str) -> tuple[Split, list[Path]]:
        return _yolo_split(base / str(config[key]), len(names), size, mean, std, skipped)

    missing = [k for k in ("train", "val") if k not in config]
    if missing:
        raise DatasetError(f"{str(data_yaml)!r}: missing key(s) {missing} (image folders)")
    train, files = split("train")
    evaluation, more = split("val")
    files += more + [data_yaml]
    if "calibration" in config:
        calibration, more = split("calibration")
        files += more
        source = str(config["calibration"])
    else:
        evaluation, calibration = _split_calibration(evaluation)
        source = f"every {CALIBRATION_EVERY}th image of {config['val']}, held out of evaluation"
    options = {"size": size, "mean": repr(mean), "std": repr(std)}
    return Dataset(name=name, task="detect", num_classes=len(names),
                   class_names=[str(n) for n in names], train=train, evaluation=evaluation,
                   calibration=calibration, fingerprint=_fingerprint("yolo", files, options),
                   info={"path": str(root), "layout": "yolo-txt", "calibration": source,
                         **skipped.info(name)})


# ---- detection: COCO-json (annotations/instances_<split>.json + images/<split>/) --------------
def _coco_split(json_file: Path, root: Path, size: tuple[int, int], mean, std,
                category_index: dict[int, int] | None,
                skipped: Skipped, classes: str | None = None) -> tuple[Split, list[Path], dict,
                                                                      list]:
    from pycocotools.coco import COCO  # the reader the COCO metric uses too

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
            coco = COCO(str(json_file))
        images_meta = coco.dataset["images"]
        categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DatasetError(f"cannot read COCO annotations {str(json_file)!r}: {exc!r}") from None
    if category_index is None and classes:  # what the checkpoint's indices mean (.classes)
        from .classes import coco_classes

        category_index = coco_classes(classes, categories, json_file)[0]
    if category_index is None:
        category_index = {int(c["id"]): i for i, c in enumerate(categories)}
    stem = json_file.stem.removeprefix("instances_")
    folder = next((d for d in (root / "images" / stem, root / stem, root / "images", root)
                   if d.is_dir()), root)
    by_image = coco.imgToAnns  # image id -> its annotations
    if not images_meta:
        raise DatasetError(f"COCO annotations {str(json_file)!r} list no images (empty split)")
    images, labels, files = [], [], [json_file]
    for meta in images_meta:
        f = folder / meta["file_name"]
        files.append(f)
        loaded = skipped.read(f, size)
        if loaded is None:
            continue
        img, (h0, w0) = loaded
        images.append(img)
        sy, sx = size[0] / h0, size[1] / w0
        rows = []
        for ann in by_image.get(meta["id"], []):
            if ann.get("iscrowd", 0):
                continue  # crowd regions are not objects to detect (COCO's own rule)
            if ann["category_id"] not in category_index:
                raise DatasetError(f"{str(json_file)!r}: annotation {ann.get('id')} has "
                                   f"category_id {ann['category_id']} outside the categories "
                                   f"{sorted(category_index)}")
            x, y, w, h = ann["bbox"]
            rows.append([category_index[ann["category_id"]], x * sx, y * sy, (x + w) * sx,
                         (y + h) * sy])
        labels.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    if not images:
        raise DatasetError(f"no readable image among those {str(json_file)!r} lists "
                           f"(looked in {str(folder)!r})")
    return Split(_normalised(images, mean, std), labels), files, category_index, categories


def coco_dataset(path: str | Path, image_size: Sequence[int] = (64, 64),
                 mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.25,
                 name: str = "coco", classes: str | None = None, **_: Any) -> Dataset:
    """``classes``: what label i means (:mod:`.classes`; default: the train json's categories,
    sorted by id)."""
    root = _check_root(path, "COCO-json")
    folder = root / "annotations"
    jsons = sorted(folder.glob("*.json")) if folder.is_dir() else []

    def find(keys: Sequence[str]) -> Path | None:
        for key in keys:
            for j in jsons:
                if j.stem.removeprefix("instances_").startswith(key):
                    return j
        return None

    train_json, eval_json = find(["train"]), find(EVALUATION_NAMES)
    if train_json is None or eval_json is None:
        raise DatasetError(f"{str(root)!r} is not a COCO-json layout: expected "
                           f"annotations/instances_train*.json and instances_val*.json "
                           f"(found {[j.name for j in jsons]})")
    size = (int(image_size[0]), int(image_size[1]))
    skipped = Skipped()
    train, files, index, categories = _coco_split(train_json, root, size, mean, std, None,
                                                  skipped, classes)
    if not categories:
        raise DatasetError(f"{str(train_json)!r} lists no categories")
    names = [str(c.get("name", c["id"])) for c in categories]
    if classes:
        from .classes import coco_classes

        names = coco_classes(classes, categories, train_json)[1]
    evaluation, more, _, _ = _coco_split(eval_json, root, size, mean, std, index, skipped)
    files += more
    calib_json = find(CALIBRATION_NAMES)
    if calib_json is not None:
        calibration, more, _, _ = _coco_split(calib_json, root, size, mean, std, index,
                                              skipped)
        files += more
        source = calib_json.name
    else:
        evaluation, calibration = _split_calibration(evaluation)
        source = f"every {CALIBRATION_EVERY}th image of {eval_json.name}, held out of evaluation"
    options = {"size": size, "mean": repr(mean), "std": repr(std), "classes": classes}
    return Dataset(name=name, task="detect", num_classes=len(names),
                   class_names=names, train=train,
                   evaluation=evaluation, calibration=calibration,
                   fingerprint=_fingerprint("coco", files, options),
                   info={"path": str(root), "layout": "coco-json", "calibration": source,
                         **skipped.info(name)})


def detect_layout(root: Path, where: str = "") -> str:
    """The loader for the files at ``root``: ``yolo`` (data.yaml), ``coco`` (annotations/) or
    ``imagefolder`` (train/<class>/)."""
    if (root / "data.yaml").is_file() or root.suffix in (".yaml", ".yml"):
        return "yolo"
    if (root / "annotations").is_dir():
        return "coco"
    if (root / "train").is_dir():
        return "imagefolder"
    raise DatasetError(f"{str(root)!r}{' (' + where + ')' if where else ''}: cannot tell the "
                       "layout: expected train/<class>/ (imagefolder), data.yaml (yolo) or "
                       "annotations/ (coco); or set kind = \"imagefolder\" | \"yolo\" | "
                       "\"coco\"")


def detection_dataset(path: str | Path, name: str = "detection", **options: Any) -> Dataset:
    """YOLO-txt when a data.yaml is there, COCO-json when annotations/*.json are."""
    root = _check_root(path, "detection")
    if (root / "data.yaml").is_file() or root.suffix in (".yaml", ".yml"):
        return yolo_dataset(root, name=name, **options)
    if (root / "annotations").is_dir():
        return coco_dataset(root, name=name, **options)
    raise DatasetError(f"{str(root)!r} is neither a YOLO-txt layout (data.yaml, images/, labels/)"
                       f" nor a COCO-json layout (annotations/instances_<split>.json, images/)")


def _named(factory, name: str):
    def make(path: str | Path | None = None, **options: Any) -> Dataset:
        if path is None:
            raise UsageError(f"dataset {name!r} is read from disk: give its path with "
                             f"--pqbench-dataset {name}=PATH or [tool.pqbench] datasets")
        options.pop("seed", None)
        options.setdefault("name", name)  # a user's dataset name read by this loader
        return factory(path, **options)

    make.__doc__ = factory.__doc__
    return make


for _name in ("imagefolder", "imagenette", "imagewoof"):
    register_dataset(_name, _named(image_folder_dataset, _name))
register_dataset("yolo", _named(yolo_dataset, "yolo"))
register_dataset("coco", _named(coco_dataset, "coco"))
for _name in ("detection", "kitti", "bdd100k"):
    register_dataset(_name, _named(detection_dataset, _name))
