"""After the rewrite: drop dead nodes and initializers, sort, and infer shapes."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from mha2sha.passes.shapes import infer_shapes


def remove_dead(model: ir.Model) -> None:
    model.graph.sort()
    RemoveUnusedNodesPass()(model)


def cleanup(model: ir.Model) -> None:
    remove_dead(model)
    infer_shapes(model, only_missing=True)


__all__ = ["cleanup", "remove_dead", "infer_shapes"]
