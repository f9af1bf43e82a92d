"""Pure-numpy reference for attention models: closed-form functions (``refimpl.functional``),
AIMET quantize-dequantize arithmetic (``refimpl.quant``) and an ONNX interpreter over them
(``refimpl.run``). Imports nothing from the rest of the project, never onnxruntime or torch.
"""

from refimpl.functional import (
    alibi_bias,
    alibi_slopes,
    causal_mask,
    conv2d,
    erf,
    gelu,
    layer_norm,
    linear,
    log_softmax,
    lora_delta,
    rms_norm,
    rotary_embedding,
    scaled_dot_product_attention,
    softmax,
)
from refimpl.interpreter import FeedError, RefimplError, Session, UnsupportedOpError, run
from refimpl.quant import QuantEncoding, compute_encoding, lpbq_block_scales, quantize_dequantize

__all__ = [
    # interpreter
    "run",
    "Session",
    "RefimplError",
    "UnsupportedOpError",
    "FeedError",
    # quantization
    "QuantEncoding",
    "compute_encoding",
    "quantize_dequantize",
    "lpbq_block_scales",
    # closed-form functions
    "softmax",
    "log_softmax",
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
    "gelu",
    "erf",
]
