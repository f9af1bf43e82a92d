"""AIMET quantize-dequantize arithmetic: hand-computed cases and onnxruntime Q/DQ on non-ties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from refimpl.quant import QuantEncoding, compute_encoding, quantize_dequantize
from tests.refimpl.ort_helpers import run_graph


def test_asymmetric_calibration_by_hand():
    enc = compute_encoding(-1.0, 3.0, bitwidth=8, symmetric=False)
    assert np.isclose(enc.scale, 4 / 255)
    assert enc.offset == -64  # -round(1 / (4/255)) = -round(63.75)
    # zero is exactly representable, the range is clamped
    out = quantize_dequantize(np.array([0.0, 10.0, -10.0], np.float32), enc)
    assert out[0] == 0.0
    assert np.isclose(out[1], (255 - 64) * enc.scale) and np.isclose(out[2], -64 * enc.scale)


def test_range_is_widened_to_include_zero():
    enc = compute_encoding(2.0, 3.0, bitwidth=8, symmetric=False)
    assert enc.offset == 0 and np.isclose(enc.scale, 3 / 255)


def test_symmetric_ties_round_half_away_from_zero():
    enc = compute_encoding(-1.27, 1.27, bitwidth=8, symmetric=True)
    assert np.isclose(enc.scale, 0.01) and enc.offset == -128
    x = np.array([0.005, -0.005, 0.015], np.float64)  # exact ties in float64
    out = quantize_dequantize(x, QuantEncoding("int", 8, True, np.array(0.01), np.array(-128.0)))
    # q = floor(x/scale - offset + 0.5) rounds ties up in the unsigned q domain:
    # 0.5 -> 1, -0.5 -> 0, 1.5 -> 2 (ONNX's half-to-even would give 0, 0 and 0.02)
    assert np.allclose(out, [0.01, 0.0, 0.02])


def test_strict_symmetric_offset():
    enc = compute_encoding(-1.0, 1.0, bitwidth=8, symmetric=True, strict=True)
    assert enc.offset == -127


def test_per_channel_axis():
    x = np.array([[1.0, 10.0], [-1.0, -10.0]], np.float32)
    enc = compute_encoding([-1.0, -10.0], [1.0, 10.0], bitwidth=8, symmetric=True, axis=1)
    out = quantize_dequantize(x, enc)
    assert np.allclose(out, x, atol=1e-6)  # each column has its own scale: max is exact


def test_per_block_and_lpbq():
    w = np.array([[1.0, 0.6, 8.0, 4.2]], np.float32)  # one channel, two blocks of 2
    enc = QuantEncoding("int", 4, True, np.array([[1.0 / 7, 8.0 / 7]]), np.full((1, 2), -8.0), axis=0, block_axis=1, block_size=2)
    out = quantize_dequantize(w, enc)
    # 0.6 * 7 = 4.2 -> 4; 4.2 * 7 / 8 = 3.675 -> 4
    assert np.allclose(out, [[1.0, 4 / 7, 8.0, 32 / 7]])
    # LPBQ: per-block integer scales times a per-channel float scale give the same effective scales.
    int_scales = np.array([[1, 8]])
    lpbq = QuantEncoding("int", 4, True, int_scales * (1.0 / 7), np.full((1, 2), -8.0), axis=0, block_axis=1, block_size=2)
    assert np.allclose(quantize_dequantize(w, lpbq), out)


def test_float16_encoding():
    x = np.array([1.0001, 3.14159], np.float32)
    out = quantize_dequantize(x, QuantEncoding("float", 16, False, np.array(1.0), np.array(0.0)))
    assert np.array_equal(out, x.astype(np.float16).astype(np.float32))


def _no_ties(x: np.ndarray, scale) -> np.ndarray:
    frac = np.abs(x / scale) % 1.0
    return x + np.where(np.isclose(frac, 0.5, atol=1e-3), 1e-2 * np.asarray(scale), 0.0).astype(x.dtype)


@given(st.integers(0, 10_000), st.sampled_from([8, 16]), st.booleans())
def test_per_tensor_matches_onnx_qdq(seed, bitwidth, symmetric):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(64) * 3).astype(np.float32)
    enc = compute_encoding(x.min() * 0.8, x.max() * 0.8, bitwidth=bitwidth, symmetric=symmetric)
    x = _no_ties(x, enc.scale)
    zp_dtype = np.uint8 if bitwidth == 8 else np.uint16
    zp = np.array(-enc.offset, dtype=zp_dtype)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(enc.scale, np.float32), "s"), numpy_helper.from_array(zp, "z")]
    (expected,), _ = run_graph(nodes, {"x": x}, ["y"], opset=21, initializers=inits)
    np.testing.assert_allclose(quantize_dequantize(x, enc), expected, rtol=0, atol=1e-6 * float(np.max(enc.scale)) + 1e-7)


def test_per_channel_matches_onnx_qdq():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((6, 4)) * [1, 2, 3, 4]).astype(np.float32)
    enc = compute_encoding(w.min(axis=0), w.max(axis=0), bitwidth=8, symmetric=True, axis=1)
    w = _no_ties(w, enc.scale[None, :])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    inits = [numpy_helper.from_array(enc.scale.astype(np.float32), "s"), numpy_helper.from_array(np.zeros(4, np.int8), "z")]
    (expected,), _ = run_graph(nodes, {"x": w}, ["y"], opset=21, initializers=inits)
    np.testing.assert_allclose(quantize_dequantize(w, enc), expected, atol=1e-6)


@pytest.mark.parametrize("axis, block_axis", [(0, 1), (1, 0)])
def test_per_block_matches_onnx_blocked_qdq(axis, block_axis):
    rng = np.random.default_rng(4)
    shape = (4, 8) if axis == 0 else (8, 4)
    w = rng.standard_normal(shape).astype(np.float32)
    blocks = 2
    scale = (rng.random((4, blocks)) + 0.1).astype(np.float32) / 7
    enc = QuantEncoding("int", 4, True, scale, np.full_like(scale, -8.0), axis=axis, block_axis=block_axis, block_size=4)
    onnx_scale = scale if axis == 0 else scale.T  # ONNX lays block scales out like the tensor
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=block_axis, block_size=4)]
    s_full = np.repeat(onnx_scale, 4, axis=block_axis)
    q = np.clip(np.floor(w / s_full + 0.5), -8, 7).astype(np.int8)
    (expected,), _ = run_graph(nodes, {"q": q}, ["y"], opset=21, initializers=[numpy_helper.from_array(onnx_scale, "s")])
    np.testing.assert_allclose(quantize_dequantize(w, enc), expected, atol=1e-6)
