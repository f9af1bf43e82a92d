"""What every stage that edits a graph needs: the names in use, fresh names, constants, the
axes of Squeeze/Unsqueeze/Reduce* (attribute or input), and the weight of a linear op.

One copy of each, for analysis/, split/, passes/ and the LLM stages alike. Depends on
nothing of mha2sha above graph/.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mha2sha.graph.ir_utils import attr, const_array, const_tensor, is_const, norm_axis


def tensor_names(graph: ir.Graph, *, node_names: bool = False) -> set[str]:
    """Every tensor name of ``graph``: inputs, initializers, node outputs (and the node names
    too when ``node_names``, for an allocator that names nodes and values from one set)."""
    names = {v.name for v in graph.inputs if v.name}
    names.update(n for n in graph.initializers if n)
    for node in graph:
        if node_names and node.name:
            names.add(node.name)
        names.update(o.name for o in node.outputs if o.name)
    return names


def fresh_name(base: str, taken: set[str], *, sep: str = "_") -> str:
    """``base``, or ``base{sep}2``, ``base{sep}3``, ... : the first not in ``taken`` (then added)."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{sep}{k}"
    taken.add(name)
    return name


def add_constant(graph: ir.Graph, name: str, value: np.ndarray | ir.TensorProtocol) -> ir.Value:
    """Register an initializer ``name`` holding ``value`` (an array, or a tensor kept as it
    is: lazy and described tensors stay unread). The name must be free (see fresh_name)."""
    if isinstance(value, np.ndarray):
        # np.ascontiguousarray would make a 0-d array 1-d: copy only what is not C-ordered.
        tensor = ir.tensor(value if value.flags.c_contiguous else np.array(value, order="C"), name=name)
    else:
        tensor = value
        tensor.name = name
    v = ir.Value(name=name, const_value=tensor)
    v.shape = ir.Shape(list(tensor.shape))
    v.dtype = tensor.dtype
    graph.register_initializer(v)
    return v


def axes_of(node: ir.Node, rank: int | None = None, *, input_index: int = 1) -> list[int] | None:
    """The ``axes`` of Squeeze/Unsqueeze/Reduce*: the attribute (older opsets) or the constant
    input ``input_index``; made non-negative when ``rank`` is given. None when there are none
    or they are computed at run time (``axes_are_computed`` tells the two apart)."""
    axes = attr(node, "axes")
    if axes is None and len(node.inputs) > input_index and node.inputs[input_index] is not None:
        found = const_array(node.inputs[input_index])
        axes = None if found is None else found.reshape(-1).tolist()
    if axes is None:
        return None
    return [int(a) if rank is None else norm_axis(int(a), rank) for a in axes]


def axes_are_computed(node: ir.Node, *, input_index: int = 1) -> bool:
    """True when the axes are an input whose value is only known at run time."""
    return (attr(node, "axes") is None and len(node.inputs) > input_index
            and node.inputs[input_index] is not None and const_array(node.inputs[input_index]) is None)


LINEAR_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class LinearWeight:
    """The constant weight of a linear op seen as x @ W: which input it is and its channels.

    ``out_axis`` is the weight's output-channel axis: MatMul [I, O] 1, Gemm 0 with transB
    (else 1), Conv [O, I, 1, 1] 0."""

    node: ir.Node
    data: ir.Value
    weight: ir.Value
    in_channels: int
    out_channels: int
    out_axis: int


def linear_weight(node: ir.Node) -> LinearWeight | None:
    """The weight view of a MatMul with a 2-D constant right operand, a Gemm (not transA)
    with a constant B, or a 1x1 Conv (group 1); None for anything else."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or not is_const(w) or is_const(x):
        return None
    shape = [int(d) for d in const_tensor(w).shape]
    if node.op_type == "MatMul":
        if len(shape) != 2:
            return None
        return LinearWeight(node, x, w, shape[0], shape[1], 1)
    if node.op_type == "Gemm":
        if len(shape) != 2 or attr(node, "transA", 0):
            return None
        if attr(node, "transB", 0):
            return LinearWeight(node, x, w, shape[1], shape[0], 0)
        return LinearWeight(node, x, w, shape[0], shape[1], 1)
    if len(shape) != 4 or shape[2:] != [1, 1] or attr(node, "group", 1) != 1:
        return None
    return LinearWeight(node, x, w, shape[1], shape[0], 0)


__all__ = ["tensor_names", "fresh_name", "add_constant", "axes_of", "axes_are_computed", "LINEAR_OPS", "LinearWeight", "linear_weight"]
