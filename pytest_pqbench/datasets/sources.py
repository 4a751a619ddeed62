"""Datasets by path: the ``datasets`` setting, as a table per dataset name.

In ``pyproject.toml`` a dataset is either a path or a table::

    [tool.pqbench]
    datasets = {imagenette = "/data/imagenette2-160"}      # a path

    [tool.pqbench.datasets.flowers]                        # a table: any name you like
    kind = "imagefolder"          # imagefolder | yolo | coco | detection (default: from the files)
    path = "data/flowers"         # relative to the folder of this pyproject.toml
    splits = {train = "train", evaluation = "val", calibration = "calib"}   # ImageFolder only
    input_size = [64, 64]         # (height, width); default: the model spec's input_shape
    normalization = "imagenet"    # or mean = [...] and std = [...]; default: the model spec's
    classes = "imagenet"          # what label i means: imagenet | coco80 | a class list file

``--pqbench-dataset NAME=PATH`` replaces only the path of entry NAME (its other keys stay);
the command line wins over the ini, the ini over ``pyproject.toml``, entry by entry. A relative
path in ``pyproject.toml`` is resolved from that file's folder; one given on the command line or
in the ini, from the current directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..models import ModelSpec

KEYS = ("kind", "path", "splits", "input_size", "normalization", "mean", "std", "classes")
KINDS = ("imagefolder", "yolo", "coco", "detection")
SPLIT_ROLES = ("train", "evaluation", "calibration")
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
# registered names that read from disk, and the layout each reads
ON_DISK = {"imagefolder": "imagefolder", "imagenette": "imagefolder",
           "imagewoof": "imagefolder", "yolo": "yolo", "coco": "coco", "detection": "detection",
           "kitti": "detection", "bdd100k": "detection"}


def _entry(name: str, value: Any, where: str) -> dict[str, Any]:
    """One entry as a table; a bare value is its path."""
    if isinstance(value, Mapping):
        bad = sorted(set(value) - set(KEYS) - {"declared_in"})  # declared_in: set by anchor()
        if bad:
            raise UsageError(f"datasets.{name} in {where}: unknown key(s) {bad}; valid keys: "
                             + ", ".join(KEYS))
        return dict(value)
    return {"path": str(value)}


def anchor(table: Any, config_file: Path) -> dict[str, dict[str, Any]]:
    """The ``datasets`` table of ``config_file`` with relative paths made absolute from its
    folder, and each entry remembering where it was declared."""
    if not isinstance(table, Mapping):
        raise UsageError(f"[tool.pqbench] datasets in {config_file}: expected a table of "
                         f"NAME = PATH or [tool.pqbench.datasets.NAME] tables, got {table!r}")
    out = {}
    for name, value in table.items():
        entry = _entry(name, value, str(config_file))
        if "path" in entry:
            path = Path(str(entry["path"])).expanduser()
            entry["path"] = str(path if path.is_absolute() else config_file.parent / path)
        entry["declared_in"] = str(config_file)
        out[name] = entry
    return out


def merge(layers: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Entries of the ``datasets`` layers, lowest precedence first, merged key by key: a path
    given on the command line replaces that entry's path and keeps its other keys."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        if layer in (None, "", []):
            continue
        if not isinstance(layer, Mapping):
            raise UsageError(f"datasets: expected NAME=PATH pairs, got {layer!r}")
        for name, value in layer.items():
            merged[name] = {**merged.get(name, {}), **_entry(name, value, "the settings")}
    return merged


def _source(name: str, entry: Mapping[str, Any]) -> str:
    return f"datasets.{name}" + (f" in {entry['declared_in']}" if entry.get("declared_in") else "")


def _kind(name: str, entry: Mapping[str, Any]) -> str:
    kind = entry.get("kind")
    if kind is None:
        if name in ON_DISK:
            return ON_DISK[name]
        from .disk import detect_layout

        return detect_layout(Path(str(entry["path"])), _source(name, entry))
    kind = ON_DISK.get(str(kind), str(kind))
    if kind not in KINDS:
        raise UsageError(f"{_source(name, entry)}: unknown kind {entry['kind']!r}; valid "
                         f"kinds: {', '.join(KINDS)}")
    return kind


def _floats(name: str, entry: Mapping[str, Any], key: str) -> tuple[float, ...]:
    value = entry[key]
    values = list(value) if isinstance(value, list | tuple) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) not in (1, 3) or (key == "std" and any(v <= 0 for v in out)):
        raise UsageError(f"{_source(name, entry)}: {key} = {value!r} must be one number or three "
                         f"(per RGB channel){', all > 0' if key == 'std' else ''}")
    return out


def check(table: Mapping[str, Mapping[str, Any]], model_datasets: Mapping[str, str]) -> None:
    """Every entry valid (path exists, known kind and keys), and every selected model's dataset
    known: registered, or declared here."""
    from . import DATASETS

    for name, entry in table.items():
        if "path" not in entry:
            raise UsageError(f"{_source(name, entry)}: no path; give path = \"...\" or "
                             f"--pqbench-dataset {name}=PATH")
        path = Path(str(entry["path"])).expanduser()
        if not path.exists():
            raise UsageError(f"dataset {name!r}: path {str(path)!r} does not exist "
                             f"({_source(name, entry)})")
        if entry.get("kind") is not None or name not in DATASETS:
            _kind(name, entry)
        if "splits" in entry:
            splits = entry["splits"]
            bad = sorted(set(splits) - set(SPLIT_ROLES)) if isinstance(splits, Mapping) else splits
            if bad:
                raise UsageError(f"{_source(name, entry)}: splits = {splits!r}: unknown role(s) "
                                 f"{bad}; valid roles: {', '.join(SPLIT_ROLES)}")
        if "normalization" in entry and str(entry["normalization"]) not in NORMALIZATIONS:
            raise UsageError(f"{_source(name, entry)}: unknown normalization "
                             f"{entry['normalization']!r}; valid: {', '.join(NORMALIZATIONS)} "
                             "(or mean = [...] and std = [...])")
        for key in ("mean", "std"):
            if key in entry:
                _floats(name, entry, key)
        if "classes" in entry:
            _classes(name, entry)
        if "input_size" in entry:
            size = entry["input_size"]
            if not (isinstance(size, list | tuple) and len(size) == 2
                    and all(isinstance(v, int) and v > 0 for v in size)):
                raise UsageError(f"{_source(name, entry)}: input_size = {size!r} must be "
                                 "[height, width] in pixels")
    for model, dataset in model_datasets.items():
        if dataset not in table and dataset not in DATASETS:
            raise UsageError(
                f"model {model!r} reads dataset {dataset!r}, which is neither registered nor "
                f"declared; declare it with [tool.pqbench.datasets.{dataset}] path = \"...\" or "
                f"--pqbench-dataset {dataset}=PATH. Registered datasets: "
                + ", ".join(sorted(DATASETS.names())))
        if dataset in ON_DISK and dataset not in table:
            raise UsageError(f"model {model!r} reads dataset {dataset!r} from disk: give its "
                             f"path with --pqbench-dataset {dataset}=PATH or "
                             f"[tool.pqbench.datasets.{dataset}] path = \"...\"")


def _classes(name: str, entry: Mapping[str, Any]) -> str:
    """The ``classes`` value: a named list for the entry's layout, or an existing list file (a
    relative path read from the declaring file's folder)."""
    from .classes import NAMED

    value = str(entry["classes"])
    kind = _kind(name, entry)
    fits = {"imagenet": "imagefolder", "coco80": "coco"}
    if value in NAMED:
        if fits[value] != kind and not (kind == "detection" and value == "coco80"):
            raise UsageError(f"{_source(name, entry)}: classes = {value!r} is for "
                             f"{fits[value]} datasets, this one is {kind}")
        return value
    if kind == "yolo":
        raise UsageError(f"{_source(name, entry)}: classes for a YOLO-txt dataset come from "
                         "the names of its data.yaml (in the checkpoint's order)")
    path = Path(value).expanduser()
    if not path.is_absolute() and entry.get("declared_in"):
        path = Path(str(entry["declared_in"])).parent / path
    if not path.is_file():
        raise UsageError(f"{_source(name, entry)}: classes = {value!r} is neither a named list "
                         f"({', '.join(NAMED)}) nor an existing class list file")
    return str(path)


def request(name: str, table: Mapping[str, Mapping[str, Any]], spec: ModelSpec,
            seed: int) -> tuple[str, dict[str, Any]]:
    """The registered factory and its options for dataset ``name`` as model ``spec`` reads it:
    a generated / registered dataset gets the seed; one on disk its path, the image size and
    the normalisation (the entry's, else the spec's)."""
    entry = table.get(name)
    if entry is None or "path" not in entry:
        return name, {"seed": seed}
    kind = _kind(name, entry)
    factory = name if name in ON_DISK and entry.get("kind") is None else kind
    mean, std = tuple(spec.mean), tuple(spec.std)
    if "normalization" in entry:
        mean, std = NORMALIZATIONS[str(entry["normalization"])]
    mean = _floats(name, entry, "mean") if "mean" in entry else mean
    std = _floats(name, entry, "std") if "std" in entry else std
    size = tuple(entry.get("input_size") or spec.input_shape[1:])
    options: dict[str, Any] = {"path": str(entry["path"]), "image_size": size, "mean": mean,
                               "std": std, "name": name}
    if entry.get("splits"):
        if kind != "imagefolder":
            raise UsageError(f"{_source(name, entry)}: splits are read from the layout for "
                             f"{kind} (data.yaml keys / annotation file names); 'splits' is "
                             "for imagefolder only")
        options["splits"] = tuple(sorted(dict(entry["splits"]).items()))
    if "classes" in entry:
        options["classes"] = _classes(name, entry)
    return factory, options
