"""AIMET quantization arithmetic in numpy (what AIMET's QuantizationSimModel simulates).

Conventions (AIMET and QNN):
  - offsets are zero or negative: real = (q + offset) * scale, q in [0, 2^bw - 1];
  - asymmetric: [min, max] is widened to include 0, scale = (max - min) / (2^bw - 1),
    offset = -round(-min / scale) with round half away from zero;
  - signed symmetric (weights by default): scale = absmax / (2^(bw-1) - 1), offset = -2^(bw-1)
    (-128 for 8 bits); strict symmetric uses offset = -(2^(bw-1) - 1);
  - quantize-dequantize: q = floor(clamp(x)/scale - offset + 0.5) — half away from zero for
    the non-negative values involved — clamped to [0, 2^bw - 1]; x' = (q + offset) * scale.
    ONNX QuantizeLinear rounds half to even: the two differ only on exact ties.
  - per-block (and LPBQ, whose effective block scale is per_block_int_scale * channel scale):
    q = clamp(floor(x / s_block + 0.5), -2^(bw-1), 2^(bw-1) - 1), x' = q * s_block.
  - "float" encodings (16-bit float) round to float16 and back.
Arithmetic is done in the dtype of x for float64 inputs (an exact simulation for the
float64 truth), in float32 otherwise, as AIMET does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QuantEncoding", "compute_encoding", "quantize_dequantize", "round_half_away"]


@dataclass(frozen=True)
class QuantEncoding:
    """One tensor's encoding in numeric form (file formats live in mha2sha.encodings).

    ``scale``/``offset``: shape () per-tensor, (C,) per-channel along ``axis``,
    (C, n_blocks) per-block with blocks of ``block_size`` along ``block_axis``.
    """

    dtype: str  # "int" or "float"
    bitwidth: int
    symmetric: bool
    scale: np.ndarray
    offset: np.ndarray
    axis: int | None = None
    block_axis: int | None = None
    block_size: int | None = None

    @property
    def kind(self) -> str:
        if self.dtype == "float":
            return "float"
        if self.block_size:
            return "per_block"
        return "per_channel" if np.ndim(self.scale) == 1 else "per_tensor"


def round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def compute_encoding(
    x_min, x_max, *, bitwidth: int, symmetric: bool, strict: bool = False, axis: int | None = None
) -> QuantEncoding:
    """Calibrate from observed ranges (scalars, or per-channel arrays along ``axis``)."""
    lo = np.minimum(np.asarray(x_min, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(x_max, dtype=np.float64), 0.0)
    levels = 2**bitwidth - 1
    if symmetric:
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        half = 2 ** (bitwidth - 1)
        scale = np.maximum(absmax / (half - 1), np.finfo(np.float32).tiny)
        offset = np.full_like(scale, -(half - 1) if strict else -half)
    else:
        scale = np.maximum((hi - lo) / levels, np.finfo(np.float32).tiny)
        offset = -round_half_away(-lo / scale)
    return QuantEncoding("int", bitwidth, symmetric, scale.astype(np.float32), offset.astype(np.float32), axis)


def _compute_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def _broadcast(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def quantize_dequantize(x: np.ndarray, enc: QuantEncoding) -> np.ndarray:
    """Fake-quantize ``x`` with ``enc`` (see the module docstring for the arithmetic)."""
    if enc.dtype == "float":
        if enc.bitwidth == 16:
            return x.astype(np.float16).astype(x.dtype)
        return x
    dt = _compute_dtype(x)
    xf = x.astype(dt, copy=False)
    if enc.block_size:
        return _per_block(xf, enc).astype(x.dtype, copy=False)
    scale = np.asarray(enc.scale, dtype=dt)
    offset = np.asarray(enc.offset, dtype=dt)
    if scale.ndim == 1:
        scale = _broadcast(scale, x.ndim, enc.axis if enc.axis is not None else 0)
        offset = _broadcast(offset, x.ndim, enc.axis if enc.axis is not None else 0)
    levels = 2**enc.bitwidth - 1
    lo = offset * scale
    hi = lo + levels * scale
    q = np.floor(np.clip(xf, lo, hi) / scale - offset + 0.5)
    q = np.clip(q, 0, levels)
    return ((q + offset) * scale).astype(x.dtype, copy=False)


def _per_block(x: np.ndarray, enc: QuantEncoding) -> np.ndarray:
    """Per-block (and LPBQ) symmetric quantization along ``block_axis``."""
    axis = (enc.axis if enc.axis is not None else 0) % x.ndim
    baxis = (enc.block_axis if enc.block_axis is not None else 1) % x.ndim
    bs = enc.block_size
    scale = np.asarray(enc.scale, dtype=x.dtype)  # (C, n_blocks)
    # Expand block scales to the tensor: channel along axis, each block repeated bs times.
    expanded = np.repeat(scale, bs, axis=1)[:, : x.shape[baxis]]
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    shape[baxis] = x.shape[baxis]
    order = sorted([axis, baxis])
    s = expanded if order == [axis, baxis] else expanded.T
    s = s.reshape([x.shape[a] if a in (axis, baxis) else 1 for a in range(x.ndim)])
    half = 2 ** (enc.bitwidth - 1)
    q = np.clip(np.floor(x / s + 0.5), -half, half - 1)
    return q * s
