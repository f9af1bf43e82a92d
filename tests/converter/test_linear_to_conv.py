"""--replace-linear-with-conv: every MatMul/Gemm with a constant weight becomes a 1x1 Conv,
names are kept (so encodings still match), and the model still computes its closed form."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from fuzz import AttentionConfig, build
from mha2sha.passes.cleanup import cleanup
from mha2sha.passes.linear_to_conv import linear_to_conv
from mha2sha.pipeline import _all_names, split_model
from mha2sha.split.rope import rotation_matrix
from tests.converter.conftest import merge_outputs, run_ort, sha_feeds


def _const_weight_linears(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Projections: MatMul/Gemm by a constant weight, but not RoPE's rotate-half by its
    signed permutation (a reordering of the head's channels, left a MatMul)."""
    inits = {t.name: t for t in model.graph.initializer}

    def rotation(name: str) -> bool:
        w = onnx.numpy_helper.to_array(inits[name])
        return (w.ndim == 2 and w.shape[0] == w.shape[1] and w[0, w.shape[0] // 2] != 0
                and np.array_equal(w, rotation_matrix(w.shape[0], w.dtype) * w[0, w.shape[0] // 2]))

    return [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
            and not rotation(n.input[1])]


@pytest.mark.parametrize(
    "changes",
    [
        dict(projection="matmul"),
        dict(projection="matmul_bias"),
        dict(projection="gemm"),
        dict(projection="gemm_transb", dynamic=True),
        dict(projection="matmul", dynamic=True, batch=2, rope="rotate_half", past=2, past_kv="full"),
        dict(fused_qkv="split", projection="matmul_bias"),
        dict(lora_rank=2),
    ],
)
def test_linear_to_conv_keeps_the_function_and_the_names(changes):
    cfg = AttentionConfig(**{**dict(batch=2, seq=4, hidden=32, heads=4, kv_heads=2, layers=2), **changes})
    built = build(cfg, seed=4)
    feeds = built.make_feeds(1)
    truth = built.reference(feeds)
    model = ir.serde.deserialize_model(built.model)
    result = split_model(model)
    before = ir.serde.serialize_model(model)
    linear_weights = {n.input[1] for n in _const_weight_linears(before)}
    linear_outputs = {n.output[0] for n in _const_weight_linears(before)}
    record = linear_to_conv(model, _all_names(model.graph))
    cleanup(model)
    after = ir.serde.serialize_model(model)
    onnx.checker.check_model(after, full_check=True)
    assert not _const_weight_linears(after), "a MatMul/Gemm with a constant weight is left"
    conv_weights = {n.input[1] for n in after.graph.node if n.op_type == "Conv"}
    assert linear_weights <= conv_weights, "weights keep their names"
    produced = {o for n in after.graph.node for o in n.output}
    # A MatMul followed by its bias Add is one Conv: the Add's output name is kept instead.
    assert record.converted >= len(linear_weights) and len(linear_outputs - produced) <= record.converted
    for w in (t for t in after.graph.initializer if t.name in linear_weights):
        assert len(w.dims) == 4 and w.dims[2:] == [1, 1]
    got = merge_outputs(run_ort(after, sha_feeds(feeds, result)), result)
    for name, expected in truth.items():
        err = float(np.abs(got[name].astype(np.float64) - expected).max()) / max(1.0, float(np.abs(expected).max()))
        assert err < 3e-5, (name, err)
