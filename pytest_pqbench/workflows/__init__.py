"""Workflows: ways to run a model. One protocol, one module per workflow, one registry."""

from __future__ import annotations

from .base import (
    WORKFLOWS,
    BuildContext,
    BuildCost,
    Engine,
    EngineFacts,
    Workflow,
    get_workflow,
    register_workflow,
)

__all__ = ["WORKFLOWS", "BuildContext", "BuildCost", "Engine", "EngineFacts", "Workflow",
           "get_workflow", "register_workflow"]

# built-in workflows register themselves on import
from . import inductor, onnx_trt, ort, torch_eager, torch_trt  # noqa: E402,F401
