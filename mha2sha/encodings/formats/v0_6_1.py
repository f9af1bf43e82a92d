"""AIMET encodings 0.6.1: ``{section: {tensor: [one dict per channel]}}``.

Each dict: ``bitwidth``, ``dtype`` ("int" / "float"), ``is_symmetric`` (the *string* "True" /
"False"), ``max``, ``min``, ``offset`` (a float holding an integer), ``scale``. One dict is a
per-tensor encoding, N dicts are N output channels in order. Float tensors:
``[{"bitwidth": 16, "dtype": "float"}]``. There is no per-block or LPBQ form.
Written from other versions: min = offset * scale, max = min + (2^bw - 1) * scale.
"""

from __future__ import annotations

import operator
from itertools import repeat

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.formats import _fields as f
from mha2sha.encodings.formats._render import KIND_LABELS, RenderContext, unrepresentable
from mha2sha.encodings.model import BLOCKED, TensorEncoding

VERSION = "0.6.1"
SECTIONS = {"activation_encodings": "activation", "param_encodings": "param"}
_KNOWN = ("bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale")
_KNOWN_SET = frozenset(_KNOWN)


# -- reading ------------------------------------------------------------------------------
def parse_section(key: str, members, tensors: dict[str, TensorEncoding]) -> None:
    """The pairs (tensor name, list of channel dicts) of section ``key``, into ``tensors``."""
    section = SECTIONS[key]
    for name, channels in members:
        if name in tensors:
            raise Problem(f"tensor {name!r} has an activation and a param encoding")
        tensors[name] = _entry(name, section, channels, f.where(key, name))


def _entry(name: str, section: str, channels, at: str) -> TensorEncoding:
    if not isinstance(channels, list) or not channels:
        raise Problem(f"{at}: must be a non-empty list of encodings (one per channel)")
    if set(map(type, channels)) != {dict}:
        for d in channels:
            f.obj(d, at, "encoding")
    first = channels[0]
    literals, absent = {}, []
    dtype_literal = first.get("dtype", "int")
    if "dtype" not in first:
        absent.append("dtype")
    else:
        literals["dtype"] = dtype_literal
    dtype = f.text(dtype_literal, at, "dtype").lower()
    if dtype not in ("int", "float"):
        raise Problem(f"{at}: 'dtype' must be \"int\" or \"float\", got {dtype_literal!r}")
    style = {"version": VERSION, "literals": literals, "absent": absent}
    # Unknown fields of each channel's dict (None when there are none: the common case,
    # found in C by the union of every dict's keys).
    extras = None
    if not set().union(*channels) <= _KNOWN_SET:
        extras = tuple({k: v for k, v in d.items() if k not in _KNOWN_SET} for d in channels)
    if dtype == "float":
        if len(channels) != 1:
            raise Problem(f"{at}: a float encoding has one entry, got {len(channels)}")
        bitwidth = f.float_bitwidth(f.require(first, "bitwidth", at), at, "bitwidth")
        return TensorEncoding("float", bitwidth, dtype="float", section=section, channel_extras=extras, style=style)

    bitwidth = f.int_bitwidth(f.require(first, "bitwidth", at), at, "bitwidth")
    symmetric = None
    if "is_symmetric" in first:
        literals["is_symmetric"] = first["is_symmetric"]
        symmetric = f.flag(first["is_symmetric"], at, "is_symmetric")
    else:
        absent.append("is_symmetric")
    for key in ("bitwidth", "dtype", "is_symmetric"):
        same, k = f.same_in_every(channels, key)
        if not same:
            raise Problem(f"{at}: channel {k} has {key} {channels[k].get(key)!r}, channel 0 has {first.get(key)!r}")
    scale = f.column(channels, "scale", at)
    offset = f.column(channels, "offset", at)
    f.positive_scales(scale, at, "scale")
    f.finite(offset, at, "offset")
    with_min = sum(map(operator.contains, channels, repeat("min")))
    with_max = sum(map(operator.contains, channels, repeat("max")))
    ranged = with_min == with_max == len(channels)
    if (with_min or with_max) and not ranged:
        raise Problem(f"{at}: some channels have min/max and some do not")
    lo = hi = None
    if ranged:
        lo = f.column(channels, "min", at)
        hi = f.column(channels, "max", at)
        f.finite(lo, at, "min")
        f.finite(hi, at, "max")
    else:
        absent.extend(["min", "max"])
    per_channel = len(channels) > 1

    def shaped(a):
        return a if a is None or per_channel else a.reshape(())

    return TensorEncoding(
        "per_channel" if per_channel else "per_tensor", bitwidth, symmetric=symmetric,
        scale=shaped(scale), offset=shaped(offset), min=shaped(lo), max=shaped(hi),
        section=section, channel_extras=extras, style=style,
    )


# -- writing ------------------------------------------------------------------------------
def render_sections(tensors: dict[str, TensorEncoding], ctx: RenderContext) -> dict:
    out = {key: {} for key in SECTIONS}
    for name, enc in tensors.items():
        if enc.kind in BLOCKED:
            raise unrepresentable(name, f"{KIND_LABELS[enc.kind]} encoding", VERSION,
                                  "0.6.1 has no per-block or LPBQ form: write 1.0.0 or 2.0.0")
        key = "param_encodings" if ctx.section_of(name, enc) == "param" else "activation_encodings"
        out[key][name] = _render_entry(enc, ctx)
    return out


def _render_entry(enc: TensorEncoding, ctx: RenderContext) -> list[dict]:
    same = ctx.same_style(enc)
    dtype = ctx.literal(enc, "dtype", enc.dtype, enc.dtype, str.lower)
    if enc.kind == "float":
        d = {"bitwidth": enc.bitwidth}
        if not ctx.omitted(enc, "dtype"):
            d["dtype"] = dtype
        return [{**d, **_channel_extras(enc, 0, same)}]
    count = enc.channels or 1
    scales, offsets = enc.scale.reshape(-1).tolist(), enc.offset.reshape(-1).tolist()
    if same and enc.min is not None:
        lows, highs = enc.min.reshape(-1).tolist(), enc.max.reshape(-1).tolist()
    elif same:
        lows = highs = None
    else:
        levels = 2**enc.bitwidth - 1
        lows = [float(o) * float(s) for s, o in zip(scales, offsets)]
        highs = [lo + levels * float(s) for lo, s in zip(lows, scales)]
    symmetric = None if ctx.omitted(enc, "is_symmetric") else ctx.literal(
        enc, "is_symmetric", enc.symmetric, str(enc.inferred_symmetric()), lambda v: f.flag(v, "", ""))
    entries = []
    for k in range(count):
        d = {"bitwidth": enc.bitwidth}
        if not ctx.omitted(enc, "dtype"):
            d["dtype"] = dtype
        if symmetric is not None:
            d["is_symmetric"] = symmetric
        if lows is not None:
            d["max"] = highs[k]
            d["min"] = lows[k]
        d["offset"] = offsets[k] if same else float(offsets[k])
        d["scale"] = scales[k] if same else float(scales[k])
        entries.append({**d, **_channel_extras(enc, k, same)})
    return entries


def _channel_extras(enc: TensorEncoding, k: int, same: bool) -> dict:
    if same and enc.channel_extras is not None and k < len(enc.channel_extras):
        return dict(enc.channel_extras[k])
    return {}
