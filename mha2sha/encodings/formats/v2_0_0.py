"""AIMET encodings 2.0.0 and 2.1.0: one ``encodings`` list in ONNX QuantizeLinear terms.

Entry: ``name``, ``output_dtype`` (int4 / uint8 / int32 ...), ``y_scale`` (a number
per-tensor, a list per-channel, a list nested in the tensor's layout per-block: the block
axis holds in/block, the channel axis C, every other axis 1), ``y_zero_point`` (omitted
when zero), ``axis`` (the channel axis per-channel, the *block* axis per-block),
``block_size``. LPBQ (2.0.0): ``per_block_int_scale`` nested like per-block scales and
``per_channel_float_scale`` (nested with 1 on the block axis, or flat), no ``y_scale``.
LPBQ (2.1.0): ``y_scale`` is a meta dict ``{"x": int scales, "x_scale": channel scales,
"axis": channel axis}``. Activations are exported unsigned, weights signed:
zero point = -offset (uint), -offset - 2^(bw-1) (int). Float tensors get no entry.
"""

from __future__ import annotations

import numpy as np

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.formats import _fields as f
from mha2sha.encodings.formats._render import (
    KIND_LABELS,
    RenderContext,
    as_int_if_integral,
    unrepresentable,
)
from mha2sha.encodings.model import TensorEncoding, as_float

VERSIONS = ("2.0.0", "2.1.0")
INT_DTYPES = {f"{sign}int{bw}": (bw, sign == "") for bw in (2, 4, 8, 16, 32) for sign in ("", "u")}
FLOAT_DTYPES = {"float4e2m1": 4, "float8e4m3fn": 8, "float8e4m3fnuz": 8, "float8e5m2": 8, "float8e5m2fnuz": 8,
                "float16": 16, "bfloat16": 16, "float32": 32}
_KNOWN = ("name", "output_dtype", "y_scale", "y_zero_point", "axis", "block_size", "per_block_int_scale", "per_channel_float_scale")
_META_KNOWN = ("x", "x_scale", "axis", "x_zero_point")


# -- reading ------------------------------------------------------------------------------
def parse_section(members, version: str, tensors: dict[str, TensorEncoding]) -> None:
    """The pairs (index, entry) of ``encodings``, into ``tensors``."""
    for k, entry in members:
        if not isinstance(entry, dict):
            raise Problem(f"encodings[{k}]: an encoding must be an object")
        name = f.text(f.require(entry, "name", f"encodings[{k}]"), f"encodings[{k}]", "name")
        if name in tensors:
            raise Problem(f"tensor {name!r} has two encodings")
        tensors[name] = _entry(entry, version, f.where("encodings", name))


def _entry(entry: dict, version: str, at: str) -> TensorEncoding:
    style = {"version": version, "absent": []}
    extras = {k: v for k, v in entry.items() if k not in _KNOWN}
    dtype_name = f.text(f.require(entry, "output_dtype", at), at, "output_dtype")
    style["output_dtype"] = dtype_name
    if dtype_name.lower() in FLOAT_DTYPES:
        # Float formats (fp16 / fp8 / fp4) are kept as written, not modelled.
        extras.update({k: entry[k] for k in _KNOWN[2:] if k in entry})
        return TensorEncoding("float", FLOAT_DTYPES[dtype_name.lower()], dtype="float", extras=extras, style=style)
    if dtype_name.lower() not in INT_DTYPES:
        raise Problem(f"{at}: unknown output_dtype {dtype_name!r} (one of {', '.join(INT_DTYPES)} or a float type)")
    bw, signed = INT_DTYPES[dtype_name.lower()]
    axis = f.integer(entry["axis"], at, "axis") if "axis" in entry else None
    block_size = None
    if "block_size" in entry:
        block_size = f.integer(entry["block_size"], at, "block_size")
        if block_size < 1:
            raise Problem(f"{at}: 'block_size' must be positive, got {block_size}")
    y_scale = entry.get("y_scale")
    common = dict(signed=signed, extras=extras, style=style)
    if isinstance(y_scale, dict):
        return _lpbq_meta(entry, y_scale, bw, axis, block_size, at, common)
    if y_scale is None:
        if "per_block_int_scale" in entry or "per_channel_float_scale" in entry:
            return _lpbq_fields(entry, bw, axis, block_size, at, common)
        raise Problem(f"{at}: missing field 'y_scale'")
    scale = f.numbers(y_scale, at, "y_scale", scalar_ok=True)
    f.positive_scales(scale, at, "y_scale")
    zero = _zero_point(entry, scale.shape, at, style)
    offset = _offsets(zero, bw, signed)
    if block_size is not None:
        return _per_block(scale, offset, bw, axis, block_size, at, common)
    if scale.ndim == 0:
        return TensorEncoding("per_tensor", bw, scale=scale, offset=offset, **common)
    if scale.ndim != 1:
        raise Problem(f"{at}: a nested 'y_scale' without 'block_size'")
    if axis is None:
        style["absent"].append("axis")
    return TensorEncoding("per_channel", bw, scale=scale, offset=offset, channel_axis=axis, **common)


def _zero_point(entry: dict, shape: tuple[int, ...], at: str, style: dict) -> np.ndarray:
    """Zero points broadcast to the scales' shape; how they were written goes to ``style``."""
    if "y_zero_point" not in entry:
        style["zero_point"] = "omitted"
        return np.zeros(shape, dtype=np.int64)
    zero = f.numbers(entry["y_zero_point"], at, "y_zero_point", scalar_ok=True)
    f.finite(zero, at, "y_zero_point")
    if zero.ndim == 0 and shape:
        style["zero_point"] = "scalar"
        return np.full(shape, zero[()], dtype=zero.dtype)
    if zero.shape != shape:
        raise Problem(f"{at}: 'y_zero_point' has shape {list(zero.shape)} but 'y_scale' has {list(shape)}")
    style["zero_point"] = "written"
    return zero


def _offsets(zero: np.ndarray, bw: int, signed: bool) -> np.ndarray:
    """AIMET offsets (<= 0) from ONNX zero points: uint -zp, int -zp - 2^(bw-1)."""
    return _negate_minus(zero, 2 ** (bw - 1) if signed else 0)


def _zeros_from_offsets(offset: np.ndarray, bw: int, signed: bool, same: bool) -> np.ndarray:
    zero = _negate_minus(offset, 2 ** (bw - 1) if signed else 0)
    if same or zero.dtype == np.int64:
        return zero
    floats = as_float(zero)
    if np.all(floats == np.round(floats)) and np.all(np.abs(floats) < 2**62):
        return floats.astype(np.int64)
    return _map(zero, as_int_if_integral)


def _negate_minus(values: np.ndarray, half: int) -> np.ndarray:
    """-values - half in the values' own type (exactly as Python would compute it per
    number: int64 only where it cannot overflow, else on the Python numbers)."""
    if values.dtype == np.int64 and values.size and np.abs(values).max() >= 2**62:
        values = values.astype(object)
    return -values - half


def _grid(nested: np.ndarray, block_axis: int, at: str, key: str) -> tuple[np.ndarray, int]:
    """Nested per-block values -> ((C, nb) channel-major, channel axis)."""
    rank = nested.ndim
    if rank < 2:
        raise Problem(f"{at}: per-block {key!r} must be nested in the tensor's layout (rank >= 2)")
    if not -rank <= block_axis < rank:
        raise Problem(f"{at}: 'axis' {block_axis} is out of range for a rank-{rank} {key!r}")
    block_axis %= rank
    others = [a for a in range(rank) if a != block_axis]
    wide = [a for a in others if nested.shape[a] > 1]
    if len(wide) > 1:
        raise Problem(f"{at}: per-block {key!r} varies along axes {wide} besides the block axis: unsupported")
    channel_axis = wide[0] if wide else others[0]
    grid = np.moveaxis(nested, (channel_axis, block_axis), (0, 1)).reshape(nested.shape[channel_axis], nested.shape[block_axis])
    return grid, channel_axis


def _per_block(scale, offset, bw, axis, block_size, at, common) -> TensorEncoding:
    if axis is None:
        raise Problem(f"{at}: a per-block encoding needs 'axis' (the block axis)")
    grid, channel_axis = _grid(scale, axis, at, "y_scale")
    offsets, _ = _grid(offset, axis, at, "y_zero_point")
    return TensorEncoding("per_block", bw, scale=grid, offset=offsets, block_size=block_size, channel_axis=channel_axis,
                          block_axis=axis, rank=scale.ndim, **common)


def _channel_scales(value, channels: int, channel_axis: int, at: str, key: str, style: dict) -> np.ndarray:
    scales = f.numbers(value, at, key)
    style["channel_scale"] = "flat" if scales.ndim == 1 else "nested"
    if scales.ndim > 1:
        wide = [a for a in range(scales.ndim) if scales.shape[a] > 1]
        if wide not in ([channel_axis], []) or scales.size != channels:
            raise Problem(f"{at}: {key!r} must hold one scale per channel along axis {channel_axis}")
    flat = scales.reshape(-1)
    if flat.size != channels:
        raise Problem(f"{at}: {key!r} has {flat.size} scales for {channels} channels")
    f.positive_scales(flat, at, key)
    return flat


def _lpbq_common(ints_value, bw, axis, block_size, at, key) -> tuple[np.ndarray, int]:
    if axis is None or block_size is None:
        raise Problem(f"{at}: an LPBQ encoding needs 'axis' (the block axis) and 'block_size'")
    ints = f.numbers(ints_value, at, key)
    floats = as_float(ints)
    if not np.all(floats >= 1) or not np.all(floats == np.round(floats)):
        raise Problem(f"{at}: {key!r} must hold positive integers")
    return _grid(ints, axis, at, key) + (ints.ndim,)


def _lpbq_fields(entry, bw, axis, block_size, at, common) -> TensorEncoding:
    style = common["style"]
    style["lpbq_form"] = "fields"
    grid, channel_axis, rank = _lpbq_common(f.require(entry, "per_block_int_scale", at), bw, axis, block_size, at, "per_block_int_scale")
    scales = _channel_scales(f.require(entry, "per_channel_float_scale", at), grid.shape[0], channel_axis, at, "per_channel_float_scale", style)
    _zero_lpbq(entry.get("y_zero_point"), "y_zero_point", at, style)
    return TensorEncoding("lpbq", bw, scale=scales, block_size=block_size, per_block_int_scale=grid,
                          channel_axis=channel_axis, block_axis=axis, rank=rank, **common)


def _lpbq_meta(entry, meta, bw, axis, block_size, at, common) -> TensorEncoding:
    """2.1.0: y_scale = {"x": int block scales, "x_scale": channel scales, "axis": channel axis}."""
    style = common["style"]
    style["lpbq_form"] = "meta"
    style["meta_extras"] = {k: v for k, v in meta.items() if k not in _META_KNOWN}
    grid, channel_axis, rank = _lpbq_common(f.require(meta, "x", at + " y_scale"), bw, axis, block_size, at, "y_scale.x")
    if "axis" in meta:
        stored = f.integer(meta["axis"], at, "y_scale.axis")
        if stored % rank != channel_axis and grid.shape[0] > 1:
            raise Problem(f"{at}: 'y_scale.axis' {stored} is not the channel axis of 'y_scale.x' ({channel_axis})")
        style["meta_axis"] = stored
    scales = _channel_scales(f.require(meta, "x_scale", at + " y_scale"), grid.shape[0], channel_axis, at, "y_scale.x_scale", style)
    _zero_lpbq(meta.get("x_zero_point"), "y_scale.x_zero_point", at, style, "meta_zero_point")
    _zero_lpbq(entry.get("y_zero_point"), "y_zero_point", at, style)
    return TensorEncoding("lpbq", bw, scale=scales, block_size=block_size, per_block_int_scale=grid,
                          channel_axis=channel_axis, block_axis=axis, rank=rank, **common)


def _zero_lpbq(value, key: str, at: str, style: dict, style_key: str = "zero_point") -> None:
    """LPBQ is symmetric: a zero point, if written, must be all zeros (kept as written)."""
    if value is None:
        style[style_key] = "omitted"
        return
    zeros = f.numbers(value, at, key, scalar_ok=True)
    if np.any(as_float(zeros) != 0):
        raise Problem(f"{at}: an LPBQ {key!r} must be zero (LPBQ is symmetric)")
    # Kept as its form and the zero's type; re-made for the entry's (possibly sliced) shape.
    style[style_key] = {"form": "scalar" if zeros.ndim == 0 else ("flat" if zeros.ndim == 1 else "nested"),
                        "zero": zeros.reshape(-1).tolist()[0]}


# -- writing ------------------------------------------------------------------------------
def render_entries(tensors: dict[str, TensorEncoding], ctx: RenderContext) -> list[dict]:
    out, floats = [], []
    for name, enc in tensors.items():
        if enc.kind == "float" and not ctx.same_style(enc):
            floats.append(name)
            continue
        out.append(_render_entry(name, enc, ctx))
    if floats:
        shown = ", ".join(repr(n) for n in floats[:5]) + (", ..." if len(floats) > 5 else "")
        ctx.note(f"{len(floats)} float encodings not written: {ctx.version} has no float16/float32 entries "
                 f"(aimet-onnx omits them too): {shown}")
    return out


def _render_entry(name: str, enc: TensorEncoding, ctx: RenderContext) -> dict:
    same = ctx.same_style(enc)
    extras = dict(enc.extras) if same else {}
    if enc.kind == "float":
        return {"name": name, "output_dtype": enc.style["output_dtype"], **extras}
    signed = ctx.signed(name, enc)
    dtype_name = f"{'int' if signed else 'uint'}{enc.bitwidth}"
    if f"{dtype_name}" not in INT_DTYPES:
        raise unrepresentable(name, f"a {enc.bitwidth}-bit encoding", ctx.version, "2.x output dtypes are 2, 4, 8, 16 or 32 bits")
    if same and enc.style.get("output_dtype", "").lower() == dtype_name:
        dtype_name = enc.style["output_dtype"]
    d: dict = {"name": name, "output_dtype": dtype_name}
    if enc.kind == "lpbq":
        return {**d, **_render_lpbq(name, enc, ctx, same), **extras}
    zero_style = enc.style.get("zero_point") if same else None
    if enc.kind == "per_tensor":
        d["y_scale"] = enc.scale.tolist() if same else float(enc.scale[()])
        zero = _zeros_from_offsets(enc.offset, enc.bitwidth, signed, same)
        if _write_zero(zero, zero_style):
            d["y_zero_point"] = zero.tolist()
        return {**d, **extras}
    if enc.kind == "per_channel":
        if enc.channel_axis is None:
            raise unrepresentable(name, "a per-channel encoding without a channel axis", ctx.version,
                                  "the input's version does not store it: pass model= so that it is taken from the consumer op")
        d["y_scale"] = enc.scale.tolist() if same else [float(v) for v in enc.scale]
        zero = _zeros_from_offsets(enc.offset, enc.bitwidth, signed, same)
        if _write_zero(zero, zero_style):
            zeros = zero.tolist()
            d["y_zero_point"] = zeros[0] if zero_style == "scalar" and len(set(zeros)) == 1 else zeros
        if not ctx.omitted(enc, "axis"):
            d["axis"] = enc.channel_axis
        return {**d, **extras}
    # per-block
    _require_layout(name, enc, ctx)
    if enc.channels is None:
        raise unrepresentable(name, "a 1.0.0 per-block encoding with an unknown channel count", ctx.version, "pass model=")
    d["y_scale"] = _nest(enc.scale if same else as_float(enc.scale), enc)
    zero = _zeros_from_offsets(enc.offset, enc.bitwidth, signed, same)
    if _write_zero(zero, zero_style):
        d["y_zero_point"] = _nest(zero, enc)
    d["axis"] = enc.block_axis
    d["block_size"] = enc.block_size
    return {**d, **extras}


def _render_lpbq(name: str, enc: TensorEncoding, ctx: RenderContext, same: bool) -> dict:
    _require_layout(name, enc, ctx)
    form = enc.style.get("lpbq_form") if same else None
    form = form or ("meta" if ctx.version == "2.1.0" else "fields")
    if form == "meta" and ctx.version == "2.0.0":
        form = "fields"  # 2.0.0 has no meta dict
    ints = _nest(enc.per_block_int_scale if same else _map(enc.per_block_int_scale, as_int_if_integral), enc)
    scales = enc.scale if same else as_float(enc.scale)
    nested_scales = _nest(scales.reshape(-1, 1), enc)
    # Flat or nested as the source wrote it, when written in the source's form.
    as_read = same and form == enc.style.get("lpbq_form") and enc.style.get("channel_scale") == "flat"
    channel_scale = scales.tolist() if as_read else nested_scales
    out: dict = {}
    if form == "meta":
        meta = {"x": ints, "x_scale": channel_scale}
        if not same or "meta_axis" in enc.style:
            meta["axis"] = enc.style.get("meta_axis", enc.channel_axis) if same else enc.channel_axis
        zero = enc.style.get("meta_zero_point") if same else None
        if isinstance(zero, dict):
            meta["x_zero_point"] = _zeros_like(zero, scales.reshape(-1, 1), enc)
        meta.update(enc.style.get("meta_extras", {}) if same else {})
        out["y_scale"] = meta
    else:
        out["per_block_int_scale"] = ints
        out["per_channel_float_scale"] = channel_scale
    zero = enc.style.get("zero_point") if same else None
    if isinstance(zero, dict):
        out["y_zero_point"] = _zeros_like(zero, enc.per_block_int_scale, enc)
    out["axis"] = enc.block_axis
    out["block_size"] = enc.block_size
    return out


def _zeros_like(written: dict, grid: np.ndarray, enc: TensorEncoding):
    """An all-zero LPBQ zero point in the form the source wrote, shaped like ``grid``."""
    if written["form"] == "scalar":
        return written["zero"]
    zeros = np.full(grid.shape, written["zero"], dtype=object)
    return zeros.reshape(-1).tolist() if written["form"] == "flat" else _nest(zeros, enc)


def _write_zero(zero: np.ndarray, zero_style) -> bool:
    """Zero points are written unless all zero (aimet-onnx's rule) or as the source did."""
    if zero_style == "omitted":
        return False
    if zero_style in ("written", "scalar"):
        return True
    return bool(np.any(as_float(zero) != 0))


def _require_layout(name: str, enc: TensorEncoding, ctx: RenderContext) -> None:
    if enc.rank is None or enc.channel_axis is None or enc.block_axis is None:
        raise unrepresentable(name, f"{KIND_LABELS[enc.kind]} encoding whose tensor layout is unknown", ctx.version,
                              "2.x nests block scales in the tensor's layout: pass model= (or move_channel_axis)")


def _nest(grid: np.ndarray, enc: TensorEncoding) -> list:
    """(C, nb) channel-major -> nested list in the tensor layout (C on the channel axis,
    nb on the block axis, 1 elsewhere)."""
    rank = enc.rank
    channel_axis, block_axis = enc.channel_axis % rank, enc.block_axis % rank
    shape = [1] * rank
    shape[channel_axis], shape[block_axis] = grid.shape
    ordered = grid if channel_axis < block_axis else grid.T
    return ordered.reshape(shape).tolist()


def _map(values: np.ndarray, fn) -> np.ndarray:
    out = np.empty(values.shape, dtype=object)
    for index in np.ndindex(*values.shape):
        out[index] = fn(values[index])
    return out
