"""Workflows: ways to run a model. One protocol, one module per workflow, one registry."""

from __future__ import annotations

from .base import WORKFLOWS, BuildContext, Engine, Workflow, get_workflow, register_workflow

__all__ = ["WORKFLOWS", "BuildContext", "Engine", "Workflow", "get_workflow", "register_workflow"]

from . import ort, torch_eager  # noqa: E402,F401  (built-in workflows register themselves)
