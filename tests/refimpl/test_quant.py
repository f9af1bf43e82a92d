"""AIMET quantize-dequantize arithmetic: hand-computed cases for every encoding kind (ties,
clamping, negative offsets, axes, blocks, LPBQ, float16), and onnxruntime
QuantizeLinear -> DequantizeLinear on values that are not ties (ONNX rounds half to even,
AIMET half up in the unsigned q domain: they agree everywhere else)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from onnx import TensorProto, helper

from refimpl.quant import (
    QuantEncoding,
    compute_encoding,
    lpbq_block_scales,
    quantize_dequantize,
    round_half_away,
)
from tests.refimpl.ort_helpers import EPS32, make_model, run_ort

seeds = st.integers(0, 2**32 - 1)


def enc(scale, offset, *, bw=8, sym=False, **kw) -> QuantEncoding:
    return QuantEncoding("int", bw, sym, np.asarray(scale, np.float64), np.asarray(offset, np.float64), **kw)


# -- calibration ------------------------------------------------------------------------


def test_round_half_away_from_zero():
    assert round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.4, -2.6])).tolist() == [1, 2, 3, -1, -3, 2, -3]


def test_asymmetric_calibration_by_hand():
    e = compute_encoding(-1.0, 3.0, bitwidth=8, symmetric=False)
    assert e.scale == np.float32(4 / 255) and e.offset == -64  # -round(63.75)
    assert e.kind == "per_tensor" and not e.strict and e.levels == 255
    # -min/scale = 2.5 exactly: half away from zero gives 3 (half to even would give 2).
    tie = compute_encoding(-1.25, 0.25, bitwidth=2, symmetric=False)
    assert tie.scale == 0.5 and tie.offset == -3


def test_calibration_widens_the_range_to_include_zero():
    above = compute_encoding(2.0, 3.0, bitwidth=8, symmetric=False)
    assert above.offset == 0 and above.scale == np.float32(3 / 255)
    below = compute_encoding(-3.0, -2.0, bitwidth=8, symmetric=False)
    assert below.offset == -255 and below.scale == np.float32(3 / 255)
    assert np.signbit(above.offset) == np.False_  # 0.0, not -0.0


def test_symmetric_calibration_by_hand():
    e = compute_encoding(-0.5, 1.27, bitwidth=8, symmetric=True)
    assert e.scale == np.float32(0.01) and e.offset == -128 and e.levels == 255
    strict = compute_encoding(-1.27, 0.3, bitwidth=8, symmetric=True, strict=True)
    assert strict.scale == np.float32(0.01) and strict.offset == -127 and strict.strict and strict.levels == 254
    four = compute_encoding(-7.0, 7.0, bitwidth=4, symmetric=True)
    assert four.scale == 1.0 and four.offset == -8


def test_per_channel_calibration():
    e = compute_encoding([-1.0, 0.0, -4.0], [1.0, 2.0, 0.5], bitwidth=8, symmetric=True)
    assert e.kind == "per_channel" and e.axis == 0
    np.testing.assert_array_equal(e.scale, np.float32([1 / 127, 2 / 127, 4 / 127]))
    np.testing.assert_array_equal(e.offset, [-128, -128, -128])
    asym = compute_encoding([-1.0, 1.0], [3.0, 2.0], bitwidth=8, symmetric=False, axis=1)
    assert asym.axis == 1 and asym.offset.tolist() == [-64, 0]


def test_zero_range_gets_a_tiny_scale_and_quantizes_to_zero():
    e = compute_encoding(0.0, 0.0, bitwidth=8, symmetric=False)
    assert e.scale > 0 and e.offset == 0
    assert quantize_dequantize(np.array([0.0, 1.0], np.float32), e).max() < 1e-35


# -- per-tensor quantize-dequantize -------------------------------------------------------


def test_asymmetric_qdq_by_hand_with_ties_and_clamping():
    e = enc(0.5, -3, bw=3)  # grid (q - 3) * 0.5, q in [0, 7]: [-1.5, 2.0]
    x = np.array([0.2, 0.25, 0.75, -0.75, -0.25, 1.9, 2.6, -1.6, -9.0])
    # x/s = 0.4 -> 0; ties x/s = 0.5, 1.5, -1.5, -0.5 round up (q domain half away from
    # zero): 1, 2, -1, 0; 3.8 -> 4; clamped: 2.0 and -1.5.
    assert quantize_dequantize(x, e).tolist() == [0.0, 0.5, 1.0, -0.5, 0.0, 2.0, 2.0, -1.5, -1.5]


def test_signed_symmetric_grid_is_asymmetric_by_one_step():
    e = compute_encoding(-1.27, 1.27, bitwidth=8, symmetric=True)
    out = quantize_dequantize(np.array([-1.28, -2.0, 1.28, 2.0], np.float64), e)
    s = float(e.scale)
    assert out.tolist() == pytest.approx([-128 * s, -128 * s, 127 * s, 127 * s], rel=1e-12)


def test_strict_symmetric_grid_is_symmetric():
    e = compute_encoding(-1.27, 1.27, bitwidth=8, symmetric=True, strict=True)
    out = quantize_dequantize(np.array([-1.28, -2.0, 1.28, 2.0], np.float64), e)
    s = float(e.scale)
    assert out.tolist() == pytest.approx([-127 * s, -127 * s, 127 * s, 127 * s], rel=1e-12)


def test_negative_offset_unsigned_grid_by_hand():
    e = enc(0.25, -200)  # q in [0, 255] -> reals [-50, 13.75]
    x = np.array([-50.0, -49.9, 13.75, 20.0, -60.0, 0.0])
    assert quantize_dequantize(x, e).tolist() == [-50.0, -50.0, 13.75, 13.75, -50.0, 0.0]


def test_float32_inputs_compute_in_float32_and_float64_inputs_in_float64():
    e = enc(0.5, -3, bw=3)
    # Just below a tie in float64 (x/s = 0.4999999999), a tie once rounded to float32.
    x64 = np.array([0.5 * 0.4999999999])
    assert quantize_dequantize(x64, e).tolist() == [0.0]
    x32 = x64.astype(np.float32)
    out32 = quantize_dequantize(x32, e)
    assert out32.dtype == np.float32 and out32.tolist() == [0.5]


def test_int32_bias_encodings_run_in_float64():
    scale = np.float32(1e-6)
    e = enc(scale, -(2.0**31), bw=32, sym=True)
    x = np.array([0.123456, -0.5], np.float32)
    expected = np.floor(x.astype(np.float64) / np.float64(scale) + 0.5) * np.float64(scale)
    out = quantize_dequantize(x, e)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_per_channel_axes_by_hand():
    x = np.array([[1.0, 10.0, 0.26], [-1.0, -10.0, 0.24]])
    cols = enc([1.0, 10.0, 0.5], [-128, -128, -128], sym=True, axis=1)
    assert quantize_dequantize(x, cols).tolist() == [[1.0, 10.0, 0.5], [-1.0, -10.0, 0.0]]
    assert quantize_dequantize(x, enc([1.0, 10.0, 0.5], -128, sym=True, axis=-1)).tolist() == [[1.0, 10.0, 0.5], [-1.0, -10.0, 0.0]]
    rows = enc([2.0, 0.5], [-128, -128], sym=True, axis=0)
    assert quantize_dequantize(x, rows).tolist() == [[2.0, 10.0, 0.0], [-1.0, -10.0, 0.0]]
    with pytest.raises(ValueError, match="per-channel encoding of 2 channels on axis 1"):
        quantize_dequantize(x, enc([1.0, 2.0], [-128, -128], sym=True, axis=1))


# -- per-block and LPBQ -------------------------------------------------------------------


def test_per_block_by_hand():
    w = np.array([[1.0, 0.6, 8.0, 4.2], [0.5, -0.5, -9.0, 7.6]])
    scales = np.array([[1 / 7, 8 / 7], [1.0, 1.0]])
    e = enc(scales, np.full((2, 2), -8.0), bw=4, sym=True, axis=0, block_axis=1, block_size=2)
    assert e.kind == "per_block"
    out = quantize_dequantize(w, e)
    # 0.6*7 = 4.2 -> 4; 4.2*7/8 = 3.675 -> 4; ties 0.5 -> 1 and -0.5 -> 0; -9 -> -8; 7.6 -> 7.
    np.testing.assert_allclose(out, [[1.0, 4 / 7, 8.0, 32 / 7], [1.0, 0.0, -8.0, 7.0]], rtol=1e-15)


def test_per_block_with_blocks_on_axis_0_as_a_matmul_weight():
    # MatMul weight [in, out]: channels on axis 1, blocks of 2 input rows on axis 0.
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    scales = np.array([[1.0, 4.0], [2.0, 0.5]])  # (out channels, blocks)
    e = enc(scales, -8.0, bw=4, sym=True, axis=1, block_axis=0, block_size=2)
    # column 0 scales 1 (rows 0-1) and 4 (rows 2-3); column 1: 2 and 0.5.
    expected = [[1.0, 2.0], [3.0, 4.0], [4.0, 3.5], [8.0, 3.5]]
    assert quantize_dequantize(w, e).tolist() == expected


def test_lpbq_is_per_block_with_int_times_channel_scales():
    ints = np.array([[1, 8], [3, 2]])
    channel = np.array([1 / 7, 0.25])
    effective = lpbq_block_scales(ints, channel)
    assert effective.dtype == np.float32
    np.testing.assert_array_equal(effective, np.float32(ints) * np.float32(channel)[:, None])
    w = np.array([[1.0, 0.6, 8.0, 4.2], [0.3, 0.4, -1.0, 0.26]])
    lpbq = enc(effective, -8.0, bw=4, sym=True, axis=0, block_axis=1, block_size=2)
    # row 1: scales 0.75 and 0.5: 0.3/0.75 = 0.4 -> 0, 0.4/0.75 -> 1, -2 -> -2, 0.52 -> 1.
    expected = [[1.0, 4 / 7, 8.0, 32 / 7], [0.0, 0.75, -1.0, 0.5]]
    np.testing.assert_allclose(quantize_dequantize(w, lpbq), expected, rtol=1e-6)


def test_per_block_shape_mismatch_is_an_error():
    e = enc(np.ones((3, 2)), -8.0, bw=4, sym=True, axis=0, block_axis=1, block_size=2)
    with pytest.raises(ValueError, match="does not cover"):
        quantize_dequantize(np.ones((2, 4)), e)


# -- float encodings ---------------------------------------------------------------------


def test_float16_encoding_rounds_to_half_precision():
    x = np.array([1.0001, 3.14159, 65519.0, 1e-8], np.float32)
    f16 = QuantEncoding("float", 16, False, np.array(1.0), np.array(0.0))
    assert f16.kind == "float"
    out = quantize_dequantize(x, f16)
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, np.float32(3.140625), 65504.0, np.float32(np.float16(1e-8))]
    np.testing.assert_array_equal(quantize_dequantize(x, QuantEncoding("float", 32, False, np.array(1.0), np.array(0.0))), x)


# -- onnxruntime QuantizeLinear / DequantizeLinear on non-ties ---------------------------


def _off_ties(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Move values whose x/scale is within 1e-3 of a tie by a tenth of a step. onnxruntime
    divides by the float32 scale: near a tie by either scale counts (at 16 bits x/scale is
    large enough for the two to disagree)."""
    near = np.zeros(x.shape, dtype=bool)
    for s in (np.asarray(scale, np.float64), np.asarray(scale, np.float32).astype(np.float64)):
        ratio = np.abs(x.astype(np.float64) / s)
        # onnxruntime rounds x/scale + zero_point in float32: a few ulps of numbers up to
        # 2^16 at 16 bits (x/scale and the zero point both reach tens of thousands)
        margin = np.maximum(1e-3, 8 * EPS32 * (ratio + 2**16))
        near |= np.abs(ratio % 1.0 - 0.5) < margin
    return (x + np.where(near, 0.1 * scale, 0.0)).astype(x.dtype)


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, *, axis: int = 1, block_size: int = 0) -> np.ndarray:
    attrs = {"axis": axis} if np.ndim(scale) else {}
    if block_size:
        attrs["block_size"] = block_size
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    model = make_model(nodes, {"x": x}, ["y"], opset=21, initializers={"s": np.asarray(scale, np.float32)})
    model.graph.initializer.append(zero_point)
    return run_ort(model, {"x": x})[0]


def _zero_point(e: QuantEncoding, shape=None) -> onnx.TensorProto:
    """AIMET offset -> ONNX zero point: unsigned y_zp = -offset; signed symmetric = 0."""
    offset = np.asarray(e.offset, np.float64) if shape is None else np.broadcast_to(e.offset, shape)
    if e.symmetric:
        types = {4: TensorProto.INT4, 8: TensorProto.INT8, 16: TensorProto.INT16}
        values = -offset - 2 ** (e.bitwidth - 1)
    else:
        types = {4: TensorProto.UINT4, 8: TensorProto.UINT8, 16: TensorProto.UINT16}
        values = -offset
    return helper.make_tensor("z", types[e.bitwidth], list(np.shape(values)), np.asarray(values, np.int64).reshape(-1).tolist())


@given(seeds, st.sampled_from([4, 8, 16]), st.booleans(), st.sampled_from([0.5, 0.8, 1.0]))
def test_per_tensor_matches_onnx_qdq(seed, bitwidth, symmetric, shrink):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(200) * 3 + rng.uniform(-2, 2)).astype(np.float32)
    # Calibrating on a narrower range than the data exercises the clamping.
    e = compute_encoding(x.min() * shrink, x.max() * shrink, bitwidth=bitwidth, symmetric=symmetric)
    note(f"scale={e.scale} offset={e.offset}")
    x = _off_ties(x, e.scale)
    expected = _ort_qdq(x, e.scale, _zero_point(e))
    # Same integer q: results agree to the float32 rounding of (q + offset) * scale.
    atol = float(e.scale) * 1e-3 + 2 * EPS32 * float(np.abs(expected).max())
    np.testing.assert_allclose(quantize_dequantize(x, e), expected, rtol=0, atol=atol)
    np.testing.assert_allclose(quantize_dequantize(x.astype(np.float64), e), expected, rtol=0, atol=atol)


@given(seeds, st.sampled_from([0, 1, 2]), st.booleans())
def test_per_channel_matches_onnx_qdq(seed, axis, symmetric):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, 5, 6)) * rng.uniform(0.1, 5, (4, 5, 6))).astype(np.float32)
    others = tuple(a for a in range(3) if a != axis)
    e = compute_encoding(x.min(axis=others) * 0.9, x.max(axis=others) * 0.9, bitwidth=8, symmetric=symmetric, axis=axis)
    shape = [1, 1, 1]
    shape[axis] = -1
    x = _off_ties(x, e.scale.reshape(shape))
    expected = _ort_qdq(x, e.scale, _zero_point(e), axis=axis)
    np.testing.assert_allclose(quantize_dequantize(x, e), expected, rtol=0, atol=float(e.scale.max()) * 1e-3)


@given(seeds, st.sampled_from([(0, 1), (1, 0)]), st.sampled_from([2, 4]))
def test_per_block_matches_onnx_blocked_qdq(seed, axes, block_size):
    axis, block_axis = axes
    rng = np.random.default_rng(seed)
    channels, blocks = 3, 3
    shape = [0, 0]
    shape[axis], shape[block_axis] = channels, blocks * block_size
    w = rng.standard_normal(shape).astype(np.float32)
    absmax = np.abs(w).reshape((channels, blocks, block_size) if axis == 0 else (blocks, block_size, channels))
    absmax = absmax.max(axis=2) if axis == 0 else absmax.max(axis=1).T  # (channels, blocks)
    scale = (absmax * 0.8 / 7).astype(np.float32)  # 0.8: some values clamp
    e = QuantEncoding("int", 4, True, scale, np.full(scale.shape, -8.0, np.float32), axis=axis, block_axis=block_axis, block_size=block_size)
    onnx_scale = scale if axis == 0 else scale.T  # ONNX lays block scales out like the tensor
    w = _off_ties(w, np.repeat(onnx_scale, block_size, axis=block_axis))
    expected = _ort_qdq(w, onnx_scale, _zero_point(e, onnx_scale.shape), axis=block_axis, block_size=block_size)
    np.testing.assert_allclose(quantize_dequantize(w, e), expected, rtol=0, atol=float(scale.max()) * 1e-3)
