"""After the rewrite: drop dead nodes and initializers, sort, and infer shapes."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass


def remove_dead(model: ir.Model) -> None:
    model.graph.sort()
    RemoveUnusedNodesPass()(model)


def infer_shapes(model: ir.Model) -> None:
    """Best-effort shape inference: a model it cannot fully type is still usable."""
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)


def cleanup(model: ir.Model) -> None:
    remove_dead(model)
    infer_shapes(model)
