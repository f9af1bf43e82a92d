"""AIMET encodings files (0.6.1, 1.0.0, 2.0.0; 2.1.0 too) in one internal form.

    enc = read_encodings("model.encodings")            # any version -> EncodingSet
    enc.copy("attn.q", "attn.h0.q")                     # an activation's per-head piece
    enc.slice("q_proj.weight", "attn.h0.q.weight", 0, 64)   # a head's output channels
    enc.move_channel_axis("attn.h0.q.weight", 0, rank=4)    # MatMul [in,out] -> Conv [out,in,1,1]
    write_encodings(enc, "sha.encodings")               # the version it was read in
    numeric = numeric_encodings(enc, model)             # {tensor: refimpl QuantEncoding}

See docs/architecture.md (mha2sha.encodings) for the contract and model.py for the form.
"""

from mha2sha.encodings.errors import EncodingsError
from mha2sha.encodings.formats import VERSIONS
from mha2sha.encodings.io import read_encodings, to_object, write_encodings
from mha2sha.encodings.layout import ModelView, block_axis_of, channel_axis_of
from mha2sha.encodings.model import KINDS, EncodingSet, TensorEncoding
from mha2sha.encodings.numeric import numeric_encodings, to_quant
from mha2sha.encodings.propagate import propagate
from mha2sha.encodings.validate import validate_against

__all__ = [
    "KINDS",
    "VERSIONS",
    "EncodingSet",
    "EncodingsError",
    "ModelView",
    "TensorEncoding",
    "block_axis_of",
    "channel_axis_of",
    "numeric_encodings",
    "propagate",
    "read_encodings",
    "to_object",
    "to_quant",
    "validate_against",
    "write_encodings",
]
