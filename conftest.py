"""Repository-wide pytest setup: one artefact cache for the unit tests, the suite and pytester
runs, so a model trained once is reused (override with PQBENCH_CACHE_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PQBENCH_CACHE_DIR", str(Path(__file__).parent / ".pqbench-cache"))
