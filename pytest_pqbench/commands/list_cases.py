"""``pqbench list``: the cases the current configuration would run, with skip reasons."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import OPTIONS, Settings, read_pyproject


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the cases of the configured matrix, with skip reasons")
    p.add_argument("--config", type=Path, default=Path("pyproject.toml"),
                   help="pyproject.toml whose [tool.pqbench] to read (default: ./pyproject.toml)")
    for name, (kind, _, help_text) in OPTIONS.items():
        if kind in ("list", "ints", "str", "int") and name in (
                "models", "pruners", "workflows", "precisions", "batch_sizes", "device"):
            p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=help_text)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
