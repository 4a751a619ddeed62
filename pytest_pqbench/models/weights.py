"""The ``weights`` setting: ``MODEL=PATH`` pairs, a state_dict file per model, given as
``--pqbench-weights MODEL=PATH`` (repeatable), ``pqbench_weights`` in the pytest ini or
``weights = {MODEL = "PATH"}`` in ``[tool.pqbench]``.

A model with weights loads them (``ModelSpec.weights``; the papers' models convert published
checkpoints, :mod:`.zoo.checkpoints`) instead of training, and its accuracy is measured. A
relative path in ``pyproject.toml`` is read from that file's folder; one on the command line or
in the ini, from the current directory. The command line wins over the ini, the ini over
``pyproject.toml``, model by model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .base import ModelSpec


def _table(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise UsageError(f"weights in {where}: expected MODEL = \"PATH\" pairs, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def anchor_weights(table: Any, config_file: Path) -> dict[str, str]:
    """``[tool.pqbench] weights`` with relative paths made absolute from the file's folder."""
    out = {}
    for model, value in _table(table, str(config_file)).items():
        path = Path(value).expanduser()
        out[model] = str(path if path.is_absolute() else config_file.parent / path)
    return out


def merge_weights(layers: Iterable[Any]) -> dict[str, str]:
    """The layers, lowest precedence first, merged model by model; paths made absolute (a
    relative one from the current directory)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for model, value in _table(layer, "the settings").items():
            merged[model] = str(Path(value).expanduser().absolute())
    return merged


def check_weights(table: Mapping[str, str], selected: Iterable[str]) -> None:
    """Every model named is registered; a selected model's file exists."""
    from ..registry import unknown
    from . import MODELS

    selected = set(selected)
    for model, path in table.items():
        if model not in MODELS:
            raise UsageError(f"weights: {unknown('model', model, MODELS.names())}")
        if model in selected and not Path(path).is_file():
            raise UsageError(f"weights for model {model!r}: file {path!r} does not exist "
                             f"(--pqbench-weights {model}=PATH or [tool.pqbench] weights)")


def with_weights(spec: ModelSpec, table: Mapping[str, str]) -> ModelSpec:
    """``spec`` loading the file the setting names for it (``spec`` itself when none)."""
    path = table.get(spec.name)
    if not path:
        return spec
    return replace(spec, weights=path, declared_in=None)
