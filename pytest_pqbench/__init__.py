"""pytest-pqbench: benchmark what pruning and quantization buy you, as pytest-benchmark tests."""

from __future__ import annotations

__version__ = "0.1.0"

SCHEMA_VERSION = 1
