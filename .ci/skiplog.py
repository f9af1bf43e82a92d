"""pytest plugin (``-p skiplog``, .ci/ on PYTHONPATH): appends the node id of every skipped test,
and of every module skipped whole at collection (``pytest.importorskip`` at module level), to
the file named by MHA2SHA_SKIPPED_LIST. Written by the controlling process only (under
pytest-xdist the workers' reports arrive there too), one id a line, for ``pytest @file``."""

from __future__ import annotations

import os


def _record(report) -> None:
    path = os.environ.get("MHA2SHA_SKIPPED_LIST")
    if not path or not report.skipped or hasattr(report, "wasxfail") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a") as fh:
        fh.write(report.nodeid + "\n")


def pytest_runtest_logreport(report):
    _record(report)


def pytest_collectreport(report):
    _record(report)
