"""Benchmarks are not tests: they run only when asked (`pytest bench/ --benchmark-only`)."""

import sys
from pathlib import Path

# bench/ helpers (memory.py) are imported by name; the repo root stays off sys.path (see pyproject.toml).
sys.path.insert(0, str(Path(__file__).resolve().parent))
