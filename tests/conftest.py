"""Shared test configuration: hypothesis profiles and optional-dependency markers.

Profiles (select with HYPOTHESIS_PROFILE=name; default `ci`):
  ci       derandomized, sized so the property suites run in minutes on 2 cores
  dev      random, fewer examples, for quick local iteration
  release  many more examples: the release gate
  debug    as ci, but without shrinking: shows the first failing example fast
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("debug", max_examples=25, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], **_COMMON)
settings.register_profile("release", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# With onnxruntime-qnn installed every verified conversion would add the report's HTP
# section (two HTP runs); the default suite leaves it out, tests/htp (-m htp) puts it back.
os.environ.setdefault("MHA2SHA_NO_HTP", "1")


# Suites that run only when selected by their marker (`pytest -m wheel`): each is its own step of
# .ci/run. In any other run they are skipped with the command that runs them.
OPT_IN_MARKERS = ("wheel",)


def pytest_collection_modifyitems(config, items):
    import pytest

    selected = config.getoption("markexpr") or ""
    for marker in OPT_IN_MARKERS:
        if marker in selected.replace("not " + marker, ""):
            continue
        skip = pytest.mark.skip(reason=f"opt-in suite: run with `pytest -m {marker}` (CI runs it: .ci/run)")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
