"""refimpl.functional against hand-computed cases and against onnxruntime running the
equivalent ONNX op(s). Each function is evaluated in float32 and float64; both must agree
with float32 onnxruntime to a few float32 ulps (scaled by the result's magnitude)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from onnx import helper

import refimpl.functional as F
from tests.refimpl.ort_helpers import assert_close, run_graph

seeds = st.integers(0, 2**32 - 1)


def both_precisions(fn, *arrays, **kwargs):
    """fn on float32 inputs and on the same values in float64."""
    return fn(*arrays, **kwargs), fn(*(a.astype(np.float64) if a.dtype == np.float32 else a for a in arrays), **kwargs)


# -- softmax ----------------------------------------------------------------------------


@given(seeds, st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_softmax_and_log_softmax_match_onnxruntime(seed, shape, data):
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(np.float32)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    (sm, lsm), _ = run_graph(
        [helper.make_node("Softmax", ["x"], ["sm"], axis=axis), helper.make_node("LogSoftmax", ["x"], ["lsm"], axis=axis)],
        {"x": x}, ["sm", "lsm"], opset=13,
    )
    for got in both_precisions(F.softmax, x, axis=axis):
        assert_close(got, sm, ulps=8, what="softmax")
    for got in both_precisions(F.log_softmax, x, axis=axis):
        assert_close(got, lsm, ulps=8, magnitude=8.0, what="log_softmax")


def test_softmax_by_hand_and_fully_masked_rows():
    assert F.softmax(np.array([0.0, math.log(3.0)])).tolist() == pytest.approx([0.25, 0.75])
    x = np.array([[0.0, -np.inf, 0.0], [-np.inf, -np.inf, -np.inf]])
    assert F.softmax(x)[0].tolist() == [0.5, 0.0, 0.5]
    assert np.isnan(F.softmax(x)[1]).all()  # ONNX and onnxruntime: NaN
    (ort_out,), _ = run_graph([helper.make_node("Softmax", ["x"], ["y"])], {"x": x.astype(np.float32)}, ["y"])
    assert np.isnan(ort_out[1]).all()
    assert F.softmax(x, nan_to_zero=True).tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]


def test_log_softmax_is_exact_where_log_of_softmax_underflows():
    x = np.array([0.0, -200.0], np.float32)
    assert F.log_softmax(x).tolist() == [0.0, -200.0]  # log(softmax) would give -inf


# -- attention --------------------------------------------------------------------------


def test_causal_mask_alignment_by_hand():
    assert F.causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert F.causal_mask(2, 4, offset=0).tolist() == [[True, False, False, False], [True, True, False, False]]
    assert F.causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert not F.causal_mask(2, 2, offset=-1)[0].any()


def test_gqa_query_head_reads_kv_head_h_over_group():
    # Uniform attention (q = 0): each output is the mean of its kv head's values, which are
    # constant per kv head, so the output names the kv head each query head read.
    b, h, kv, s, t, d = 1, 6, 3, 2, 4, 2
    q = np.zeros((b, h, s, d))
    k = np.random.default_rng(0).standard_normal((b, kv, t, d))
    v = np.broadcast_to(np.arange(kv, dtype=np.float64)[None, :, None, None], (b, kv, t, d))
    out = F.scaled_dot_product_attention(q, k, v)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_sdpa_by_hand():
    # One query, two keys: scores [1, 0] * scale 1 -> softmax [e/(e+1), 1/(e+1)].
    q = np.array([[[[1.0, 0.0]]]])
    k = np.array([[[[1.0, 0.0], [0.0, 1.0]]]])
    v = np.array([[[[10.0], [20.0]]]])
    p = math.e / (math.e + 1)
    assert F.scaled_dot_product_attention(q, k, v, scale=1.0)[0, 0, 0, 0] == pytest.approx(10 * p + 20 * (1 - p))
    # An additive mask of -inf on the first key leaves the second.
    mask = np.array([-np.inf, 0.0])
    assert F.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)[0, 0, 0, 0] == 20.0
    # softcap 0.5: scores 0.5 tanh(2), 0.
    capped = 0.5 * math.tanh(2.0)
    p = math.exp(capped) / (math.exp(capped) + 1)
    assert F.scaled_dot_product_attention(q, k, v, scale=1.0, softcap=0.5)[0, 0, 0, 0] == pytest.approx(10 * p + 20 * (1 - p))


def test_sdpa_fully_masked_rows():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 1, 2, 4)), rng.standard_normal((1, 1, 3, 4)), rng.standard_normal((1, 1, 3, 4))
    mask = np.array([[True, True, True], [False, False, False]])
    out = F.scaled_dot_product_attention(q, k, v, mask=mask)
    assert np.isfinite(out[0, 0, 0]).all() and np.isnan(out[0, 0, 1]).all()
    zeroed = F.scaled_dot_product_attention(q, k, v, mask=mask, nan_to_zero=True)
    assert np.array_equal(zeroed[0, 0, 0], out[0, 0, 0]) and not zeroed[0, 0, 1].any()


@st.composite
def attention_cases(draw):
    kv = draw(st.integers(1, 3), label="kv_heads")
    case = dict(
        b=draw(st.integers(1, 2), label="batch"),
        kv=kv,
        h=kv * draw(st.integers(1, 3), label="group"),
        s=draw(st.integers(1, 5), label="q_len"),
        past=draw(st.integers(0, 3), label="past"),
        d=draw(st.sampled_from([2, 4, 8]), label="head_dim"),
        dv=draw(st.sampled_from([3, 4]), label="value_dim"),
        mask=draw(st.sampled_from(["none", "float", "bool", "causal", "causal+bool"]), label="mask"),
        scale=draw(st.sampled_from([None, 0.3]), label="scale"),
        softcap=draw(st.sampled_from([0.0, 0.0, 2.5]), label="softcap"),
        seed=draw(seeds),
    )
    return case


@given(attention_cases())
def test_sdpa_matches_onnx_attention(case):
    """ORT's Attention sees the first `past` keys as past_key / past_value, so its causal
    mask is bottom-right aligned like causal_offset=None."""
    note(str(case))
    rng = np.random.default_rng(case["seed"])
    b, h, kv, s, p, d, dv = (case[k] for k in ("b", "h", "kv", "s", "past", "d", "dv"))
    t = s + p
    q = (rng.standard_normal((b, h, s, d)) * 2).astype(np.float32)
    k = rng.standard_normal((b, kv, t, d)).astype(np.float32)
    v = rng.standard_normal((b, kv, t, dv)).astype(np.float32)
    feeds = {"q": q, "k": k[:, :, p:], "v": v[:, :, p:]}
    inputs, attrs, kwargs = ["q", "k", "v", "", "", ""], {}, {}
    if p:
        feeds.update(pk=k[:, :, :p], pv=v[:, :, :p])
        inputs[4:6] = ["pk", "pv"]
    if case["scale"] is not None:
        attrs["scale"] = kwargs["scale"] = case["scale"]
    if case["softcap"]:
        attrs["softcap"] = kwargs["softcap"] = case["softcap"]
    if "causal" in case["mask"]:
        attrs["is_causal"] = 1
        kwargs["is_causal"] = True
    if case["mask"] == "float":
        feeds["m"] = kwargs["mask"] = (rng.standard_normal((1, h, s, t)) * 2).astype(np.float32)
    elif "bool" in case["mask"]:
        feeds["m"] = kwargs["mask"] = rng.random((b, 1, s, t)) < 0.6  # rows may be fully masked
    if "m" in feeds:
        inputs[3] = "m"
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = ["y", "present_k", "present_v"] if p else ["y"]  # ORT needs present with past
    (expected, *_), _ = run_graph([helper.make_node("Attention", inputs, outputs, **attrs)], feeds, outputs, opset=23)
    for got in both_precisions(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, nan_to_zero=True, **kwargs), q, k, v):
        assert_close(got, expected, ulps=32, magnitude=float(np.abs(v).max()), what="sdpa")


def test_sdpa_causal_offset_top_left_differs_from_bottom_right():
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((1, 1, 2, 4)), rng.standard_normal((1, 1, 4, 4)), rng.standard_normal((1, 1, 4, 4))
    bottom_right = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True, causal_offset=0)
    # Top-left: the first query sees only key 0, so its output is v[0].
    assert np.allclose(top_left[0, 0, 0], v[0, 0, 0])
    explicit = F.scaled_dot_product_attention(q, k, v, mask=F.causal_mask(2, 4))
    assert np.array_equal(bottom_right, explicit)
    assert not np.allclose(bottom_right, top_left)


# -- rotary -----------------------------------------------------------------------------


def test_rotary_forms_by_hand():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    # A quarter turn (cos 0, sin 1): (a, b) -> (-b, a).
    assert F.rotary_embedding(x, np.zeros(4), np.ones(4), form="rotate_half").tolist() == [[-3.0, -4.0, 1.0, 2.0]]
    assert F.rotary_embedding(x, np.zeros(2), np.ones(2), form="half_split").tolist() == [[-3.0, -4.0, 1.0, 2.0]]
    assert F.rotary_embedding(x, np.zeros(2), np.ones(2), form="interleaved").tolist() == [[-2.0, 1.0, -4.0, 3.0]]
    # Partial rotary: only the first 2 features turn.
    assert F.rotary_embedding(x, np.zeros(1), np.ones(1), form="half_split", rotary_dim=2).tolist() == [[-2.0, 1.0, 3.0, 4.0]]
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        F.rotary_embedding(x, np.zeros(1), np.ones(1), form="half_split", rotary_dim=3)
    with pytest.raises(ValueError, match="need 1 features"):
        F.rotary_embedding(x, np.zeros(2), np.ones(2), form="half_split", rotary_dim=2)


@given(st.sampled_from(["half_split", "interleaved"]), st.integers(1, 2), st.integers(1, 4), st.sampled_from([4, 8]), st.booleans(), seeds)
def test_rotary_matches_onnx_rotary_embedding(form, b, s, d, partial, seed):
    rng = np.random.default_rng(seed)
    h, rot = 2, (d // 2 if partial else d)
    x = rng.standard_normal((b, h, s, d)).astype(np.float32)
    angles = (rng.random((b, s, rot // 2)) * 6).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    node = helper.make_node("RotaryEmbedding", ["x", "c", "s"], ["y"], interleaved=int(form == "interleaved"), rotary_embedding_dim=rot if partial else 0)
    (expected,), _ = run_graph([node], {"x": x, "c": cos, "s": sin}, ["y"], opset=23)
    for got in both_precisions(lambda x, c, s: F.rotary_embedding(x, c[:, None], s[:, None], form=form, rotary_dim=rot), x, cos, sin):
        assert_close(got, expected, ulps=4, what=form)


@given(st.integers(1, 3), st.sampled_from([4, 8]), st.booleans(), seeds)
def test_rotate_half_matches_the_hf_graph(s, d, partial, seed):
    """HF's rotate_half written as ONNX ops (Slice, Neg, Concat, Mul, Add) in onnxruntime."""
    rng = np.random.default_rng(seed)
    r = d // 2 if partial else d
    x = rng.standard_normal((1, 2, s, d)).astype(np.float32)
    angles = rng.random((s, r // 2)).astype(np.float32) * 6
    cos = np.cos(np.concatenate([angles, angles], -1))
    sin = np.sin(np.concatenate([angles, angles], -1))
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "z", "r", "a"], ["xr"]),
        helper.make_node("Slice", ["x", "r", "big", "a"], ["xp"]),
        helper.make_node("Slice", ["xr", "z", "h", "a"], ["x1"]),
        helper.make_node("Slice", ["xr", "h", "big", "a"], ["x2"]),
        helper.make_node("Neg", ["x2"], ["nx2"]),
        helper.make_node("Concat", ["nx2", "x1"], ["rot"], axis=-1),
        helper.make_node("Mul", ["xr", "c"], ["a1"]),
        helper.make_node("Mul", ["rot", "s"], ["a2"]),
        helper.make_node("Add", ["a1", "a2"], ["yr"]),
        helper.make_node("Concat", ["yr", "xp"], ["y"], axis=-1),
    ]
    inits = {"z": i64(0), "r": i64(r), "h": i64(r // 2), "big": i64(10**6), "a": i64(-1)}
    (expected,), _ = run_graph(nodes, {"x": x, "c": cos, "s": sin}, ["y"], initializers=inits)
    for got in both_precisions(lambda x, c, s: F.rotary_embedding(x, c, s, form="rotate_half", rotary_dim=r), x, cos, sin):
        assert_close(got, expected, ulps=4, what="rotate_half")


def test_rotate_half_equals_half_split_with_duplicated_angles():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3, 8))
    angles = rng.random((1, 1, 3, 4))
    cos, sin = np.cos(angles), np.sin(angles)
    full = F.rotary_embedding(x, np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1), form="rotate_half")
    np.testing.assert_allclose(full, F.rotary_embedding(x, cos, sin, form="half_split"), rtol=0, atol=1e-15)


# -- ALiBi, LoRA ------------------------------------------------------------------------


def test_alibi_slopes_by_hand():
    assert F.alibi_slopes(8).tolist() == [2.0 ** -(i + 1) for i in range(8)]
    assert F.alibi_slopes(4).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    # 6 heads: the 4-head slopes, then the 1st and 3rd slopes of 8 heads.
    assert F.alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    # 12 heads: the 8-head slopes, then slopes 1, 3, 5, 7 of 16 heads (2^-0.5 k).
    expected12 = [2.0 ** -(i + 1) for i in range(8)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    np.testing.assert_allclose(F.alibi_slopes(12), expected12, rtol=1e-15)
    assert F.alibi_slopes(1).tolist() == [2.0**-8]
    assert F.alibi_slopes(3).tolist() == pytest.approx([2.0**-4, 2.0**-8, 2.0**-2])


def test_alibi_bias_by_hand_and_equivalent_to_bloom_form():
    bias = F.alibi_bias(np.array([0.5]), q_len=2, k_len=3)
    # Query i sits at key position i + (T - S); bias = slope * (key - query position).
    assert bias.tolist() == [[[-0.5, 0.0, 0.5], [-1.0, -0.5, 0.0]]]
    slopes = F.alibi_slopes(4)
    scores = np.random.default_rng(4).standard_normal((4, 3, 5))
    bloom = slopes[:, None, None] * np.arange(5)[None, None, :]
    np.testing.assert_allclose(
        F.softmax(scores + F.alibi_bias(slopes, q_len=3, k_len=5)), F.softmax(scores + bloom), rtol=1e-13
    )


@given(seeds, st.integers(1, 4), st.sampled_from([0.25, 2.0]))
def test_lora_delta_matches_the_exported_graph(seed, rank, alpha):
    rng = np.random.default_rng(seed)
    x, a, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 6), (6, rank), (rank, 5)))
    nodes = [helper.make_node("MatMul", ["x", "a"], ["xa"]), helper.make_node("MatMul", ["xa", "b"], ["xab"]), helper.make_node("Mul", ["xab", "al"], ["y"])]
    (expected,), _ = run_graph(nodes, {"x": x, "a": a, "b": b, "al": np.array(alpha, np.float32)}, ["y"])
    for got in both_precisions(lambda x, a, b: F.lora_delta(x, a, b, alpha=alpha), x, a, b):
        assert_close(got, expected, ulps=16 * (6 + rank), what="lora")


# -- linear, conv -----------------------------------------------------------------------


@given(st.booleans(), st.booleans(), st.sampled_from([1.0, 0.5]), st.sampled_from([1.0, 2.0]), st.sampled_from(["none", "scalar", "row", "column", "full"]), seeds)
def test_linear_matches_gemm(trans_a, trans_b, alpha, beta, bias_shape, seed):
    rng = np.random.default_rng(seed)
    m, k, n = 3, 4, 5
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    shapes = {"scalar": (1,), "row": (n,), "column": (m, 1), "full": (m, n)}
    feeds = {"a": a, "w": w}
    if bias_shape != "none":
        feeds["c"] = rng.standard_normal(shapes[bias_shape]).astype(np.float32)
    node = helper.make_node("Gemm", list(feeds), ["y"], transA=int(trans_a), transB=int(trans_b), alpha=alpha, beta=beta)
    (expected,), _ = run_graph([node], feeds, ["y"], opset=13)
    for got in both_precisions(lambda *t: F.linear(*t, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta), *feeds.values()):
        assert_close(got, expected, ulps=32, what="gemm")


@given(st.sampled_from([((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((4,), (4, 2)), ((2, 3, 4), (4,))]), seeds)
def test_linear_matches_matmul_broadcasting(shapes, seed):
    rng = np.random.default_rng(seed)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    (expected,), _ = run_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": x, "w": w}, ["y"])
    for got in both_precisions(F.linear, x, w):
        assert_close(got, expected, ulps=32, what="matmul")


@st.composite
def conv_cases(draw):
    group = draw(st.sampled_from([1, 1, 2, 3]), label="group")
    kh, kw = draw(st.integers(1, 3), label="kh"), draw(st.integers(1, 3), label="kw")
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, dil[0] * (kh - 1) + 1 - pads[0] - pads[2]), 7), label="h")
    w = draw(st.integers(max(1, dil[1] * (kw - 1) + 1 - pads[1] - pads[3]), 7), label="w")
    return dict(
        n=draw(st.integers(1, 2)), c=group * draw(st.integers(1, 3)), m=group * draw(st.integers(1, 3)),
        kh=kh, kw=kw, h=h, w=w, group=group, strides=(draw(st.integers(1, 3)), draw(st.integers(1, 2))),
        dilations=dil, pads=pads, bias=draw(st.booleans()), seed=draw(seeds),
    )


@given(conv_cases())
def test_conv2d_matches_onnx_conv(case):
    note(str(case))
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], case["h"], case["w"])).astype(np.float32)
    w = rng.standard_normal((case["m"], case["c"] // case["group"], case["kh"], case["kw"])).astype(np.float32)
    feeds = {"x": x, "w": w}
    if case["bias"]:
        feeds["b"] = rng.standard_normal(case["m"]).astype(np.float32)
    node = helper.make_node("Conv", list(feeds), ["y"], group=case["group"], strides=list(case["strides"]), dilations=list(case["dilations"]), pads=list(case["pads"]))
    (expected,), _ = run_graph([node], feeds, ["y"])
    taps = case["c"] // case["group"] * case["kh"] * case["kw"]
    for got in both_precisions(lambda *t: F.conv2d(*t, strides=case["strides"], pads=case["pads"], dilations=case["dilations"], group=case["group"]), *feeds.values()):
        assert_close(got, expected, ulps=8 * taps, what="conv2d")


def test_conv2d_by_hand():
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])  # x[i, j] - x[i+1, j+1]
    assert F.conv2d(x, w).tolist() == [[[[-4.0, -4.0], [-4.0, -4.0]]]]
    # Padding 1 on the top only (a zero row first: 0 - x[0, 1]), stride 2 along the width.
    assert F.conv2d(x, w, pads=(1, 0, 0, 0), strides=(1, 2)).tolist() == [[[[-1.0], [-4.0], [-4.0]]]]
    depthwise = F.conv2d(np.stack([x[0, 0], -x[0, 0]])[None], np.ones((2, 1, 1, 1)) * 2, group=2)
    assert np.array_equal(depthwise[0, 1], -2 * x[0, 0])


# -- norms, gelu ------------------------------------------------------------------------


@given(seeds, st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data(), st.sampled_from([1e-5, 1e-2]))
def test_norms_match_onnxruntime(seed, shape, data, eps):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    g = rng.standard_normal(shape[axis % len(shape):]).astype(np.float32)
    b = rng.standard_normal(g.shape).astype(np.float32)
    (ln,), _ = run_graph([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=axis, epsilon=eps)], {"x": x, "g": g, "b": b}, ["y"], opset=17)
    (rms,), _ = run_graph([helper.make_node("RMSNormalization", ["x", "g"], ["y"], axis=axis, epsilon=eps)], {"x": x, "g": g}, ["y"], opset=23)
    count = int(np.prod(g.shape))
    for got in both_precisions(lambda x, g, b: F.layer_norm(x, g, b, eps=eps, axis=axis), x, g, b):
        assert_close(got, ln, ulps=16 + count, what="layer_norm")
    for got in both_precisions(lambda x, g: F.rms_norm(x, g, eps=eps, axis=axis), x, g):
        assert_close(got, rms, ulps=16 + count, what="rms_norm")


def test_norms_by_hand():
    x = np.array([[3.0, 4.0]])
    assert F.rms_norm(x, eps=0.0)[0].tolist() == pytest.approx([3 / math.sqrt(12.5), 4 / math.sqrt(12.5)])
    assert F.layer_norm(x, np.array([2.0, 2.0]), np.array([1.0, 1.0]), eps=0.0).tolist() == [[-1.0, 3.0]]


@given(seeds, st.sampled_from(["none", "tanh"]))
def test_gelu_matches_onnx_gelu(seed, approximate):
    x = (np.random.default_rng(seed).standard_normal(200) * 3).astype(np.float32)
    (expected,), _ = run_graph([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], {"x": x}, ["y"], opset=20)
    for got in both_precisions(lambda x: F.gelu(x, approximate=approximate), x):
        assert_close(got, expected, ulps=16, magnitude=1.0, what="gelu")
