"""--ar-tokens: a static cached decoder rebuilt for T new tokens per step equals the same
model built by the fuzz builder at T tokens (same weights, context kept or changed): graph
inputs and outputs, onnxruntime outputs, and the closed form. Sizes that merely equal the
number of tokens (head dim, hidden size, heads, batch) are not taken for sequence axes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from fuzz import AttentionConfig, build
from fuzz.strategies import decoder_configs
from mha2sha.ar_tokens import TokensError, rebuild_for_tokens
from tests.llm.helpers import close, run_ort, to_ir


def _io(model: onnx.ModelProto) -> dict[str, list]:
    out = {}
    for v in list(model.graph.input) + list(model.graph.output):
        out[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    return out


def _rebuilt(model: onnx.ModelProto, tokens: int, context: int | None = None, **kwargs) -> tuple[onnx.ModelProto, object]:
    m = to_ir(model)
    report = rebuild_for_tokens(m, tokens, context, **kwargs)
    return ir.serde.serialize_model(m), report


def _check_against_fuzz(cfg: AttentionConfig, tokens: int, context: int | None = None, *, seed: int = 0):
    context = cfg.seq + cfg.past if context is None else context
    original = build(cfg, seed=seed)
    target = build(cfg.with_(seq=tokens, past=context - tokens), seed=seed)
    # Same weights: the fuzz parameters depend on seq / past only through masks.
    a = {i.name: numpy_helper.to_array(i) for i in original.model.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in target.model.graph.initializer}
    weights = [n for n in a if a[n].size > 16 and n in b and a[n].shape == b[n].shape]
    assert all(np.array_equal(a[n], b[n]) for n in weights)
    rebuilt, report = _rebuilt(original.model, tokens, context, mask_fill=cfg.mask_fill)
    onnx.checker.check_model(rebuilt, full_check=True)  # value_info consistent with the graph
    assert _io(rebuilt) == _io(target.model)
    feeds = target.make_feeds(7)
    got = run_ort(rebuilt, feeds)
    want = run_ort(target.model, feeds)
    truth = target.reference(feeds)
    tol = 2e-3 if cfg.dtype == "float16" else 1e-5
    for name in target.output_names:
        assert got[name].shape == truth[name].shape, name
        assert close(got[name], want[name], rtol=tol, atol=tol), name
        assert close(got[name], truth[name], rtol=20 * tol, atol=20 * tol), name
    return report


STATIC = dict(dynamic=False, past_kv="full", mask="causal", mlp=False)
CASES = {
    "llama_gqa_rope_4to1": (dict(rope="rotate_half", heads=4, kv_heads=2), 4, 4, 1, None),
    "head_dim_equals_seq_4to1": (dict(rope="rotate_half", heads=4, kv_heads=2, head_dim=4, hidden=16), 4, 4, 1, None),
    "head_dim_equals_seq_4to6": (dict(rope="rotate_half", heads=4, kv_heads=2, head_dim=4, hidden=16), 4, 4, 6, None),
    "head_dim_equals_new_tokens": (dict(heads=4, head_dim=4, hidden=16, reshape_minus_one=True, projection="gemm_transb"), 6, 2, 4, None),
    "hidden_equals_seq": (dict(heads=2, kv_heads=2, head_dim=4, hidden=8), 8, 4, 4, None),
    "folded_heads_gemm": (dict(projection="gemm", head_split="folded", reshape_minus_one=True), 4, 4, 1, None),
    "mha_conv_tile_alibi_relbias": (dict(layout="mha_conv", kv_heads=2, gqa_repeat="tile", relative_bias=True, alibi=True), 4, 4, 2, None),
    "transposed_key_additive_mask": (dict(mask="additive_input", past_kv="full_transposed_key", heads=4, head_dim=4, hidden=16), 4, 4, 2, None),
    "new_only_sliding_window_more_tokens": (dict(mask="sliding_window", window=3, past_kv="new_only"), 4, 4, 6, None),
    "broadcast_gqa_half_split_bool_mask": (dict(rope="half_split", gqa_repeat="broadcast", kv_heads=2, mask="bool_input"), 4, 4, 2, None),
    "attention_op_padding_mask": (dict(mask="causal_padding_input", attention_op=True), 4, 4, 2, None),
    "rotary_op": (dict(rope="rotary_op", heads=4, head_dim=4, hidden=16), 4, 4, 2, None),
    "two_layers_batch_2_fused_kt": (dict(head_split="fused_kt", layers=2, batch=2, mlp=True), 4, 4, 3, None),
    "decode_export_to_4_tokens": (dict(rope="rotate_half", past_kv="new_only"), 1, 7, 3, None),
    "longer_context": (dict(rope="rotate_half", alibi=True), 4, 4, 2, 12),
    "shorter_context": (dict(rope="rotate_half", mask="sliding_window", window=3), 4, 6, 3, 6),
    "float16_layer_norm": (dict(dtype="float16", norm="layer", softmax_cast=True, nan_guard=True), 4, 4, 2, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rebuilt_model_equals_the_model_built_for_those_tokens(case):
    fields, seq, past, tokens, context = CASES[case]
    cfg = AttentionConfig(**{**STATIC, "seq": seq, "past": past, **fields})
    _check_against_fuzz(cfg, tokens, context)


def test_head_dim_equal_to_seq_is_not_a_sequence_axis():
    cfg = AttentionConfig(**{**STATIC, "seq": 4, "past": 4, "heads": 4, "kv_heads": 4, "head_dim": 4, "hidden": 16})
    report = _check_against_fuzz(cfg, 1)
    assert report.inputs["past_key_0"] == ([1, 4, 4, 4], [1, 4, 7, 4])  # [B, H, P, D]: D stays 4
    assert report.inputs["hidden_states"] == ([1, 4, 16], [1, 1, 16])


@settings(max_examples=15)
@given(decoder_configs(dynamic=False, dtype="float32", seq=st.integers(2, 6), past=st.integers(1, 5), past_kv=st.sampled_from(["full", "new_only", "full_transposed_key"]), layers=1, batch=st.integers(1, 2), lora_rank=0), st.data())
def test_rebuild_property(cfg, data):
    tokens = data.draw(st.integers(1, cfg.seq + cfg.past - 1), label="tokens")
    note(f"{cfg!r} -> tokens={tokens}")
    _check_against_fuzz(cfg, tokens)


def _self_consistent(cfg: AttentionConfig, tokens: int):
    """The rebuilt model on the last ``tokens`` tokens, with the cache of the original model
    after the first ones, gives the original model's last rows (the original is the oracle)."""
    built = build(cfg, seed=1)
    rebuilt, _ = _rebuilt(built.model, tokens)
    feeds = built.make_feeds(2)
    full = run_ort(built.model, feeds)
    first = cfg.seq - tokens
    feeds2 = {"hidden_states": feeds["hidden_states"][:, first:]}
    for layer in range(cfg.layers):
        feeds2[f"past_key_{layer}"] = full[f"present_key_{layer}"][:, :, : cfg.past + first]
        feeds2[f"past_value_{layer}"] = full[f"present_value_{layer}"][:, :, : cfg.past + first]
    got = run_ort(rebuilt, feeds2)
    assert close(got["output"], full["output"][:, first:], rtol=1e-5, atol=1e-5)
    for layer in range(cfg.layers):
        assert close(got[f"present_key_{layer}"], full[f"present_key_{layer}"], rtol=1e-5, atol=1e-5)


def test_fewer_tokens_keep_the_last_rows_of_any_constant_mask():
    """A per-head bias drawn at random (not a function of relative position) is still right for
    fewer tokens: rows are absolute query positions."""
    cfg = AttentionConfig(**{**STATIC, "seq": 5, "past": 3, "mask": "per_head", "heads": 2, "kv_heads": 2})
    _self_consistent(cfg, 2)
    with pytest.raises(TokensError, match="relative position"):
        _rebuilt(build(cfg, seed=1).model, 7)


def test_decode_export_needs_the_mask_fill_for_future_positions():
    cfg = AttentionConfig(**{**STATIC, "seq": 1, "past": 7})
    model = build(cfg).model
    with pytest.raises(TokensError, match="mask_fill"):
        _rebuilt(model, 4)
    _check_against_fuzz(cfg, 4)  # with the fill


def test_refusals_leave_clear_reasons():
    dynamic = build(AttentionConfig(dynamic=True, past=2, past_kv="full")).model
    with pytest.raises(TokensError, match="symbolic"):
        _rebuilt(dynamic, 1)
    encoder = build(AttentionConfig(dynamic=False, mask="none")).model
    with pytest.raises(TokensError, match="no KV cache"):
        _rebuilt(encoder, 1)
    cached = build(AttentionConfig(**{**STATIC, "seq": 4, "past": 4})).model
    for tokens, context in ((0, None), (8, None), (9, None), (3, 3)):
        with pytest.raises(TokensError):
            _rebuilt(cached, tokens, context)


def test_trilu_mask_is_refused_not_miscomputed():
    """A mask made at run time by Trilu depends on the shape in a way a rebuild cannot keep."""
    cfg = AttentionConfig(**{**STATIC, "seq": 4, "past": 4, "mask": "none"})
    model = build(cfg).model
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    scores = softmax.input[0]
    graph.node.insert(list(graph.node).index(softmax), onnx.helper.make_node("Trilu", [scores], ["tri"], upper=0))
    softmax.input[0] = "tri"
    with pytest.raises(TokensError, match="Trilu"):
        _rebuilt(model, 2)


def test_rows_of_absolute_positions_are_not_kept_when_the_context_changes():
    """A constant with one row per new token (RoPE angles or position ids folded by the exporter
    for positions past .. past + S - 1): for fewer tokens in the same context its last rows are
    the new tokens' rows; in another context the new tokens sit at positions the constant does
    not hold, so the rebuild refuses instead of keeping rows of the wrong positions."""
    from mha2sha.ar_tokens import _rebuild_array

    positions = np.arange(5, 8, dtype=np.float32)[:, None] * np.array([[1.0, 0.5]], np.float32)  # [S=3, 2]
    kept = _rebuild_array(positions, 0, None, 3, 8, 1, 8, None, "angles", None)
    np.testing.assert_array_equal(kept, positions[2:])  # position 7 = context - 1
    with pytest.raises(TokensError, match="context changes"):
        _rebuild_array(positions, 0, None, 3, 8, 1, 12, None, "angles", None)
    with pytest.raises(TokensError, match="one row for the one token"):
        _rebuild_array(positions[2:], 0, None, 1, 8, 3, 8, None, "angles", None)
    bias = np.ones((3, 2), np.float32)  # the same for every token: any number of tokens, any context
    np.testing.assert_array_equal(_rebuild_array(bias, 0, None, 3, 8, 5, 12, None, "bias", None), np.ones((5, 2)))
