"""Helpers several test files use (a test file never imports another test file)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def seeded_cache(root: Path) -> Path:
    """A fresh cache holding only the trained model (copied from the shared cache, trained there
    first if needed) so a test counts exactly the builds of its own run."""
    from pytest_pqbench.config import Settings
    from pytest_pqbench.stages.build import Builder

    shared = Path(os.environ["PQBENCH_CACHE_DIR"])
    settings = Settings.resolve({"workflows": "torch", "pruners": "none"}, {}, {})
    Builder.open(settings, shared).prep.trained(settings.cases()[0])
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(shared / "trained", root / "trained")
    return root
