"""``pqbench list``: the cases the current configuration would run, with skip reasons.

Models, datasets and pruners registered in a ``conftest.py`` are seen as pytest sees them: the
conftest files pytest would load for the benchmark folders (from the config file's folder down
to each folder, and every one below it) are imported first, the way pytest imports them
(``prepend`` mode). That is lighter than a pytest collection and honours ``--config``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from ..config import OPTIONS, Settings, read_pyproject
from ..errors import UsageError
from . import Subcommands

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", ".tox"}


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("list", help="list the cases of the configured matrix, with skip reasons")
    p.add_argument("--config", type=Path, default=Path("pyproject.toml"),
                   help="pyproject.toml whose [tool.pqbench] to read (default: ./pyproject.toml)")
    for name, (kind, _, help_text) in OPTIONS.items():
        if kind in ("list", "ints", "str", "int") and name in (
                "models", "pruners", "workflows", "precisions", "batch_sizes", "device"):
            p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=help_text)
    p.add_argument("--all-models", action="store_true",
                   help="list every registered model (embedded, the papers' models, yours from "
                        "conftest.py) with its task, input size and size, instead of cases")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("paths", nargs="*", type=Path,
                   help="benchmark folders whose conftest.py files register models (default: "
                        "benchmarks/ next to the config file, if there is one)")
    p.set_defaults(run=run)


def conftest_files(paths: list[Path], rootdir: Path) -> list[Path]:
    """The conftest.py files pytest loads for ``paths``: those from ``rootdir`` down to each
    path, then every one below it, outermost first."""
    found: list[Path] = []
    for path in paths:
        path = path.resolve()
        if not path.exists():
            raise UsageError(f"benchmark folder {str(path)!r} does not exist")
        folder = path if path.is_dir() else path.parent
        chain = [folder, *folder.parents]
        if rootdir in chain:
            chain = chain[:chain.index(rootdir) + 1]
        else:
            chain = [folder]
        candidates = [d / "conftest.py" for d in reversed(chain)]
        if path.is_dir():
            candidates += sorted(f for f in path.rglob("conftest.py") if f.parent != folder
                                 and not SKIP_DIRS & set(f.relative_to(path).parts))
        found += [f for f in candidates if f.is_file() and f not in found]
    return found


def import_conftests(files: list[Path], rootdir: Path) -> None:
    """Import each conftest.py as pytest's default ``prepend`` import mode would: a file inside
    a package (folders with ``__init__.py``) under its dotted name with the package's parent
    first on ``sys.path``, any other as a module named ``conftest`` with its own folder first."""
    for file in files:
        package = package_root(file)
        base = package.parent if package is not None else file.parent
        parts = file.with_suffix("").relative_to(base).parts
        name = ".".join(parts)
        if str(base) not in sys.path:
            sys.path.insert(0, str(base))
        sys.modules.pop(name, None)
        try:
            if package is not None:
                importlib.import_module(name)
            else:
                spec = importlib.util.spec_from_file_location(name, file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        except UsageError as exc:
            raise UsageError(f"{file}: {exc}") from None
        except Exception as exc:  # the user's code: name the file, keep the reason short
            raise UsageError(f"cannot import {file}: {type(exc).__name__}: {exc}") from None


def package_root(file: Path) -> Path | None:
    """The outermost folder of the package ``file`` is in (folders with ``__init__.py``)."""
    root, folder = None, file.parent
    while (folder / "__init__.py").is_file():
        root, folder = folder, folder.parent
    return root


def pytest_pythonpath(config: Path) -> list[Path]:
    """``[tool.pytest.ini_options] pythonpath`` of the config file, as pytest reads it
    (relative to the file's folder): the conftest files may import modules from there."""
    import tomllib

    if not config.is_file() or config.suffix != ".toml":
        return []
    with open(config, "rb") as f:
        ini = tomllib.load(f).get("tool", {}).get("pytest", {}).get("ini_options", {})
    entries = ini.get("pythonpath", [])
    entries = entries.split() if isinstance(entries, str) else list(entries)
    return [(config.resolve().parent / str(e)).resolve() for e in entries]


def run(args: argparse.Namespace) -> int:
    import sys

    rootdir = args.config.resolve().parent
    for folder in reversed(pytest_pythonpath(args.config)):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    paths = list(args.paths) or [d for d in (rootdir / "benchmarks",) if d.is_dir()]
    import_conftests(conftest_files(paths, rootdir), rootdir)
    if args.all_models:
        return list_models(args.format)
    cli = {name: getattr(args, name, None) for name in OPTIONS}
    settings = Settings.resolve(cli, {}, read_pyproject(args.config))
    from ..plugin import case_params

    rows = []
    for param in case_params(settings):
        reason = next((m.kwargs.get("reason") for m in param.marks if m.name == "skip"), None)
        rows.append({"id": param.id, "skip": reason})
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    width = max((len(r["id"]) for r in rows), default=0)
    for r in rows:
        print(f"{r['id']:<{width}}  " + (f"SKIP: {r['skip']}" if r["skip"] else "runs"))
    runnable = sum(1 for r in rows if not r["skip"])
    print(f"{len(rows)} cases, {runnable} run here, {len(rows) - runnable} skipped "
          f"(device {settings.resolved_device()})")
    return 0


def list_models(fmt: str) -> int:
    """Every registered model spec: name, task, input size, default dataset, and for the
    papers' models the published figures their definitions reproduce."""
    from ..models import MODELS, get_spec
    from ..models.zoo import ZOO

    rows = []
    for name in MODELS.names():
        spec = get_spec(name)
        rows.append({"model": name, "task": spec.task, "input": "x".join(map(str,
                                                                          spec.input_shape)),
                     "dataset": spec.default_dataset, "size": ZOO.get(name, "")})
    if fmt == "json":
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["model"]) for r in rows)
    for r in rows:
        print(f"{r['model']:<{width}}  {r['task']:<8}  {r['input']:<11}  {r['dataset']:<10}  "
              f"{r['size']}")
    return 0
