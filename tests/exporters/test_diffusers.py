"""A diffusers transformer block (self- and cross-attention), exported with torch.onnx."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from mha2sha.pipeline import split_model

pytestmark = pytest.mark.exporters


@pytest.mark.parametrize("dynamo", [False, True])
def test_basic_transformer_block_converts(tmp_path, dynamo):
    pytest.importorskip("diffusers", reason="diffusers not installed")
    import torch
    from diffusers.models.attention import BasicTransformerBlock

    torch.manual_seed(0)
    block = BasicTransformerBlock(dim=64, num_attention_heads=4, attention_head_dim=16, cross_attention_dim=32).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "to_q" in name or "to_k" in name:
                p.mul_(3.0)
    x = torch.randn(2, 9, 64)
    ctx = torch.randn(2, 5, 32)
    path = tmp_path / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(block, (x, None, ctx), str(path), input_names=["hidden_states", "encoder_hidden_states"], output_names=["out"], opset_version=18 if dynamo else 17, dynamo=dynamo)
    feeds = {"hidden_states": x.numpy(), "encoder_hidden_states": ctx.numpy()}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    (expected,) = sess.run(None, feeds)
    model = ir.load(path)
    result = split_model(model)
    assert len(result.converted) == 2, [(b.anchor, b.reason) for b in result.blocks]
    out = tmp_path / "sha.onnx"
    ir.save(model, out, external_data="sha.onnx.data")
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
