"""Fixtures for command-line tests: small models written to disk, with external data."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from llama_gen import generate  # noqa: E402


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """A 1-layer GQA Llama-shaped model with its weights in an external data file."""
    return generate(tmp_path / "in", layers=1, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=50, name="tiny")
