"""Pure-numpy reference: closed-form attention functions, AIMET quantization arithmetic, and an
ONNX interpreter. Imports nothing from the rest of the project and never onnxruntime or torch."""

from refimpl.functional import (
    alibi_bias,
    alibi_slopes,
    causal_mask,
    conv2d,
    layer_norm,
    linear,
    lora_delta,
    rms_norm,
    rotary_embedding,
    scaled_dot_product_attention,
    softmax,
)
from refimpl.interpreter import FeedError, RefimplError, Session, UnsupportedOpError, run
from refimpl.quant import QuantEncoding, compute_encoding, quantize_dequantize

__all__ = [
    "run",
    "Session",
    "RefimplError",
    "UnsupportedOpError",
    "FeedError",
    "QuantEncoding",
    "compute_encoding",
    "quantize_dequantize",
    "softmax",
    "scaled_dot_product_attention",
    "causal_mask",
    "rotary_embedding",
    "alibi_slopes",
    "alibi_bias",
    "lora_delta",
    "linear",
    "conv2d",
    "rms_norm",
    "layer_norm",
]
