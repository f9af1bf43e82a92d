"""Models whose weights are in an external data file (memory-mapped while converting), for
every projection form: per-head slices that are contiguous rows (Gemm transB, Conv, fused
QKV) as well as strided columns (MatMul). Oracle: onnxruntime on the original model."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert
from tests.llm.helpers import close, run_ort


@pytest.mark.parametrize("overrides", [
    dict(projection="gemm_transb", fused_qkv="split"),
    dict(projection="matmul_bias"),
    dict(layout="nchw"),
    dict(layout="mha_conv", kv_heads=2),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_external_data_models_convert_and_stay_equivalent(tmp_path, overrides):
    cfg = AttentionConfig(heads=4, **{"kv_heads": 4, **overrides}, mlp=True, layers=2)
    built = build(cfg, seed=3)
    path = tmp_path / "m.onnx"
    # As torch.onnx saves: tensors of 1 KiB or more in the data file.
    onnx.save(copy.deepcopy(built.model), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=1024)
    result = convert(path, tmp_path / "out", ConvertOptions())
    assert result.ok, (result.report.get("blocks"), result.report.get("end_to_end"))
    assert result.report["end_to_end"]["status"] == "pass"
    feeds = built.make_feeds(2)
    sha = onnx.load(result.model_path)
    got = run_ort(sha, feeds)
    want = run_ort(built.model, feeds)
    for name in built.output_names:
        assert close(got[name], want[name], rtol=1e-5, atol=1e-5), name
    assert np.isfinite(got["output"]).all()


def test_every_constant_in_the_data_file(tmp_path):
    """Even scalars and shape targets in the data file (onnxruntime refuses to load such a
    model: the end-to-end run is skipped with the reason; per-block checks still run)."""
    built = build(AttentionConfig(heads=4, kv_heads=2, projection="gemm_transb", rope="rotate_half", mlp=False), seed=1)
    path = tmp_path / "m.onnx"
    onnx.save(copy.deepcopy(built.model), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    result = convert(path, tmp_path / "out", ConvertOptions())
    assert result.ok and result.converted_blocks
    assert all(b["status"] == "pass" and b["checks"] for b in result.report["blocks"])
    assert result.report["end_to_end"]["status"] == "not run"
    assert "cannot run the original model" in result.report["end_to_end"]["reason"]
    sha = onnx.load(result.model_path, load_external_data=False)
    assert not [t.name for t in sha.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                and any(e.key == "location" and e.value == "m.onnx.data" for e in t.external_data)]
