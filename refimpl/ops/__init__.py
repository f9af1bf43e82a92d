"""ONNX operators as small numpy adapters, registered by (domain, op_type) in REGISTRY.

One module per family: elementwise (arithmetic, math, logic, Cast), tensor (shape, layout,
indexing), nn (MatMul/Gemm/Conv, softmax, norms, reductions), attention (opset-23
Attention and RotaryEmbedding), resize (Resize). Importing this package registers them all.
"""

from refimpl.ops import attention, elementwise, nn, resize, tensor  # noqa: F401 - registration
from refimpl.ops.registry import REGISTRY, Adapter, Ctx

__all__ = ["REGISTRY", "Adapter", "Ctx"]
