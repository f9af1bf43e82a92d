"""HTP suite (marker ``htp``): the converted models on Qualcomm's HTP backend.

Runs with ``pytest -m htp tests/htp`` (CI installs onnxruntime-qnn==2.7.0 for it); outside
that selection the tests are skipped, so that the default run stays fast. Without
onnxruntime-qnn they skip with the reason.
"""

from __future__ import annotations

import os

import pytest

from mha2sha import htp


def pytest_collection_modifyitems(config, items):
    selected = "htp" in (config.getoption("-m") or "")
    if selected and os.environ.get("MHA2SHA_NO_HTP") == "1":
        del os.environ["MHA2SHA_NO_HTP"]  # set by tests/conftest.py for the default run
    missing = htp.unavailable_reason()
    for item in items:
        if "htp" not in item.keywords:
            continue
        if not selected:
            item.add_marker(pytest.mark.skip(reason="HTP suite: run with `pytest -m htp tests/htp`"))
        elif missing:
            item.add_marker(pytest.mark.skip(reason=missing))
