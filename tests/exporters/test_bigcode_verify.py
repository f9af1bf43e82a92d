"""GPT-BigCode / StarCoder prefill: the fused QKV is MatMul -> Add -> Unsqueeze -> Split and
the K/V heads are repeated by Unsqueeze -> Expand -> Reshape. The conversion is right, and
the per-block verification must say so: every extracted block is valid ONNX (it was not:
"Duplicate definition of name ..._Split_output_1", a false alarm), checked per block
against the float64 truth, with the correspondence the converter wrote and with the one
derived by structure."""

from __future__ import annotations

import onnx
import pytest

from mha2sha.api import ConvertOptions, convert
from mha2sha.cli import main
from tests.exporters.hf_models import ExportCase, export

pytestmark = pytest.mark.exporters


@pytest.mark.parametrize("multi_query", [True, False])
def test_bigcode_fused_qkv_verified_per_block(tmp_path, multi_query, capsys):
    path = tmp_path / "bigcode.onnx"
    export(ExportCase("gpt_bigcode", False, 17, "eager", {"multi_query": multi_query}), path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "Split" in ops and "Expand" in ops  # the pattern this test is about
    result = convert(path, tmp_path / "out", ConvertOptions())
    assert result.ok, result.report["verdict"]
    assert len(result.report["blocks"]) == 2
    assert all(b["status"] == "pass" and not b["error"] and b["truth"] == "float64" for b in result.report["blocks"])
    code = main(["verify", str(path), str(result.model_path), "-o", str(tmp_path / "v")])
    out = capsys.readouterr().out
    assert code == 0 and "overall: PASS" in out and out.count(" pass ") >= 2, out
