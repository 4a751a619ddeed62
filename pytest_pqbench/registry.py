"""Name -> object registries: the extension points for models, datasets, pruners and workflows.

A registry is a dict from the user-facing name to a small callable or spec, as in Torch-Pruning.
Users add entries from a conftest.py (``register_model`` / ``register_dataset`` /
``register_pruner`` / ``register_workflow`` calls at import) or from a package entry point in the
groups ``pqbench.models``, ``pqbench.datasets``, ``pqbench.pruners`` and ``pqbench.workflows``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


from .errors import UsageError  # noqa: E402  (re-exported: the error lives in errors.py)


def unknown(kind: str, value: object, valid: list[str] | tuple[str, ...]) -> UsageError:
    choices = ", ".join(sorted(valid)) or "(none registered)"
    return UsageError(f"unknown {kind} {value!r}; valid {kind}s: {choices}")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str, item: T | None = None, *, replace: bool = False):
        """Register ``item`` under ``name``; usable as a decorator when ``item`` is omitted."""

        def add(obj: T) -> T:
            if name in self._items and not replace and self._items[name] is not obj:
                raise UsageError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        if item is None:
            return add
        return add(item)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            obj = ep.load()
            # An entry point may name the object itself or a function that registers things.
            if callable(obj) and getattr(obj, "__pqbench_register__", False):
                obj(self)
            elif ep.name not in self._items:
                self._items[ep.name] = obj

    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, list(self._items)) from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def registering(fn: Callable[[Registry], None]) -> Callable[[Registry], None]:
    """Mark an entry-point function that registers several items into the registry it is given."""
    fn.__pqbench_register__ = True  # type: ignore[attr-defined]
    return fn
