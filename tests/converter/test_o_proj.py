"""--optimize-o-proj: the heads are laid out for a Conv o_proj one by one and concatenated on
its channel axis. Oracles: the fuzz closed form and onnxruntime on the original model; the
verification report (per block, end to end, simulated quantization) must pass."""

from __future__ import annotations

import json

import onnx
import pytest

from fuzz import AttentionConfig, build, make_encodings
from mha2sha.api import ConvertOptions, convert
from mha2sha.graph.io import load_model
from mha2sha.pipeline import split_model
from tests.llm.helpers import close, merge_outputs, run_ort, sha_feeds


def _conv_inputs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    producers = {o: n for n in model.graph.node for o in n.output}
    return [producers.get(n.input[0]) for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("cfg,options", [
    (AttentionConfig(layout="mha_conv", heads=4, kv_heads=2, rope="rotate_half", layers=2, mlp=False), {}),
    (AttentionConfig(heads=4, kv_heads=4, projection="matmul_bias", mlp=False), {"replace_linear_with_conv": True}),
    (AttentionConfig(layout="mha_conv", heads=4, kv_heads=2, past=3, past_kv="full", lora_rank=2, mlp=False), {}),
], ids=["mha_conv_gqa_rope", "linear_to_conv", "mha_conv_cache_lora"])
def test_heads_concatenated_on_the_conv_channel_axis(tmp_path, cfg, options):
    built = build(cfg, seed=5)
    onnx.save(built.model, tmp_path / "m.onnx")
    make_encodings(built, version="1.0.0", seed=1).write(tmp_path / "m.encodings")
    result = convert(tmp_path / "m.onnx", tmp_path / "out", ConvertOptions(encodings=tmp_path / "m.encodings", optimize_o_proj=True, **options))
    assert result.ok, json.dumps(result.report["blocks"], default=str)[:2000]
    assert len(result.report["optimize_o_proj"]["rewritten"]) == cfg.layers
    assert any(c["check"].startswith("quant_sim") for b in result.report["blocks"] for c in b["checks"])
    sha = onnx.load(result.model_path)
    merged = [n for n in _conv_inputs(sha) if n is not None and n.op_type == "Concat"]
    assert len(merged) == cfg.layers  # the o_proj of each layer reads the head Concat directly
    producers = {o: n for n in sha.graph.node for o in n.output}
    for concat in merged:
        assert all(producers[i].op_type in ("Transpose", "Unsqueeze", "Reshape", "Squeeze") for i in concat.input)
    feeds = built.make_feeds(3)
    # The same split in memory gives the per-head cache I/O names, to feed and reassemble them.
    split = split_model(load_model(tmp_path / "m.onnx").model)
    got = merge_outputs(run_ort(sha, sha_feeds(feeds, split)), split)
    truth = built.reference(feeds)
    for name in built.output_names:
        assert close(got[name], truth[name], rtol=1e-4, atol=1e-4), name


def test_nchw_and_encoded_merges_are_kept_with_the_reason(tmp_path):
    built = build(AttentionConfig(layout="nchw", heads=4, kv_heads=4, mlp=False), seed=2)
    onnx.save(built.model, tmp_path / "nchw.onnx")
    result = convert(tmp_path / "nchw.onnx", tmp_path / "out1", ConvertOptions(optimize_o_proj=True))
    assert result.ok and not result.report["optimize_o_proj"]["rewritten"]
    assert result.report["optimize_o_proj"]["kept"][0][1] == "the head Concat feeds the Conv directly already"

    built = build(AttentionConfig(layout="mha_conv", heads=4, kv_heads=4, mlp=False), seed=2)
    onnx.save(built.model, tmp_path / "m.onnx")
    plain = convert(tmp_path / "m.onnx", tmp_path / "plain", ConvertOptions())
    sha = onnx.load(plain.model_path)
    concat = next(n for n in sha.graph.node if n.op_type == "Concat" and n.name.endswith("concat_heads"))
    enc = make_encodings(built, version="1.0.0", seed=0)
    content = json.loads(json.dumps(enc.content))
    entry = dict(content["activation_encodings"][0], name=concat.output[0])
    content["activation_encodings"].append(entry)
    (tmp_path / "m.encodings").write_text(json.dumps(content))
    result = convert(tmp_path / "m.onnx", tmp_path / "out2", ConvertOptions(encodings=tmp_path / "m.encodings", optimize_o_proj=True))
    assert result.ok
    assert result.report["optimize_o_proj"]["kept"][0][1] == "the merged or a laid-out activation has an encoding of its own"
