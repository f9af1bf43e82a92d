"""AIMET encodings 1.0.0: ``{section: [{"name": ..., ...}]}``, flat lists, no axes.

Fields: ``dtype`` "INT" / "FLOAT", ``enc_type`` PER_TENSOR / PER_CHANNEL / PER_BLOCK / LPBQ,
``bw``, ``is_sym`` (bool), ``scale`` and ``offset`` flat lists (length 1 per-tensor, C
per-channel, C * in/block per-block, channel-major). Per-block scales are channel-major
whatever the weight's layout (a MatMul weight [in, out] stores them transposed to
(out, in/block)), so the channel count is not in the file. LPBQ: ``bw`` is the decompressed
width, ``compressed_bw`` the weights', ``scale`` / ``offset`` one per channel, and
``per_block_int_scale`` flat, channel-major (effective block scale = int * channel scale).
"""

from __future__ import annotations

import numpy as np

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.formats import _fields as f
from mha2sha.encodings.formats._render import RenderContext, as_int_if_integral
from mha2sha.encodings.model import TensorEncoding, as_float, exact

VERSION = "1.0.0"
SECTIONS = {"activation_encodings": "activation", "param_encodings": "param"}
ENC_TYPES = {"PER_TENSOR": "per_tensor", "PER_CHANNEL": "per_channel", "PER_BLOCK": "per_block", "LPBQ": "lpbq"}
_KNOWN = ("name", "dtype", "enc_type", "bw", "is_sym", "scale", "offset", "block_size", "compressed_bw", "per_block_int_scale")


# -- reading ------------------------------------------------------------------------------
def parse_section(key: str, members, tensors: dict[str, TensorEncoding]) -> None:
    """The pairs (index, entry) of section ``key``, into ``tensors``."""
    section = SECTIONS[key]
    for k, entry in members:
        if not isinstance(entry, dict):
            raise Problem(f"{key}[{k}]: an encoding must be an object")
        name = f.text(f.require(entry, "name", f"{key}[{k}]"), f"{key}[{k}]", "name")
        if name in tensors:
            raise Problem(f"tensor {name!r} has two encodings")
        tensors[name] = _entry(entry, section, f.where(key, name))


def _entry(entry: dict, section: str, at: str) -> TensorEncoding:
    literals, absent = {}, []
    style = {"version": VERSION, "literals": literals, "absent": absent}
    extras = {k: v for k, v in entry.items() if k not in _KNOWN}
    dtype_literal = f.text(f.require(entry, "dtype", at), at, "dtype")
    literals["dtype"] = dtype_literal
    dtype = dtype_literal.upper()
    if dtype not in ("INT", "FLOAT"):
        raise Problem(f"{at}: 'dtype' must be \"INT\" or \"FLOAT\", got {dtype_literal!r}")
    if "enc_type" in entry:
        literals["enc_type"] = f.text(entry["enc_type"], at, "enc_type")
    if dtype == "FLOAT":
        if "enc_type" not in entry:
            absent.append("enc_type")
        bitwidth = f.float_bitwidth(f.require(entry, "bw", at), at, "bw")
        for key in ("is_sym", "scale", "offset", "block_size", "compressed_bw", "per_block_int_scale"):
            if key in entry:
                extras[key] = entry[key]
        return TensorEncoding("float", bitwidth, dtype="float", section=section, extras=extras, style=style)

    enc_type = f.text(f.require(entry, "enc_type", at), at, "enc_type").upper()
    if enc_type not in ENC_TYPES:
        raise Problem(f"{at}: unsupported enc_type {entry['enc_type']!r} (one of {', '.join(ENC_TYPES)})")
    kind = ENC_TYPES[enc_type]
    bw = f.int_bitwidth(f.require(entry, "bw", at), at, "bw")
    symmetric = None
    if "is_sym" in entry:
        literals["is_sym"] = entry["is_sym"]
        symmetric = f.flag(entry["is_sym"], at, "is_sym")
    else:
        absent.append("is_sym")
    scale = f.numbers(f.require(entry, "scale", at), at, "scale", ndim=1)
    offset = f.numbers(f.require(entry, "offset", at), at, "offset", ndim=1)
    f.positive_scales(scale, at, "scale")
    f.finite(offset, at, "offset")
    f.same_length(scale, offset, at, ("scale", "offset"))
    enc = TensorEncoding(kind, bw, symmetric=symmetric, scale=scale, offset=offset, section=section, extras=extras, style=style)
    if kind == "per_tensor":
        if scale.size != 1:
            raise Problem(f"{at}: a PER_TENSOR encoding has one scale, got {scale.size}")
        enc.scale, enc.offset = scale.reshape(()), offset.reshape(())
    elif kind in ("per_block", "lpbq"):
        enc.block_size = _block_size(entry, at)
    if kind == "lpbq":
        enc.decompressed_bitwidth = bw
        enc.bitwidth = f.int_bitwidth(f.require(entry, "compressed_bw", at), at, "compressed_bw")
        ints = f.numbers(f.require(entry, "per_block_int_scale", at), at, "per_block_int_scale", ndim=1)
        if ints.size % scale.size:
            raise Problem(f"{at}: {ints.size} per_block_int_scale values do not split into {scale.size} channels")
        _positive_integers(ints, at, "per_block_int_scale")
        enc.per_block_int_scale = ints.reshape(scale.size, -1)
    return enc


def _block_size(entry: dict, at: str) -> int:
    size = f.integer(f.require(entry, "block_size", at), at, "block_size")
    if size < 1:
        raise Problem(f"{at}: 'block_size' must be positive, got {size}")
    return size


def _positive_integers(values: np.ndarray, at: str, key: str) -> None:
    floats = as_float(values)
    if not np.all(floats >= 1) or not np.all(floats == np.round(floats)):
        raise Problem(f"{at}: {key!r} must hold positive integers")


# -- writing ------------------------------------------------------------------------------
def render_sections(tensors: dict[str, TensorEncoding], ctx: RenderContext) -> dict:
    out = {key: [] for key in SECTIONS}
    for name, enc in tensors.items():
        key = "param_encodings" if ctx.section_of(name, enc) == "param" else "activation_encodings"
        out[key].append(_render_entry(name, enc, ctx))
    return out


def _render_entry(name: str, enc: TensorEncoding, ctx: RenderContext) -> dict:
    same = ctx.same_style(enc)
    extras = dict(enc.extras) if same else {}
    if enc.kind == "float":
        d = {"name": name, "dtype": ctx.literal(enc, "dtype", "FLOAT", "FLOAT", str.upper)}
        if not ctx.omitted(enc, "enc_type"):
            d["enc_type"] = ctx.literal(enc, "enc_type", "PER_TENSOR", "PER_TENSOR", str.upper)
        d["bw"] = enc.bitwidth
        return {**d, **extras}
    enc_type = {v: k for k, v in ENC_TYPES.items()}[enc.kind]
    d = {
        "name": name,
        "dtype": ctx.literal(enc, "dtype", "INT", "INT", str.upper),
        "enc_type": ctx.literal(enc, "enc_type", enc_type, enc_type, str.upper),
        "bw": enc.bitwidth,
    }
    if not ctx.omitted(enc, "is_sym"):
        d["is_sym"] = ctx.literal(enc, "is_sym", enc.symmetric, enc.inferred_symmetric(), lambda v: f.flag(v, "", ""))

    def floats(a):
        return a.reshape(-1).tolist() if same else [float(v) for v in a.reshape(-1)]

    def ints(a):
        return a.reshape(-1).tolist() if same else [as_int_if_integral(v) for v in a.reshape(-1)]

    if enc.kind == "lpbq":
        decompressed = enc.decompressed_bitwidth
        if decompressed is None:
            decompressed = 2 * enc.bitwidth
            ctx.note(f"{VERSION} LPBQ needs the decompressed bitwidth, which 2.x does not store: "
                     f"written as twice the weight bitwidth (aimet-onnx's default), e.g. {name!r}: {decompressed}")
        d["bw"] = decompressed
        d["compressed_bw"] = enc.bitwidth
        d["scale"] = floats(enc.scale)
        offset = enc.offset if enc.offset is not None else exact([-(2 ** (decompressed - 1))] * enc.channels)
        d["offset"] = ints(offset)
        d["per_block_int_scale"] = ints(enc.per_block_int_scale)
        d["block_size"] = enc.block_size
        return {**d, **extras}
    d["scale"] = floats(enc.scale)
    d["offset"] = ints(enc.offset)
    if enc.kind == "per_block":
        d["block_size"] = enc.block_size
    return {**d, **extras}
