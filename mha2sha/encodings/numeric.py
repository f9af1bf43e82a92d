"""From file entries to refimpl's numeric QuantEncoding, the form simulations use.

LPBQ is expanded to per-block effective scales, per_block_int_scale * channel scale,
multiplied in float32 as AIMET does. Axes come from the entry when the file stores them
(2.x), else from the caller (``channel_axis``, usually ``channel_axis_of``); they are made
non-negative when the rank is known.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mha2sha.encodings.layout import as_view, channel_axis_of
from mha2sha.encodings.model import EncodingSet, TensorEncoding, as_float, default_block_axis
from refimpl.quant import QuantEncoding


def to_quant(enc: TensorEncoding, *, channel_axis: int | None = None, shape: Sequence[int] | None = None) -> QuantEncoding:
    """The numeric form of ``enc`` for a tensor of ``shape`` whose output channels lie on
    ``channel_axis`` (both needed only for what the file does not store: axes in 0.6.1 /
    1.0.0, the channel count of 1.0.0 per-block entries)."""
    if enc.kind == "float":
        return QuantEncoding("float", enc.bitwidth, False, np.zeros(()), np.zeros(()))
    symmetric = enc.inferred_symmetric()
    if enc.kind == "per_tensor":
        return QuantEncoding("int", enc.bitwidth, symmetric, as_float(enc.scale), as_float(enc.offset))
    rank = len(shape) if shape is not None else enc.rank
    axis = enc.channel_axis if enc.channel_axis is not None else channel_axis
    if axis is None:
        raise ValueError("the channel axis is not in the file: pass channel_axis (see channel_axis_of)")
    if rank is not None:
        axis %= rank
    if shape is not None and enc.channels is not None and shape[axis] != enc.channels:
        raise ValueError(f"{enc.channels} channels in the encoding, {shape[axis]} on axis {axis} of {list(shape)}")
    if enc.kind == "per_channel":
        return QuantEncoding("int", enc.bitwidth, symmetric, as_float(enc.scale), as_float(enc.offset), axis=axis)
    if rank is None:
        raise ValueError("a per-block encoding needs the tensor's shape")
    block_axis = (enc.block_axis if enc.block_axis is not None else default_block_axis(axis, rank)) % rank
    if enc.kind == "per_block":
        grid = enc.with_channels(shape[axis]) if enc.channels is None and shape is not None else enc
        if grid.channels is None:
            raise ValueError("a 1.0.0 per-block encoding needs the tensor's shape")
        scale, offset = as_float(grid.scale), as_float(grid.offset)
    else:
        scale = (as_float(enc.per_block_int_scale).astype(np.float32) * as_float(enc.scale).astype(np.float32)[:, None]).astype(np.float64)
        offset = np.full(scale.shape, -(2.0 ** (enc.bitwidth - 1)))
    return QuantEncoding("int", enc.bitwidth, True, scale, offset, axis=axis, block_axis=block_axis, block_size=enc.block_size)


def numeric_encodings(enc_set: EncodingSet, model) -> dict[str, QuantEncoding]:
    """{tensor: QuantEncoding} for every encoded tensor of ``model`` (onnx.ModelProto or
    onnx_ir.Model); names the model does not have are left out (validate_against lists them)."""
    view = as_view(model)
    out: dict[str, QuantEncoding] = {}
    for name, enc in enc_set.tensors.items():
        if name not in view:
            continue
        needs_axis = enc.kind not in ("float", "per_tensor") and enc.channel_axis is None
        axis = channel_axis_of(name, view) if needs_axis else None
        out[name] = to_quant(enc, channel_axis=axis, shape=view.shape(name))
    return out
