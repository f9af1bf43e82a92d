"""The README's compatible-CLI example on real Hugging Face exports, through the console script.

A standard HF export has MatMul projections; the llama3 preset expects Conv (AIMET-prepared)
projections. The run must still convert, verify (the converter's report, and onnxruntime on the
SHA model against the export) and exit 0, with one line saying what differs and which flag gives
the preset's form."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.exporters.hf_models import ExportCase, export

pytestmark = pytest.mark.exporters

BIN = Path(sys.executable).parent
CASES = [
    ExportCase("llama", False, 17, "eager", {"num_key_value_heads": 2}, decode=True),
    ExportCase("qwen2", True, 18, "sdpa", {"num_key_value_heads": 2}),
]


def _converter() -> list[str]:
    path = BIN / "mha2sha-onnx-converter"
    return [str(path)] if path.exists() else [sys.executable, "-m", "mha2sha.compat_cli"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("preset", ["llama3", "qwen2", "mistral"])
def test_readme_example_on_a_hf_export(case, preset, tmp_path):
    feeds = export(case, tmp_path / "export.onnx")
    shutil.move(tmp_path / "export.onnx", tmp_path / "model.onnx")
    proc = subprocess.run([*_converter(), "--exported-model-path", "model.onnx", "--base-llm", preset],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Verification Status OK" in proc.stdout
    notes = [line for line in (proc.stdout + proc.stderr).splitlines() if "Conv projections" in line]
    assert len(notes) == 1 and f"{preset} expects Conv projections" in notes[0] and "add --replace-linear-with-conv" in notes[0], notes
    out = tmp_path / "exported_model"
    report = json.loads((out / "verification_report.json").read_text())
    assert report["status"] == "pass" and all(b["status"] == "pass" for b in report["blocks"])
    found = {e["flag"]: e["found"] for e in report["expectations"]}
    assert found["--handle-rope-ops"] and found["--gqa-model"] and not found["--mha-conv"]
    assert found["--handle-past-key-value"] == case.decode
    # Independent check: onnxruntime on the SHA model equals the export on the same inputs.
    sha = next(out.glob("*_sha.onnx"))
    original = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in original.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    output = "logits" if case.decode else "output"
    expected = original.run([output], feeds)[0]
    session = ort.InferenceSession(str(sha), providers=["CPUExecutionProvider"])
    sha_feeds = {}
    for i in session.get_inputs():
        if i.name in feeds:
            sha_feeds[i.name] = feeds[i.name]
        else:  # a per-head cache input: <cache>_h<k> is kv head k of <cache>, head axis removed
            base, head = i.name.rsplit("_h", 1)
            sha_feeds[i.name] = np.ascontiguousarray(feeds[base][:, int(head)])
    got = session.run([output], sha_feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
