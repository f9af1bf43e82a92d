"""The verification report's HTP section (present when onnxruntime-qnn is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.htp import helpers

pytestmark = pytest.mark.htp


def test_report_has_an_htp_section(tmp_path):
    model, encodings = helpers.example("llama3-tiny", tmp_path / "in")
    helpers.convert(model, tmp_path / "out", "-e", str(encodings))
    report = json.loads((tmp_path / "out" / "verification_report.json").read_text())
    section = report["htp"]
    assert section["status"] == "pass"
    for key in ("mha", "sha"):
        assert section[key]["runs_whole"] is True
        assert section[key]["runlist"] > 0 and section[key]["ddr_read"] > 0
        assert section[key]["spill"] == 0
    assert all(v < 0.05 for v in section["max_abs_sha_vs_mha"].values()), section["max_abs_sha_vs_mha"]
    md = (tmp_path / "out" / "verification_report.md").read_text()
    assert "## HTP (onnxruntime-qnn): pass" in md and f"| SHA | yes | {section['sha']['runlist']} |" in md


def test_report_names_what_htp_rejects(tmp_path):
    """A model QNN cannot take whole: the section says so, with the node and QNN's reason."""
    from mha2sha import htp

    model, encodings = helpers.example("sd21-attn", tmp_path / "in")
    sha = helpers.convert(model, tmp_path / "out", "-e", str(encodings))
    import onnx
    from onnx import helper

    m = onnx.load(str(sha))
    # A float standalone DequantizeLinear with a per-channel scale: QNN EP refuses it.
    m.graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").zeros((2, 3), "int8"), "dq_x"))
    m.graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").ones(3, "float32"), "dq_s"))
    m.graph.node.append(helper.make_node("DequantizeLinear", ["dq_x", "dq_s"], ["dq_y"], name="lonely_dq", axis=1))
    m.graph.output.append(helper.make_tensor_value_info("dq_y", onnx.TensorProto.FLOAT, [2, 3]))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    feeds, sha_feeds, _ = helpers.feeds_for(model, sha)
    result = htp.run(bad, sha_feeds)
    assert not result.runs_whole
    assert any("lonely_dq" in r and "per-channel" in r for r in result.rejected), result.rejected


def test_no_htp_section_when_disabled(tmp_path):
    model, encodings = helpers.example("gpt2-tiny", tmp_path / "in")
    env = {**os.environ, "MHA2SHA_NO_HTP": "1"}
    subprocess.run([sys.executable, "-m", "mha2sha", "convert", str(model), "-o", str(tmp_path / "out")], check=True,
                   capture_output=True, env=env)
    assert "htp" not in json.loads((tmp_path / "out" / "verification_report.json").read_text())
