"""Settings: the matrix and run options, from the command line, pytest ini or [tool.pqbench].

Precedence: command line > pytest ini (``pqbench_<name>``) > ``[tool.pqbench]`` in pyproject.toml >
built-in defaults. Every value is validated once, here; a bad one is a ``UsageError`` naming it
and the valid choices. Config files are parsed as data (TOML / ini), never executed.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .case import PRECISIONS, Case, PrunerSpec, expand, parse_pruner
from .datasets.sources import anchor, merge
from .datasets.sources import check as check_datasets
from .errors import UsageError
from .models import MODELS, get_spec
from .models.weights import anchor_weights, check_weights, merge_weights
from .models.zoo import input_sizes
from .pruners import PRUNERS
from .pruners.base import check_options, fixed_ratio_names
from .registry import unknown
from .results import DEFAULT_FAIL_ON
from .results.compare import UNDECIDED_POLICIES, Thresholds
from .workflows import WORKFLOWS
from .workflows.base import CALIBRATION_METHODS

# name -> (kind, default, help). kind: list (comma-separated), ints, int, float, str, bool, map.
OPTIONS: dict[str, tuple[str, Any, str]] = {
    "models": ("list", ["shapes_resnet"], "models to benchmark"),
    "pruners": ("list", ["none", "group0.2"], "pruners with ratio, e.g. none,group0.2,l1_0.5"),
    "workflows": ("list", ["torch", "ort"], "workflows: torch, inductor, ort, torch-trt, onnx-trt"),
    "precisions": ("list", ["fp32", "int8"], "precisions: fp32, fp16, bf16, int8, fp8"),
    "batch_sizes": ("ints", [32], "batch sizes, e.g. 1,8,32"),
    "cache_dir": ("str", None, "artefact cache directory (default: pytest's cache dir)"),
    "threads": ("int", 0, "intra-op threads per engine (0: physical cores)"),
    "device": ("str", "auto", "cpu, cuda, cuda:N or auto"),
    "seed": ("int", 0, "seed for data generation, training and pruning"),
    "datasets": ("map", {}, "NAME=PATH pairs: dataset on disk for a model or dataset name"),
    "weights": ("map", {}, "MODEL=PATH pairs: a state_dict file the model loads instead of "
                "training (the papers' models: torchvision / Ultralytics checkpoints, see "
                "docs/how-to/published-checkpoints.md)"),
    "warmup_rounds": ("int", 10, "untimed calls before timing"),
    "min_rounds": ("int", 200, "minimum timed rounds per case (the p99 test needs >= 200)"),
    "min_time": ("float", 1.0, "minimum seconds of timed rounds per case"),
    "max_rounds": ("int", 5000, "maximum timed rounds per case"),
    "timing_profile": ("str", "full", "full (p99-grade rounds) or smoke (few rounds, CI; labelled "
                       "in the results)"),
    "deadline_ms": ("float", 0.0, "latency deadline in ms (0: the model's default)"),
    "calibration_size": ("int", 256, "calibration images for INT8"),
    "calibration_method": ("str", "minmax", "INT8 calibration: minmax, entropy, percentile"),
    "ort_providers": ("list", [], "force ONNX Runtime execution providers"),
    "trt_workspace_mb": ("int", 1024, "TensorRT builder workspace limit in MiB"),
    "prune_options": ("map", {}, "pruner options KEY=VALUE (every pruner that takes KEY) or "
                      "PRUNER:KEY=VALUE, e.g. round_to=8,group:iterative_steps=2"),
    "finetune_epochs": ("int", 0, "fine-tune pruned models for N epochs"),
    "distill": ("bool", False, "add knowledge distillation from the unpruned model"),
    "build_only": ("bool", False, "build every artefact, time nothing"),
    "build_timeout": ("float", 0.0, "seconds a case's build may take (0: no limit)"),
    "compare": ("str", None, "baseline run (JSON file, saved run number or glob) to gate against"),
    "noise": ("str", None, "A/A noise file from `pqbench noise --write` for the compare gate"),
    "undecided": ("str", "warn", "with compare: what a gated metric the data cannot decide does: "
                  "fail (the case fails), warn (listed with what would decide it) or pass"),
    "pair_budget": ("float", 300.0, "with compare: seconds of paired timing after the first look "
                    "at most; the pairs still undecided then keep their last look (0: no limit)"),
    # factors, not percentages, in the default and help: argparse reads "%" as a format field
    "fail_on": ("str", DEFAULT_FAIL_ON,
                "with compare: what fails a case, as factors or percent and pp (accuracy)"),
    "floors": ("table", {}, "accuracy floors per model: {model = {min_accuracy, max_drop}}"),
    "input_size": ("list", [], "square input sizes in pixels, PIXELS or MODEL=PIXELS, e.g. "
                   "640 or yolov5s=320,yolov5s=640 (default: each model's own)"),
}
def check_providers(names: tuple[str, ...]) -> None:
    """Every forced ONNX Runtime provider is one this onnxruntime build has (asked once)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    bad = [n for n in names if n not in available]
    if bad:
        raise UsageError(f"pqbench option 'ort_providers': {', '.join(map(repr, bad))} not "
                         f"available in this onnxruntime; valid here: {', '.join(available)}")
    if len(set(names)) != len(names):
        raise UsageError(f"pqbench option 'ort_providers': {list(names)} names a provider "
                         "twice; give each once")


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# float options and their valid range (0 = "none" / "model default" where the help says so)
NON_NEGATIVE_FLOATS = ("min_time", "deadline_ms", "build_timeout", "pair_budget")
# A smoke run's timing defaults: enough to catch breakage, too few rounds for a trustworthy p99.
# They replace only values left at their defaults; every result is labelled with its profile.
TIMING_PROFILES = {"full": {}, "smoke": {"warmup_rounds": 3, "min_rounds": 20, "min_time": 0.2}}


# options whose default is empty: an empty value given for them means that default
EMPTY_MEANS_DEFAULT = ("ort_providers", "input_size", "datasets", "prune_options", "floors")


def _split(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = str(value).replace("\n", ",").split(",")
    return [s.strip() for s in items if s.strip()]


def _coerce_scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def coerce(name: str, value: Any) -> Any:
    kind = OPTIONS[name][0]
    try:
        if kind == "list":
            return _split(value)
        if kind == "ints":
            return [_integer(v) for v in _split(value)]
        if kind == "int":
            return _integer(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number, not a boolean")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in BOOLEANS:
                raise ValueError("expected one of " + ", ".join(BOOLEANS))
            return BOOLEANS[text]
        if kind == "map":
            if isinstance(value, dict):
                return dict(value)
            pairs = {}
            for item in _split(value):
                if "=" not in item:
                    raise ValueError(f"{item!r} is not KEY=VALUE")
                k, v = item.split("=", 1)
                pairs[k.strip()] = _coerce_scalar(v.strip())
            return pairs
        if kind == "table":
            if not isinstance(value, dict):
                raise ValueError("expected a table")
            return value
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a string, not a {type(value).__name__}")
        return str(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pqbench option {name!r}: bad value {value!r} ({exc})") from None


def _integer(value: Any) -> int:
    """An int from ``3``, ``"3"`` or ``3.0``; never silently from ``1.5``, ``"1.5"`` or ``true``."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def read_pyproject(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read as TOML ({exc})") from None
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise UsageError(f"{path}: 'tool' is {type(tool).__name__} {tool!r:.40}, not a table; "
                         "pqbench reads [tool.pqbench]")
    section = tool.get("pqbench", {})
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [tool.pqbench] is {type(section).__name__} "
                         f"{section!r:.40}, not a table; write it as\n[tool.pqbench]\n"
                         'models = ["shapes_resnet"]')
    bad = sorted(set(section) - set(OPTIONS))
    if bad:
        raise UsageError(f"[tool.pqbench] in {path}: unknown key(s) {bad}; "
                         f"valid keys: {', '.join(sorted(OPTIONS))}")
    if "datasets" in section:  # relative dataset paths are read from this file's folder

        section["datasets"] = anchor(section["datasets"], path.resolve())
    if "weights" in section:  # so are relative weights paths
        section["weights"] = anchor_weights(section["weights"], path.resolve())
    return section


def _example(name: str, default: Any) -> str:
    if isinstance(default, list) and default:
        return ",".join(map(str, default))
    return {"cache_dir": ".pqbench-cache", "compare": "baseline.json",
            "noise": "noise.json"}.get(name, str(default))


def check_ini_keys(keys: Any) -> None:
    """A ``pqbench_*`` key in the pytest ini that names no option is an error, not a warning."""
    bad = sorted(k for k in keys if k.startswith("pqbench_") and k[len("pqbench_"):] not in OPTIONS)
    if bad:
        raise UsageError(f"pytest ini: unknown key(s) {bad}; valid keys: "
                         + ", ".join(f"pqbench_{name}" for name in sorted(OPTIONS)))


@dataclass(frozen=True)
class Settings:
    """Every run option, resolved and validated (``Settings.resolve``). Field names are the
    option names of ``OPTIONS`` (``--pqbench-<name>``, ``pqbench_<name>``, ``[tool.pqbench]``);
    ``sources`` says where each value came from."""

    models: tuple[str, ...] = ("shapes_resnet",)
    pruners: tuple[str, ...] = ("none", "group0.2")
    workflows: tuple[str, ...] = ("torch", "ort")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batch_sizes: tuple[int, ...] = (32,)
    cache_dir: str | None = None
    threads: int = 0
    device: str = "auto"
    seed: int = 0
    datasets: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, str] = field(default_factory=dict)
    warmup_rounds: int = 10
    min_rounds: int = 200
    min_time: float = 1.0
    max_rounds: int = 5000
    timing_profile: str = "full"
    deadline_ms: float = 0.0
    calibration_size: int = 256
    calibration_method: str = "minmax"
    ort_providers: tuple[str, ...] = ()
    trt_workspace_mb: int = 1024
    prune_options: Mapping[str, Any] = field(default_factory=dict)
    finetune_epochs: int = 0
    distill: bool = False
    build_only: bool = False
    build_timeout: float = 0.0
    compare: str | None = None
    noise: str | None = None
    undecided: str = "warn"
    pair_budget: float = 300.0
    fail_on: str = DEFAULT_FAIL_ON
    floors: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    input_size: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The option values by name (lists as lists), as recorded in a run's JSON."""
        return {name: list(v) if isinstance(v, tuple) else v
                for name in OPTIONS for v in (getattr(self, name),)}

    @classmethod
    def resolve(cls, cli: dict[str, Any], ini: dict[str, Any],
                pyproject: dict[str, Any]) -> Settings:
        values, sources = {}, {}
        for name, (_, default, _) in OPTIONS.items():
            # every layer's value is checked, also one a higher layer overrides: a bad value in
            # pyproject.toml is a mistake even on a day the command line hides it
            for source, layer in (("pyproject", pyproject), ("ini", ini), ("command line", cli)):
                if layer.get(name) is None:
                    continue
                value = coerce(name, layer[name])
                if value in ("", [], {}) and name not in EMPTY_MEANS_DEFAULT:
                    raise UsageError(f"pqbench option {name!r} ({source}): empty value "
                                     f"{layer[name]!r}; give a value, e.g. "
                                     f"{_example(name, default)}, or leave the option out "
                                     "for the default")
                if value not in ("", [], {}):
                    values[name], sources[name] = value, source
            if name not in values:
                values[name], sources[name] = coerce(name, default), "default"
        # datasets merge entry by entry: --pqbench-dataset NAME=PATH replaces NAME's path only
        values["datasets"] = merge(coerce("datasets", layer["datasets"]) for layer in
                                   (pyproject, ini, cli) if layer.get("datasets") not in
                                   (None, "", []))
        values["weights"] = merge_weights(coerce("weights", layer["weights"]) for layer in
                                          (pyproject, ini, cli) if layer.get("weights") not in
                                          (None, "", []))
        if values["timing_profile"] not in TIMING_PROFILES:
            raise unknown("timing profile", values["timing_profile"], list(TIMING_PROFILES))
        for name, value in TIMING_PROFILES[values["timing_profile"]].items():
            if sources[name] == "default":
                values[name], sources[name] = value, "timing profile"
        settings = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()},
                       sources=sources)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("models", "pruners", "workflows", "precisions", "batch_sizes",
                     "ort_providers", "input_size"):
            values = getattr(self, name)
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise UsageError(f"pqbench option {name!r}: {', '.join(twice)} given twice in "
                                 f"{list(values)} ({self.sources.get(name, 'default')}); give "
                                 "each once")
        for name in self.models:
            if name not in MODELS:
                raise unknown("model", name, MODELS.names())
        if not self.models:
            raise UsageError("no model selected; valid models: " + ", ".join(MODELS.names()))

        input_sizes(self.input_size, self.models)  # a bad size is a UsageError here
        pruner_names = [parse_pruner(text, PRUNERS.names(), fixed=fixed_ratio_names()).name
                        for text in self.pruners]
        check_options(self.prune_options, pruner_names)
        for name in self.workflows:
            if name not in WORKFLOWS:
                raise unknown("workflow", name, WORKFLOWS.names())
        for name in self.precisions:
            if name not in PRECISIONS:
                raise unknown("precision", name, list(PRECISIONS))
        for bs in self.batch_sizes:
            if bs < 1:
                raise UsageError(f"batch size {bs} is < 1; batch sizes must be positive integers")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise unknown("calibration method", self.calibration_method, list(CALIBRATION_METHODS))
        self._validate_counts()
        self._validate_floors()
        if self.sources.get("fail_on") != "default":
            try:
                Thresholds.parse_fail_on(self.fail_on)
            except UsageError as exc:
                raise UsageError(f"pqbench option 'fail_on' {self.fail_on!r}: {exc}") from None
        check_datasets(self.datasets, {m: self.dataset_of(m) for m in self.models})
        check_weights(self.weights, self.models)
        if self.ort_providers:
            check_providers(self.ort_providers)

    def _validate_counts(self) -> None:
        for key in ("warmup_rounds", "min_rounds", "max_rounds", "calibration_size", "threads",
                    "seed", "finetune_epochs", "trt_workspace_mb", *NON_NEGATIVE_FLOATS):
            if getattr(self, key) < 0:
                zero = {"build_timeout": " (0: no limit)",
                        "deadline_ms": " (0: the model's default)"}.get(key, "")
                raise UsageError(f"pqbench option {key!r} must be >= 0{zero}, "
                                 f"got {getattr(self, key):g}")
        if self.undecided not in UNDECIDED_POLICIES:
            raise unknown("undecided policy", self.undecided, list(UNDECIDED_POLICIES))
        if not DEVICE.match(self.device):
            raise UsageError(f"pqbench option 'device': bad value {self.device!r}; valid: auto, "
                             "cpu, cuda, cuda:N (N a GPU index)")
        if self.min_rounds > self.max_rounds:
            raise UsageError(f"pqbench options 'min_rounds' ({self.min_rounds}, "
                             f"{self.sources.get('min_rounds', 'default')}) > 'max_rounds' "
                             f"({self.max_rounds}, {self.sources.get('max_rounds', 'default')}): "
                             "no case could reach its minimum; raise max_rounds or lower "
                             "min_rounds")
        if "int8" in self.precisions and self.calibration_size < 1:
            raise UsageError(f"pqbench option 'calibration_size' is {self.calibration_size}: "
                             "INT8 (in 'precisions') calibrates on real images; give at least "
                             "1 (default 256), or leave int8 out")

    def dataset_of(self, model: str) -> str:
        """The dataset ``model`` reads: a ``datasets`` entry named after the model, else the
        spec's ``default_dataset``."""
        if model in self.datasets and "path" in self.datasets[model]:
            return model
        return get_spec(model).default_dataset

    def _validate_floors(self) -> None:
        if not isinstance(self.floors, dict):
            raise UsageError("floors: expected a table {model = {min_accuracy, max_drop}}")
        for model, floor in self.floors.items():
            if model not in MODELS:  # a misspelt name would never be applied
                raise UsageError(f"floors.{model}: unknown model {model!r}; its floor would "
                                 f"never apply; valid models: {', '.join(MODELS.names())}")
            bad = set(floor) - {"min_accuracy", "max_drop"} if isinstance(floor, dict) else {floor}
            if bad:
                raise UsageError(f"floors.{model}: unknown key(s) {sorted(map(str, bad))}; "
                                 "valid keys: max_drop, min_accuracy")
            for key, value in floor.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if not number or not 0.0 <= value <= 1.0:
                    raise UsageError(f"floors.{model}.{key}: bad value {value!r}; expected a "
                                     "fraction in [0, 1] (e.g. 0.9)")

    def pruner_specs(self) -> list[PrunerSpec]:
        fixed = fixed_ratio_names()
        return [parse_pruner(t, PRUNERS.names(), fixed=fixed) for t in self.pruners]

    def model_axis(self) -> list[tuple[str, str, int]]:
        sizes = input_sizes(self.input_size, self.models)  # 0: the model's own size
        return [(m, self.dataset_of(m), s) for m in self.models for s in sizes[m]]

    def cases(self) -> list[Case]:
        return expand(self.model_axis(), self.pruner_specs(), list(self.workflows),
                      list(self.precisions), list(self.batch_sizes))

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
