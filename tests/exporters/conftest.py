from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Exporter tests run when torch and transformers are importable (CI installs them)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        missing = None
    except ImportError as exc:
        missing = f"torch/transformers not installed ({exc.name}); `pip install torch==2.13.0 transformers` to run"
    if "families" not in (config.option.markexpr or ""):
        # The whole family matrix is long: CI runs it on its own (`pytest -m families`).
        matrix = [item for item in items if "families" in item.keywords]
        if matrix:
            config.hook.pytest_deselected(items=matrix)
            items[:] = [item for item in items if "families" not in item.keywords]
    for item in items:
        if "exporters" in item.keywords and missing:
            item.add_marker(pytest.mark.skip(reason=missing))
