"""The package's shape: no import circle (lazy and ``TYPE_CHECKING`` imports counted), no module
reaching into another's private names, settings and workflows that declare what the code reads.

The import graph is read from the source with ``ast`` (every ``import`` statement, wherever it
stands), not from ``sys.modules``: a function-level import that would close a circle counts."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import pytest_pqbench

PACKAGE = Path(pytest_pqbench.__file__).parent
NAME = PACKAGE.name


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of the package."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == NAME]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != NAME:
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            out += [(s, []) for s in subs]
            out.append((target, [n for n in names if f"{target}.{n}" not in known]))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, _ in imports(module, path, known):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            parts = target.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            for i in range(2, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != module and not module.startswith(prefix + "."):
                    edges[module].add(prefix)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    assert circles(graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    known = modules()
    offenders = [f"{module} imports {name} from {target}"
                 for module, path in known.items()
                 for target, names in imports(module, path, known) if target != module
                 for name in names if name.startswith("_") and not name.startswith("__")]
    assert offenders == []


def test_settings_fields_are_the_options():
    from pytest_pqbench.config import OPTIONS, Settings

    fields = {f.name for f in dataclasses.fields(Settings)} - {"sources"}
    assert fields == set(OPTIONS)
    settings = Settings.resolve({}, {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.models = ("x",)  # type: ignore[misc]
    assert settings.as_dict()["models"] == ["shapes_resnet"]


def test_every_registered_workflow_declares_the_whole_protocol():
    from pytest_pqbench.workflows import WORKFLOWS, Workflow

    declared = {n for n in Workflow.__annotations__} | {"check", "build", "load_portable"}
    for name in WORKFLOWS.names():
        workflow = WORKFLOWS.get(name)
        missing = sorted(a for a in declared if not hasattr(workflow, a))
        assert not missing, (name, missing)
        if not workflow.portable:
            with pytest.raises(LookupError, match="no portable artefact"):
                workflow.load_portable({}, 1, "cpu")


def test_a_minimal_user_workflow_gets_the_protocol_defaults():
    from pytest_pqbench.errors import UsageError
    from pytest_pqbench.workflows import WORKFLOWS, register_workflow
    from pytest_pqbench.workflows.base import DEFAULT_COST

    class Mine:
        name, precisions = "mine-for-test", frozenset({"fp32"})

        def check(self, precision, device):
            return None

        def build(self, model, precision, calibration, example, ctx):
            raise NotImplementedError

    registered = register_workflow(Mine(), replace=True)
    try:
        assert registered.cost is DEFAULT_COST and not registered.portable
        assert registered.runtime_packages == () and not registered.pair_both_from_artefacts
        assert registered.check("fp32", "cpu") is None
    finally:
        WORKFLOWS.unregister("mine-for-test")
    with pytest.raises(UsageError, match="lacks check, build"):
        register_workflow(type("Half", (), {"name": "half", "precisions": frozenset()})())
