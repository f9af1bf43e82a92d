"""refimpl.functional against onnxruntime running the equivalent ONNX ops, and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from onnx import helper

import refimpl.functional as F
from tests.refimpl.ort_helpers import run_graph, ulp_tolerance

rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def attention_shapes(draw):
    b = draw(st.integers(1, 2))
    kv = draw(st.integers(1, 3))
    h = kv * draw(st.integers(1, 3))
    s = draw(st.integers(1, 5))
    past = draw(st.integers(0, 3))
    d = draw(st.sampled_from([2, 4, 8]))
    return b, h, kv, s, s + past, d


@given(attention_shapes(), st.sampled_from(["none", "float", "bool", "causal"]), st.booleans())
def test_sdpa_matches_onnx_attention_op(shape, mask_kind, explicit_scale):
    b, h, kv, s, t, d = shape
    note(f"shape={shape} mask={mask_kind}")
    q, k, v = randn(b, h, s, d), randn(b, kv, t, d), randn(b, kv, t, d)
    feeds = {"q": q, "k": k, "v": v}
    attrs = {}
    kwargs = {}
    if explicit_scale:
        attrs["scale"] = 0.3
        kwargs["scale"] = 0.3
    inputs = ["q", "k", "v"]
    if mask_kind == "float":
        m = randn(1, h, s, t)
        feeds["m"] = m
        inputs.append("m")
        kwargs["mask"] = m
    elif mask_kind == "bool":
        m = rng.random((b, 1, s, t)) < 0.7
        m[..., -1] = True
        feeds["m"] = m
        inputs.append("m")
        kwargs["mask"] = m
    elif mask_kind == "causal":
        attrs["is_causal"] = 1
        kwargs.update(is_causal=True, causal_offset=0)
    (expected,), _ = run_graph([helper.make_node("Attention", inputs, ["y"], **attrs)], feeds, ["y"], opset=23)
    got = F.scaled_dot_product_attention(q, k, v, **kwargs)
    rows_all_masked = np.zeros(got.shape[:-1], bool)
    if mask_kind == "causal" and t > s:
        pass
    np.testing.assert_allclose(got[~rows_all_masked], expected[~rows_all_masked], atol=ulp_tolerance(expected), rtol=0)


def test_sdpa_fully_masked_row_is_nan_as_documented():
    q, k, v = randn(1, 1, 2, 4), randn(1, 1, 3, 4), randn(1, 1, 3, 4)
    mask = np.array([[True, True, True], [False, False, False]])
    out = F.scaled_dot_product_attention(q, k, v, mask=mask)
    assert np.isfinite(out[0, 0, 0]).all() and np.isnan(out[0, 0, 1]).all()


def test_causal_alignment():
    assert F.causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert F.causal_mask(2, 4, offset=0).tolist() == [[True, False, False, False], [True, True, False, False]]


@given(st.sampled_from(["half_split", "interleaved"]), st.integers(1, 2), st.integers(1, 3), st.sampled_from([4, 8]), st.booleans())
def test_rotary_matches_onnx_rotary_embedding(form, b, s, d, partial):
    h = 2
    rot = d // 2 if partial else d
    x = randn(b, h, s, d)
    angles = rng.random((b, s, rot // 2)).astype(np.float32) * 3
    cos, sin = np.cos(angles), np.sin(angles)
    node = helper.make_node("RotaryEmbedding", ["x", "c", "s"], ["y"], interleaved=int(form == "interleaved"), rotary_embedding_dim=rot if partial else 0)
    (expected,), _ = run_graph([node], {"x": x, "c": cos, "s": sin}, ["y"], opset=23)
    got = F.rotary_embedding(x, cos[:, None], sin[:, None], form=form, rotary_dim=rot)
    np.testing.assert_allclose(got, expected, atol=ulp_tolerance(expected), rtol=0)


def test_rotate_half_equals_half_split_with_duplicated_angles():
    x = randn(1, 2, 3, 8)
    angles = rng.random((1, 1, 3, 4))
    cos, sin = np.cos(angles), np.sin(angles)
    full = F.rotary_embedding(x, np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1), form="rotate_half")
    half = F.rotary_embedding(x, cos, sin, form="half_split")
    np.testing.assert_allclose(full, half, atol=1e-6)


def test_rotate_half_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    cos = np.zeros(4)
    sin = np.ones(4)
    # x*cos + concat(-x2, x1)*sin = [-3, -4, 1, 2]
    assert F.rotary_embedding(x[None], cos, sin).tolist() == [[-3.0, -4.0, 1.0, 2.0]]


def test_alibi_slopes_by_hand():
    assert np.allclose(F.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    # 6 heads: slopes of 4 heads (2^-2 ... 2^-8) then every other slope of 8 heads: 2^-0.5, 2^-1.5
    expected = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert np.allclose(F.alibi_slopes(6), expected)
    bias = F.alibi_bias(np.array([0.5]), q_len=2, k_len=3)
    # query i sits at position i + (T - S); bias = slope * (key position - query position)
    assert bias.tolist() == [[[-0.5, 0.0, 0.5], [-1.0, -0.5, 0.0]]]


@given(st.booleans(), st.booleans(), st.sampled_from([1.0, 0.5]), st.sampled_from([1.0, 2.0]))
def test_linear_matches_gemm(ta, tb, alpha, beta):
    a = randn(3, 4) if not ta else randn(4, 3)
    w = randn(4, 5) if not tb else randn(5, 4)
    c = randn(5)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transA=int(ta), transB=int(tb), alpha=alpha, beta=beta)
    (expected,), _ = run_graph([node], {"a": a, "w": w, "c": c}, ["y"])
    got = F.linear(a, w, c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
    np.testing.assert_allclose(got, expected, atol=ulp_tolerance(expected), rtol=0)


@st.composite
def conv_cases(draw):
    group = draw(st.sampled_from([1, 2]))
    c = group * draw(st.integers(1, 2))
    m = group * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh + 2, 7)), draw(st.integers(kw + 2, 7))
    return dict(c=c, m=m, kh=kh, kw=kw, h=h, w=w, group=group, stride=draw(st.integers(1, 2)), dil=draw(st.integers(1, 2)), pad=draw(st.integers(0, 1)))


@given(conv_cases())
def test_conv2d_matches_onnx_conv(case):
    note(str(case))
    x = randn(2, case["c"], case["h"], case["w"])
    w = randn(case["m"], case["c"] // case["group"], case["kh"], case["kw"])
    b = randn(case["m"])
    p = case["pad"]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=case["group"], strides=[case["stride"]] * 2, dilations=[case["dil"]] * 2, pads=[p] * 4)
    try:
        (expected,), _ = run_graph([node], {"x": x, "w": w, "b": b}, ["y"])
    except Exception:
        pytest.skip("onnxruntime rejects this geometry (output would be empty)")
    got = F.conv2d(x, w, b, strides=(case["stride"],) * 2, pads=(p,) * 4, dilations=(case["dil"],) * 2, group=case["group"])
    np.testing.assert_allclose(got, expected, atol=ulp_tolerance(expected), rtol=0)


def test_norms_match_onnx():
    x = randn(2, 3, 8)
    g, b = randn(8), randn(8)
    (ln,), _ = run_graph([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5)], {"x": x, "g": g, "b": b}, ["y"])
    np.testing.assert_allclose(F.layer_norm(x, g, b, eps=1e-5), ln, atol=1e-5)
    (rms,), _ = run_graph([helper.make_node("RMSNormalization", ["x", "g"], ["y"], epsilon=1e-6)], {"x": x, "g": g}, ["y"], opset=23)
    np.testing.assert_allclose(F.rms_norm(x, g, eps=1e-6), rms, atol=1e-5)


def test_softmax_and_lora():
    x = randn(2, 3, 5)
    (sm,), _ = run_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {"x": x}, ["y"])
    np.testing.assert_allclose(F.softmax(x), sm, atol=1e-6)
    a, bb = randn(5, 2), randn(2, 4)
    alpha = np.array(0.25, np.float32)
    (y,), _ = run_graph([helper.make_node("MatMul", ["x", "a"], ["xa"]), helper.make_node("MatMul", ["xa", "b"], ["xab"]), helper.make_node("Mul", ["xab", "al"], ["y"])], {"x": x, "a": a, "b": bb, "al": alpha}, ["y"])
    np.testing.assert_allclose(F.lora_delta(x, a, bb, alpha=0.25), y, atol=1e-5)
    assert math.isclose(float(F.softmax(np.array([0.0, math.log(3.0)]))[1]), 0.75)
