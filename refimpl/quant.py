"""AIMET quantization arithmetic in numpy: what AIMET's QuantizationSimModel simulates.

Conventions (AIMET and QNN; see shared/AIMET_ENCODINGS.md):

- Offsets are zero or negative and real = (q + offset) * scale with q in [0, 2^bw - 1].
- Asymmetric calibration: [min, max] is widened to include 0; scale = (max - min) /
  (2^bw - 1); offset = -round(-min / scale), rounding half away from zero.
- Signed symmetric (weights by default): scale = absmax / (2^(bw-1) - 1), offset =
  -2^(bw-1) (-128 for 8 bits), so the grid is [-128, 127] * scale. Strict symmetric:
  offset = -(2^(bw-1) - 1) and one level fewer, so the grid is [-127, 127] * scale.
- Quantize-dequantize (per-tensor and per-channel): x is clamped to [offset * scale,
  (offset + levels) * scale]; q = floor(x / scale - offset + 0.5), clamped to
  [0, levels]; x' = (q + offset) * scale. floor(v + 0.5) rounds ties upwards, which for
  the non-negative v involved is half away from zero. ONNX QuantizeLinear rounds half to
  even: the two differ only on exact ties.
- Per-block (and LPBQ): the signed form q = clamp(floor(x / s_block + 0.5), offset,
  offset + levels), x' = q * s_block, as AIMET's per-block int4 (offset -8: [-8, 7]).
- LPBQ ("low-power block quantization") stores an integer per block and a float per
  channel; its effective block scale is per_block_int_scale * channel scale, computed
  in float32 (``lpbq_block_scales``), and then it is a per-block encoding.
- "float" encodings with 16 bits round to float16 and back (IEEE round to nearest even);
  other float widths leave the tensor unchanged.
- Arithmetic runs in float64 when x is float64 (the exact simulation the float64 truth
  needs) and in float32 otherwise, as AIMET does. Encodings wider than 16 bits (int32
  bias entries) always run in float64: float32 cannot hold x / scale + 2^31.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "QuantEncoding",
    "compute_encoding",
    "quantize_dequantize",
    "lpbq_block_scales",
    "round_half_away",
]


@dataclass(frozen=True)
class QuantEncoding:
    """One tensor's encoding in numeric form (the file formats live in mha2sha.encodings).

    ``scale`` / ``offset``: shape () per-tensor, (C,) per-channel along ``axis``, (C, n)
    per-block, n blocks of ``block_size`` along ``block_axis`` (LPBQ expanded to its
    effective block scales). A scalar offset is shared by every channel or block.
    ``dtype`` "float" (with bitwidth 16: float16) ignores scale and offset.
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
        """"float", "per_block", "per_channel" or "per_tensor"."""
        if self.dtype == "float":
            return "float"
        if self.block_size:
            return "per_block"
        return "per_channel" if np.ndim(self.scale) == 1 else "per_tensor"

    @property
    def strict(self) -> bool:
        """Strict symmetric: offset -(2^(bw-1) - 1) (the grid excludes -2^(bw-1))."""
        if not self.symmetric or self.dtype != "int":
            return False
        offsets = np.asarray(self.offset)
        return offsets.size > 0 and bool(np.all(offsets == -(2 ** (self.bitwidth - 1) - 1)))

    @property
    def levels(self) -> int:
        """The largest q: 2^bw - 1, or 2^bw - 2 for strict symmetric."""
        return 2**self.bitwidth - (2 if self.strict else 1)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (2.5 -> 3, -2.5 -> -3)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def compute_encoding(
    x_min,
    x_max,
    *,
    bitwidth: int,
    symmetric: bool,
    strict: bool = False,
    axis: int | None = None,
) -> QuantEncoding:
    """Calibrate an integer encoding from observed ranges, in float64, stored as float32.

    ``x_min`` / ``x_max`` are scalars (per-tensor) or 1-D arrays (per-channel along
    ``axis``). Ranges are widened to include 0; a zero range gets the smallest positive
    float32 scale (every value then quantizes to 0).
    """
    lo = np.minimum(np.asarray(x_min, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(x_max, dtype=np.float64), 0.0)
    tiny = np.finfo(np.float32).tiny
    if symmetric:
        half = 2 ** (bitwidth - 1)
        absmax = np.maximum(-lo, hi)
        scale = np.maximum(absmax / (half - 1), tiny)
        offset = np.full_like(scale, -(half - 1) if strict else -half)
    else:
        scale = np.maximum((hi - lo) / (2**bitwidth - 1), tiny)
        offset = -round_half_away(-lo / scale)
    if scale.ndim == 1 and axis is None:
        axis = 0
    # + 0.0 turns the -0.0 of -round(0) into 0.0.
    return QuantEncoding("int", bitwidth, symmetric, scale.astype(np.float32), (offset + 0.0).astype(np.float32), axis)


def lpbq_block_scales(per_block_int_scale: np.ndarray, channel_scale: np.ndarray) -> np.ndarray:
    """Effective LPBQ block scales (C, n_blocks) = per_block_int_scale[c, b] * channel_scale[c],
    multiplied in float32 as AIMET does."""
    ints = np.asarray(per_block_int_scale, dtype=np.float32)
    channel = np.asarray(channel_scale, dtype=np.float32).reshape(-1, 1)
    return ints * channel


def _compute_dtype(x: np.ndarray, enc: QuantEncoding):
    return np.float64 if x.dtype == np.float64 or enc.bitwidth > 16 else np.float32


def _along(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 1-D parameter shaped to broadcast along ``axis`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def quantize_dequantize(x: np.ndarray, enc: QuantEncoding) -> np.ndarray:
    """Fake-quantize ``x`` with ``enc``; returns an array of x's dtype and shape.

    See the module docstring for the arithmetic, the rounding (half away from zero, not
    ONNX's half to even) and the compute dtype.
    """
    x = np.asarray(x)
    if enc.dtype == "float":
        return x.astype(np.float16).astype(x.dtype) if enc.bitwidth == 16 else x
    dt = _compute_dtype(x, enc)
    xf = x.astype(dt, copy=False)
    if enc.block_size:
        return _per_block(xf, enc).astype(x.dtype, copy=False)
    scale = np.asarray(enc.scale, dtype=dt)
    offset = np.asarray(enc.offset, dtype=dt)
    if scale.ndim == 1 or offset.ndim == 1:
        axis = enc.axis if enc.axis is not None else 0
        if x.ndim == 0 or scale.size not in (1, x.shape[axis % x.ndim]):
            raise ValueError(f"per-channel encoding of {scale.size} channels on axis {axis} of a {x.shape} tensor")
        scale = _along(scale.reshape(-1), x.ndim, axis)
        offset = _along(offset.reshape(-1), x.ndim, axis)
    levels = enc.levels
    lo = offset * scale
    hi = lo + np.asarray(levels, dt) * scale
    q = np.floor(np.clip(xf, lo, hi) / scale - offset + np.asarray(0.5, dt))
    q = np.clip(q, 0, levels)
    return ((q + offset) * scale).astype(x.dtype, copy=False)


def _block_expanded(param: np.ndarray, x: np.ndarray, axis: int, block_axis: int, block_size: int) -> np.ndarray:
    """A (C, n_blocks) parameter (or a scalar / (C,) one) broadcast to x's shape: channel
    along ``axis``, each block's value repeated over its ``block_size`` elements."""
    if param.ndim == 0:
        return param
    if param.ndim == 1:
        return _along(param, x.ndim, axis)
    if param.shape[0] != x.shape[axis] or param.shape[1] * block_size < x.shape[block_axis]:
        raise ValueError(
            f"per-block encoding {param.shape} (block {block_size}) does not cover a {x.shape} tensor "
            f"with channels on axis {axis} and blocks on axis {block_axis}"
        )
    per_element = np.repeat(param, block_size, axis=1)[:, : x.shape[block_axis]]
    if axis > block_axis:
        per_element = per_element.T
    shape = [x.shape[a] if a in (axis, block_axis) else 1 for a in range(x.ndim)]
    return per_element.reshape(shape)


def _per_block(x: np.ndarray, enc: QuantEncoding) -> np.ndarray:
    """Per-block (and expanded LPBQ) quantization in the signed form of the module doc."""
    if x.ndim < 2:
        raise ValueError(f"per-block encoding on a {x.ndim}-D tensor")
    axis = (enc.axis if enc.axis is not None else 0) % x.ndim
    block_axis = (enc.block_axis if enc.block_axis is not None else (1 if axis == 0 else 0)) % x.ndim
    if axis == block_axis:
        raise ValueError(f"per-block encoding with channel and block on the same axis {axis}")
    dt = x.dtype
    scale = _block_expanded(np.asarray(enc.scale, dtype=dt), x, axis, block_axis, enc.block_size)
    offset = _block_expanded(np.asarray(enc.offset, dtype=dt), x, axis, block_axis, enc.block_size)
    q = np.floor(x / scale + np.asarray(0.5, dt))
    q = np.clip(q, offset, offset + np.asarray(enc.levels, dt))
    return q * scale
