"""Class lists that say what a checkpoint's output indices mean: the ``classes`` key of a dataset
on disk.

* ``classes = "imagenet"`` (ImageFolder): the class folders are ImageNet WordNet ids
  (``n01440764``, ...) and label i is torchvision's class i (its weights' order, that of the
  sorted ids): a folder of any subset of ImageNet's classes (Imagenette's 10, say) is scored
  against the 1000 outputs of a torchvision checkpoint. Without the key the folders' own sorted
  order is the index, which is torchvision's only for all 1000 WordNet-id folders.
* ``classes = "coco80"`` (COCO-json): category ids (1..90, 80 used) map to the 80 indices of
  YOLO's COCO checkpoints (Ultralytics' ``coco80_to_coco91_class``), names checked against
  COCO's. Without the key the json's own categories, sorted by id, are the index, which is
  YOLO's only for a json listing all 80.
* ``classes = "path/to/classes.txt"``: one class per line, line N (from 0) is output N; a line is
  a class folder name (ImageFolder) or a category name (COCO-json).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ..errors import DatasetError

NAMED = ("imagenet", "coco80")

# COCO's 91 category ids (2014 paper) used by its 80 detection classes, in YOLO's class order:
# Ultralytics' ultralytics/data/converter.py coco80_to_coco91_class()
COCO80_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
              25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
              50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74,
              75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
# names as in COCO's instances_*.json and Ultralytics' cfg/datasets/coco.yaml
COCO80_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")


@cache
def imagenet() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(WordNet ids, torchvision names) of ImageNet-1k in torchvision's class order."""
    from .imagenet_classes import IMAGENET_TSV

    rows = [line.split("\t") for line in IMAGENET_TSV.strip().splitlines()]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def coco80_to_coco91(index: int) -> int:
    """The COCO category id of YOLO class ``index``."""
    return COCO80_IDS[index]


def read_list(path: Path, what: str) -> list[str]:
    """A class list file: one name per line, blank lines and ``#`` comments skipped."""
    if not path.is_file():
        raise DatasetError(f"class list {str(path)!r} ({what}) does not exist")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DatasetError(f"class list {str(path)!r} ({what}) names no class")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError(f"class list {str(path)!r} names {duplicates[:5]} more than once")
    return names


def folder_classes(classes: str, found: list[str], root: Path) -> list[str]:
    """The ImageFolder class list for ``classes`` (index = position), checked against the
    class folders ``found`` under ``root``."""
    if classes == "coco80":
        raise DatasetError(f"classes = 'coco80' is for a COCO-json dataset; {str(root)!r} is an "
                           "ImageFolder (use 'imagenet' or a class list file)")
    names = (list(imagenet()[0]) if classes == "imagenet"
             else read_list(Path(classes), "classes of " + str(root)))
    known = set(names)
    stray = [f for f in found if f not in known]
    if stray:
        what = ("ImageNet WordNet ids (n01440764, ...)" if classes == "imagenet"
                else f"listed in {classes!r}")
        raise DatasetError(f"class folder(s) {stray[:5]} under {str(root)!r} are not "
                           f"{what}; {len(stray)} of {len(found)} folders")
    return names


def coco_classes(classes: str, categories: list[dict], json_file: Path) -> tuple[
        dict[int, int], list[str]]:
    """(category id -> index, class names) for ``classes``, checked against the json's
    ``categories``."""
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    if classes == "imagenet":
        raise DatasetError(f"classes = 'imagenet' is for an ImageFolder; {str(json_file)!r} is "
                           "COCO-json (use 'coco80' or a class list file)")
    if classes == "coco80":
        coco = dict(zip(COCO80_IDS, COCO80_NAMES, strict=True))
        wrong = [f"{i} {n!r} (COCO: {coco.get(i, 'unused id')!r})" for i, n in by_id.items()
                 if coco.get(i) != n]
        if wrong:
            raise DatasetError(f"{str(json_file)!r}: categories {wrong[:5]} are not COCO's, so "
                               "classes = 'coco80' cannot map them")
        return {i: k for k, i in enumerate(COCO80_IDS)}, list(COCO80_NAMES)
    names = read_list(Path(classes), "classes of " + str(json_file))
    index = {n: k for k, n in enumerate(names)}
    stray = [n for n in by_id.values() if n not in index]
    if stray:
        raise DatasetError(f"{str(json_file)!r}: categories {stray[:5]} are not listed in "
                           f"{classes!r}")
    return {i: index[n] for i, n in by_id.items()}, names
