"""Every major transformer family converts: tiny random-initialised exports (tests/exporters/families.py).

Oracle per case (families.evaluate): the conversion exits 0 with its verification; onnxruntime
on the output equals onnxruntime on the export and the float64 reference interpreter; every
attention core of the output computes one head (counted from run-time score shapes); `inspect`
finds every block with its head dim and no LoRA.

A representative subset runs with the exporter suite; the whole matrix runs with
``-m families`` (CI runs it separately). Expected failures come from the last generated
support matrix (docs/support-matrix.json, written by ``python -m tests.exporters.matrix``):
a case recorded as failing is xfail (strict: once it passes, regenerate the matrix) with the
recorded reason; a case without a recorded verdict runs as xfail(strict=False) until the
matrix is regenerated with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.exporters.families import DEFAULT, cases, evaluate

pytestmark = pytest.mark.exporters

RECORD = Path(__file__).resolve().parents[2] / "docs" / "support-matrix.json"
# Failures analysed by hand: the recorded detail says what failed, these say why.
WHY: dict[str, str] = {
    # "<substring of the case id>": "why it fails", for failures understood but not fixed yet.
}


def _recorded() -> dict[str, dict]:
    if not RECORD.exists():
        return {}
    return {r["case"]: r for r in json.loads(RECORD.read_text())}


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


def _param(case, recorded):
    marks = [pytest.mark.families]
    r = recorded.get(case.id)
    if r is None or r.get("not_run"):
        marks.append(pytest.mark.xfail(reason="no recorded verdict in docs/support-matrix.json yet", strict=False))
    elif r["exported"] and not (r["converted"] and r["equivalent"] and r["single_head"] and r.get("inspected", True)):
        why = next((w for key, w in WHY.items() if key in case.id), "")
        marks.append(pytest.mark.xfail(reason=f"{why + ': ' if why else ''}{r['detail'][:300]}", strict=True))
    return pytest.param(case, id=case.id, marks=marks)


_RECORDED = _recorded()


@pytest.mark.parametrize("case", [_param(c, _RECORDED) for c in cases()])
def test_family_matrix(case, tmp_path):
    _check(case, tmp_path)
