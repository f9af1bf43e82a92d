"""From file entries to refimpl's numeric QuantEncoding, the form simulations use.

LPBQ is expanded to per-block effective scales, per_block_int_scale * channel scale,
multiplied in float32 as AIMET does. Axes come from the entry when the file stores them
(2.x), else from the caller (``channel_axis``, usually ``channel_axis_of``); they are made
non-negative when the rank is known.
"""

from __future__ import annotations

from mha2sha.encodings.layout import as_view, channel_axis_of
from mha2sha.encodings.model import EncodingSet, to_quant
from refimpl.quant import QuantEncoding

__all__ = ["numeric_encodings", "to_quant"]  # to_quant lives with TensorEncoding (model.py)


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
