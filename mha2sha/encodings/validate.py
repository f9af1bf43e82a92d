"""Checks of an EncodingSet against the model it belongs to.

Parsing already refuses what is wrong in the file alone (JSON, version, fields, types,
scales, bitwidths). Here: channel and block counts against the tensors' shapes. Names the
model does not have are not an error (an encodings file may cover a larger export): they
come back as warnings for the report.
"""

from __future__ import annotations

import math

from mha2sha.encodings.errors import EncodingsError
from mha2sha.encodings.layout import ModelView, as_view, channel_axis_of
from mha2sha.encodings.model import BLOCKED, EncodingSet, TensorEncoding, default_block_axis


def validate_against(enc_set: EncodingSet, model) -> list[str]:
    view = as_view(model)
    warnings, problems = [], []
    for name, enc in enc_set.tensors.items():
        if name not in view:
            warnings.append(f"{name!r} is encoded but the model has no such tensor")
            continue
        problem = _check(name, enc, view)
        if problem:
            problems.append(problem)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EncodingsError(enc_set.source, problems[0] + more)
    return warnings


def _check(name: str, enc: TensorEncoding, view: ModelView) -> str | None:
    if enc.kind not in ("per_channel", *BLOCKED):
        return None
    shape = view.shape(name)
    if shape is None:
        return None
    rank = len(shape)
    if rank == 0:
        return f"{name!r} is a scalar but its encoding is {enc.kind.replace('_', '-')} (it needs channels)"
    if enc.rank is not None and enc.rank != rank:
        return f"{name!r}: the encoding is laid out for rank {enc.rank}, the tensor {list(shape)} has rank {rank}"
    axis = enc.channel_axis if enc.channel_axis is not None else channel_axis_of(name, view)
    if not -rank <= axis < rank:
        return f"{name!r}: channel axis {axis} is out of range for shape {list(shape)}"
    channels = shape[axis]
    where = f"axis {axis % rank} of {list(shape)}"
    if enc.kind == "per_block" and enc.channels is None:  # 1.0.0: flat, channel-major
        if enc.scale.size % channels:
            return f"{name!r}: {enc.scale.size} per-block scales do not split into the {channels} channels on {where}"
        enc = enc.with_channels(channels)
    if enc.channels != channels:
        label = "per-channel scales" if enc.kind != "per_block" else "rows of per-block scales"
        return f"{name!r}: {enc.channels} {label} but the tensor has {channels} channels on {where}"
    if enc.kind in BLOCKED:
        block_axis = (enc.block_axis if enc.block_axis is not None else default_block_axis(axis, rank)) % rank
        expected = math.ceil(shape[block_axis] / enc.block_size)
        if enc.blocks != expected:
            return (f"{name!r}: {enc.blocks} blocks per channel but {shape[block_axis]} inputs on axis {block_axis} "
                    f"of {list(shape)} make {expected} blocks of {enc.block_size}")
    return None
