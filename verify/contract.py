"""The I/O contract a runtime integrator needs: every graph input and output of both models
(name, shape, dtype) and the op counts before and after."""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir


def _dim(d) -> int | str:
    if isinstance(d, int):
        return d
    value = getattr(d, "value", None)
    return value if isinstance(value, (int, str)) else "?"


def _describe(v: ir.Value) -> dict:
    return {"name": v.name, "shape": [_dim(d) for d in v.shape] if v.shape is not None else None,
            "dtype": v.dtype.name.lower() if v.dtype is not None else None}


def _graph_inputs(model: ir.Model) -> list[ir.Value]:
    # Initializers some exporters also list as inputs are weights, not inputs to feed.
    return [v for v in model.graph.inputs if v.const_value is None]


def _op_counts(model: ir.Model) -> dict[str, int]:
    counts = Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in model.graph)
    return dict(sorted(counts.items()))


def io_contract(original: ir.Model, converted: ir.Model) -> dict:
    """``{"inputs": {"before": [...], "after": [...]}, "outputs": {...}, "op_counts": {...}}``,
    each tensor as ``{"name", "shape", "dtype"}`` (a symbolic dimension by its name)."""
    return {
        "inputs": {"before": [_describe(v) for v in _graph_inputs(original)], "after": [_describe(v) for v in _graph_inputs(converted)]},
        "outputs": {"before": [_describe(v) for v in original.graph.outputs], "after": [_describe(v) for v in converted.graph.outputs]},
        "op_counts": {"before": _op_counts(original), "after": _op_counts(converted)},
    }
