"""refimpl.run against onnxruntime: drawn single-op graphs, small multi-op graphs, a decoder.

Float32 refimpl must agree with float32 onnxruntime to a few-ulp-scaled tolerance; float64
refimpl must agree with float32 onnxruntime to float32 precision.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import refimpl
from tests.refimpl.ort_helpers import run_graph, ulp_tolerance

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _check(nodes, feeds, outputs, *, opset=17, initializers=None, factor=64.0):
    expected, model = run_graph(nodes, feeds, outputs, opset=opset, initializers=initializers)
    got32 = refimpl.run(model, feeds, dtype=np.float32)
    got64 = refimpl.run(model, feeds, dtype=np.float64)
    for name, e in zip(outputs, expected):
        if np.issubdtype(e.dtype, np.floating):
            tol = ulp_tolerance(e, factor)
            np.testing.assert_allclose(got32[name], e, atol=tol, rtol=0, err_msg=f"float32 {name}")
            np.testing.assert_allclose(got64[name], e, atol=tol, rtol=0, err_msg=f"float64 {name}")
        else:
            np.testing.assert_array_equal(got32[name], e)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)
UNARY = ["Neg", "Abs", "Exp", "Tanh", "Sigmoid", "Relu", "Erf", "Sin", "Cos", "Floor", "Ceil", "Softplus", "Identity"]
BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min"]
COMPARE = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]


@given(st.sampled_from(UNARY), shapes, st.integers(0, 1000))
def test_unary(op_type, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    _check([helper.make_node(op_type, ["x"], ["y"])], {"x": x}, ["y"])


@given(st.sampled_from(BINARY + COMPARE), shapes, st.integers(0, 1000), st.booleans())
def test_binary_with_broadcast(op_type, shape, seed, broadcast):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    b_shape = [1 if (broadcast and i % 2 == 0) else s for i, s in enumerate(shape)][1:] if broadcast else shape
    b = np.asarray(rng.standard_normal(b_shape) + (2.0 if op_type == "Div" else 0.0), dtype=np.float32)
    _check([helper.make_node(op_type, ["a", "b"], ["y"])], {"a": a, "b": b}, ["y"])


@given(shapes, st.integers(0, 1000), st.data())
def test_softmax_reduce_and_norm(shape, seed, data):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    keep = data.draw(st.integers(0, 1))
    note(f"axis={axis} keepdims={keep}")
    _check([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], {"x": x}, ["y"])
    _check([helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=keep)], {"x": x}, ["y"], opset=18, initializers=[numpy_helper.from_array(np.array([axis], np.int64), "ax")])
    _check([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=keep, axes=[axis])], {"x": x}, ["y"], opset=12)
    scale = np.random.default_rng(seed + 1).standard_normal(shape[axis % len(shape):]).astype(np.float32)
    _check([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=axis)], {"x": x, "g": scale}, ["y"])


@given(shapes, st.integers(0, 1000), st.data())
def test_layout_ops(shape, seed, data):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    perm = data.draw(st.permutations(range(len(shape))))
    _check([helper.make_node("Transpose", ["x"], ["y"], perm=list(perm))], {"x": x}, ["y"])
    flat = [int(np.prod(shape))]
    _check([helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": x}, ["y"], initializers=[numpy_helper.from_array(np.array([-1] + [1], np.int64), "s")])
    _check([helper.make_node("Unsqueeze", ["x", "a"], ["y"]), helper.make_node("Squeeze", ["y", "a"], ["z"])], {"x": x}, ["z"], initializers=[numpy_helper.from_array(np.array([0], np.int64), "a")])
    axis = data.draw(st.integers(0, len(shape) - 1))
    _check([helper.make_node("Concat", ["x", "x"], ["y"], axis=axis)], {"x": x}, ["y"])
    if shape[axis] >= 2:
        _check([helper.make_node("Split", ["x"], ["y", "z"], axis=axis, num_outputs=2)], {"x": x}, ["y", "z"], opset=18)
    start = data.draw(st.integers(-shape[axis], shape[axis] - 1))
    step = data.draw(st.sampled_from([1, 2, -1]))
    end = data.draw(st.sampled_from([shape[axis], -1, 0, 100, -100]))
    note(f"slice axis={axis} start={start} end={end} step={step}")
    arrs = [np.array([v], np.int64) for v in (start, end, axis, step)]
    _check([helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])], {"x": x}, ["y"], initializers=[numpy_helper.from_array(a, n) for a, n in zip(arrs, "seat")])
    idx = np.array(data.draw(st.lists(st.integers(-shape[axis], shape[axis] - 1), min_size=1, max_size=3)), np.int64)
    _check([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], {"x": x}, ["y"], initializers=[numpy_helper.from_array(idx, "i")])
    _check([helper.make_node("Shape", ["x"], ["y"])], {"x": x}, ["y"])
    del flat


def test_misc_ops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    i64 = lambda v, n: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    _check([helper.make_node("Expand", ["x", "s"], ["y"])], {"x": x[:, :1]}, ["y"], initializers=[i64([2, 5, 4], "s")])
    _check([helper.make_node("Tile", ["x", "r"], ["y"])], {"x": x}, ["y"], initializers=[i64([1, 2, 1], "r")])
    _check([helper.make_node("Trilu", ["x"], ["y"], upper=0)], {"x": x}, ["y"])
    _check([helper.make_node("CumSum", ["x", "a"], ["y"], exclusive=1, reverse=1)], {"x": x}, ["y"], initializers=[i64(1, "a")])
    _check([helper.make_node("Where", ["c", "x", "z"], ["y"])], {"c": x > 0, "x": x, "z": -x}, ["y"])
    _check([helper.make_node("Range", ["a", "b", "c"], ["y"])], {"a": np.array(1, np.int64), "b": np.array(9, np.int64), "c": np.array(2, np.int64)}, ["y"])
    _check([helper.make_node("ConstantOfShape", ["s"], ["y"], value=numpy_helper.from_array(np.array([1.5], np.float32)))], {"s": np.array([2, 3], np.int64)}, ["y"])
    _check([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)], {"x": x * 3}, ["y"])
    _check([helper.make_node("IsNaN", ["x"], ["y"])], {"x": np.array([1.0, np.nan], np.float32)}, ["y"])
    _check([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": x, "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}, ["y"])
    _check([helper.make_node("Gelu", ["x"], ["y"])], {"x": x}, ["y"], opset=20)
    _check([helper.make_node("Pow", ["x", "e"], ["y"])], {"x": np.abs(x) + 0.1, "e": np.array(2.0, np.float32)}, ["y"])
    _check([helper.make_node("GatherElements", ["x", "i"], ["y"], axis=2)], {"x": x}, ["y"], initializers=[i64(rng.integers(0, 4, (2, 3, 2)), "i")])
    _check([helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1)], {"x": x, "u": np.ones((2, 1, 4), np.float32)}, ["y"], initializers=[i64(np.zeros((2, 1, 4), np.int64), "i")])
    _check([helper.make_node("ScatterND", ["x", "i", "u"], ["y"])], {"x": x, "u": np.ones((1, 4), np.float32)}, ["y"], initializers=[i64([[1, 2]], "i")])
    _check([helper.make_node("GroupNormalization", ["x4", "g", "b"], ["y"], num_groups=2)], {"x4": x[:, :2, :, None].repeat(2, 1), "g": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}, ["y"], opset=21)
    _check([helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"])], {"x": x, "g": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}, ["y"])
    _check([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1])], {"x": x, "w": rng.standard_normal((5, 3, 3)).astype(np.float32)}, ["y"])


@settings(max_examples=10)
@given(st.integers(1, 2), st.integers(1, 4), st.sampled_from([(4, 2), (4, 4), (6, 3)]), st.booleans(), st.booleans())
def test_attention_and_rotary_ops(b, s, heads, three_d, causal):
    h, kv = heads
    d = 4
    rng = np.random.default_rng(b * 100 + s)
    if three_d:
        q, k, v = rng.standard_normal((b, s, h * d)), rng.standard_normal((b, s, kv * d)), rng.standard_normal((b, s, kv * d))
        attrs = dict(q_num_heads=h, kv_num_heads=kv)
    else:
        q, k, v = rng.standard_normal((b, h, s, d)), rng.standard_normal((b, kv, s, d)), rng.standard_normal((b, kv, s, d))
        attrs = {}
    feeds = {"q": q.astype(np.float32), "k": k.astype(np.float32), "v": v.astype(np.float32), "pk": rng.standard_normal((b, kv, 2, d)).astype(np.float32), "pv": rng.standard_normal((b, kv, 2, d)).astype(np.float32)}
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "k2", "v2"], is_causal=int(causal), **attrs)
    _check([node], feeds, ["y", "k2", "v2"], opset=23)
    cache = rng.standard_normal((16, d // 2)).astype(np.float32)
    pos = rng.integers(0, 16, (b, s)).astype(np.int64)
    rot = helper.make_node("RotaryEmbedding", ["q", "c", "s", "p"], ["y"], num_heads=h if three_d else 0)
    _check([rot], {"q": feeds["q"], "c": np.cos(cache), "s": np.sin(cache), "p": pos}, ["y"], opset=23)


def test_decoder_layer_float32_and_float64(tmp_path):
    from llama_gen import generate

    path = generate(tmp_path, layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=40, name="dec")
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    s = 5
    feeds = {
        "input_ids": rng.integers(0, 40, (2, s)).astype(np.int64),
        "attention_mask": np.triu(np.full((s, s), -1e4, np.float32), 1)[None, None].repeat(2, 0),
        "cos": rng.standard_normal((2, s, 8)).astype(np.float32),
        "sin": rng.standard_normal((2, s, 8)).astype(np.float32),
    }
    (expected,) = ort.InferenceSession(str(path)).run(None, feeds)
    np.testing.assert_allclose(refimpl.run(path, feeds, dtype=np.float32)["logits"], expected, atol=ulp_tolerance(expected, 256), rtol=0)
    np.testing.assert_allclose(refimpl.run(path, feeds, dtype=np.float64)["logits"], expected, atol=ulp_tolerance(expected, 256), rtol=0)


def test_errors_are_clear():
    x = np.ones((2, 3), np.float32)
    _, model = run_graph([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, ["y"])
    with pytest.raises(refimpl.FeedError, match="missing feed for input 'x'"):
        refimpl.run(model, {})
    with pytest.raises(refimpl.FeedError, match="expected rank 2"):
        refimpl.run(model, {"x": np.ones(3, np.float32)})
    with pytest.raises(refimpl.FeedError, match="dimension 1 must be 3"):
        refimpl.run(model, {"x": np.ones((2, 4), np.float32)})
    weird = helper.make_model(
        helper.make_graph([helper.make_node("FancyOp", ["x"], ["y"], domain="my.domain", name="n1")], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 3)],
    )
    with pytest.raises(refimpl.UnsupportedOpError, match=r"my.domain::FancyOp \(opset 3\) at node 'n1'"):
        refimpl.run(weird, {"x": np.ones(2, np.float32)})


def test_fake_quantization_hook_applies_encodings():
    x = np.linspace(-1, 1, 11).astype(np.float32)
    _, model = run_graph([helper.make_node("Relu", ["x"], ["y"])], {"x": x}, ["y"])
    enc = refimpl.compute_encoding(0.0, 1.0, bitwidth=2, symmetric=False)
    out = refimpl.run(model, {"x": x}, encodings={"y": enc})["y"]
    assert set(np.round(out / enc.scale).astype(int).tolist()) <= {0, 1, 2, 3}
    assert np.allclose(out, refimpl.quantize_dequantize(np.maximum(x, 0), enc))
