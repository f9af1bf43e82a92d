"""The same input gives a byte-identical output, with readable, stable per-head names."""

from __future__ import annotations

import re

import onnx

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert


def test_conversion_is_byte_identical_across_runs(tmp_path):
    built = build(AttentionConfig(heads=4, kv_heads=2, rope="rotate_half", layers=2, past=2, past_kv="full", names="opaque"), seed=0)
    src = tmp_path / "m.onnx"
    onnx.save(built.model, src)
    a = convert(src, tmp_path / "a", ConvertOptions(verify=False, name="x"))
    b = convert(src, tmp_path / "b", ConvertOptions(verify=False, name="x"))
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    assert a.mapping_path.read_bytes() == b.mapping_path.read_bytes()
    model = onnx.load(a.model_path)
    per_head = [n.name for n in model.graph.node if n.name.startswith("attn")]
    assert per_head and all(re.match(r"attn\d+\.(h\d+|kv\d+|shared|concat_heads|[a-z_]+)", n) for n in per_head), per_head[:5]
    weights = {t.name for t in model.graph.initializer}
    assert {"attn0.h0.q_proj.weight", "attn0.kv1.k_proj.weight", "attn1.h3.q_proj.weight"} <= weights
