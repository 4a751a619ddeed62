"""Model specs: how to get an nn.Module and what task it solves."""

from __future__ import annotations

from .base import MODELS, ModelSpec, get_spec, load_model, register_model

__all__ = ["MODELS", "ModelSpec", "get_spec", "load_model", "register_model"]

from . import classifiers, detector, zoo  # noqa: E402,F401  (built-in specs register themselves)
