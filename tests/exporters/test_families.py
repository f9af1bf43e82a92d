"""Every major transformer family converts: tiny random-initialised exports (tests/exporters/families.py).

Oracle per case (families.evaluate): the conversion exits 0 with its verification; onnxruntime
on the output equals onnxruntime on the export and the float64 reference interpreter; every
attention core of the output computes one head (counted from run-time score shapes).

A representative subset runs with the exporter suite; the whole matrix runs with
``-m families`` (CI runs it separately). Known failures are xfail with the reason, strict:
a case that starts passing must be moved out of KNOWN.
"""

from __future__ import annotations

import re

import pytest

from tests.exporters.families import DEFAULT, cases, evaluate

pytestmark = pytest.mark.exporters

# Case-id patterns that do not pass yet, with the reason (see docs/support-matrix.md).
KNOWN: dict[str, str] = {}


def _known(case) -> str | None:
    return next((why for pat, why in KNOWN.items() if re.search(pat, case.id)), None)


def _check(case, tmp_path):
    out = evaluate(case, tmp_path)
    if not out.exported:
        pytest.skip(f"the exporter cannot export this case: {out.detail}")
    assert out.converted, out.detail
    assert out.equivalent, out.detail
    assert out.single_head, out.detail
    assert out.inspected, out.detail


@pytest.mark.parametrize("case", DEFAULT, ids=lambda c: c.id)
def test_family_converts(case, tmp_path):
    _check(case, tmp_path)


def _param(case):
    why = _known(case)
    marks = [pytest.mark.families] + ([pytest.mark.xfail(reason=why, strict=True)] if why else [])
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in cases()])
def test_family_matrix(case, tmp_path):
    _check(case, tmp_path)
