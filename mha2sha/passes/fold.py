"""Fold shape arithmetic whose result is known before run time.

Exporters compute head sizes and scales from ``Shape`` at run time (``Shape -> Gather ->
Sqrt -> Div``). Where the dimensions read are static, the value is a constant; folding it
keeps such ops from reading a multi-head tensor and lets the split see a plain constant.
Only small tensors are folded, so weights and large masks are never materialised.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from mha2sha.graph.ir_utils import attr, const_array, dims

_MAX_FOLD_ELEMENTS = 4096
_FOLDABLE = {
    "Gather", "Concat", "Unsqueeze", "Squeeze", "Cast", "Slice", "Add", "Sub", "Mul", "Div",
    "Sqrt", "Reshape", "Equal", "Where", "ConstantOfShape", "Range", "Neg", "Reciprocal", "Pow",
    "Floor", "Ceil", "Max", "Min", "Identity", "CastLike", "Shape", "Size", "Expand", "Less",
    "Greater", "Not", "And", "Or", "Mod", "Abs", "ReduceProd", "ReduceSum", "Transpose",
}


def _static_shape_slice(node: ir.Node) -> np.ndarray | None:
    d = dims(node.inputs[0])
    if d is None:
        return None
    start = attr(node, "start", 0)
    end = attr(node, "end", None)
    picked = d[start:end] if end is not None else d[start:]
    if all(isinstance(x, int) for x in picked):
        return np.array(picked, dtype=np.int64)
    return None


def _static_dims_read(node: ir.Node) -> np.ndarray | None:
    """Gather/Slice of a Shape output that only reads static dimensions."""
    data = node.inputs[0]
    shape_node = data.producer() if data is not None else None
    if shape_node is None or shape_node.op_type != "Shape":
        return None
    d = dims(shape_node.inputs[0])
    if d is None:
        return None
    start = attr(shape_node, "start", 0)
    end = attr(shape_node, "end", None)
    d = d[start:end] if end is not None else d[start:]
    positions = np.arange(len(d))
    if node.op_type == "Gather":
        idx = const_array(node.inputs[1])
        if idx is None or attr(node, "axis", 0) != 0:
            return None
        picked = positions[idx]
    else:
        bounds = [const_array(v) if v is not None else None for v in node.inputs[1:]]
        if any(b is None for b in bounds[:2]) or any(v is not None and b is None for v, b in zip(node.inputs[1:], bounds)):
            return None
        starts, ends = bounds[0], bounds[1]
        steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else np.ones_like(starts)
        picked = positions[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
    values = [d[int(i)] for i in np.asarray(picked).reshape(-1)]
    if not all(isinstance(v, int) for v in values):
        return None
    return np.array(values, dtype=np.int64).reshape(np.asarray(picked).shape)


def _replace_with_constant(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    name = value.name
    const = ir.Value(name=None, const_value=ir.tensor(array))
    const.shape = ir.Shape(list(array.shape))
    const.dtype = const.const_value.dtype
    value.replace_all_uses_with(const, replace_graph_outputs=False)
    if value.is_graph_output():
        return
    value.name = f"{name}.folded"
    const.name = name
    const.const_value.name = name
    graph.register_initializer(const)


def fold_static_shapes(graph: ir.Graph) -> int:
    """Fold Shape of static dims and small all-constant subgraphs; returns nodes folded."""
    folded = 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.is_graph_output() or not out.uses():
            continue
        array = None
        if node.op_type == "Shape":
            array = _static_shape_slice(node)
        elif node.op_type in ("Gather", "Slice") and (array := _static_dims_read(node)) is not None:
            pass
        elif node.op_type in _FOLDABLE and node.inputs:
            inputs = []
            for v in node.inputs:
                if v is None:
                    inputs.append(None)
                    continue
                arr = const_array(v, max_elements=_MAX_FOLD_ELEMENTS)
                # Shape arithmetic only: a float tensor with more than one element is a
                # parameter (a bias table, a mask) whose quantization must stay in the graph.
                if arr is None or (np.issubdtype(arr.dtype, np.floating) and arr.size > 1):
                    break
                inputs.append(arr)
            else:
                array = _evaluate(node, inputs)
        if array is None or array.size > _MAX_FOLD_ELEMENTS:
            continue
        _replace_with_constant(graph, out, array)
        folded += 1
    return folded


def _evaluate(node: ir.Node, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    import onnx

    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    proto = ir.serde.serialize_node(node)
    del proto.input[:]
    proto.input.extend(names)
    del proto.output[:]
    proto.output.append("y")
    opset = node.graph.opset_imports.get("", 17) if node.graph is not None else 17
    graph = onnx.helper.make_graph(
        [proto], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in zip(names, inputs) if v is not None],
        [onnx.helper.make_tensor_value_info("y", 0, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        (result,) = ReferenceEvaluator(model).run(None, {n: v for n, v in zip(names, inputs) if v is not None})
    except Exception:  # noqa: BLE001 - folding is an optimisation: leave the node as it is
        return None
    return np.asarray(result)
