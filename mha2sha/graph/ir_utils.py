"""Small helpers over onnx_ir: shapes, constants and attributes, read without loading weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

Size = int | str | None
"""A dimension: a static int, a symbolic name, or None when unknown."""


def dims(value: ir.Value) -> list[Size] | None:
    """The value's dimensions (int, symbolic name or None), or None when the rank is unknown."""
    shape = value.shape
    if shape is None:
        const = value.const_value
        return list(const.shape) if const is not None else None
    out: list[Size] = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            name = getattr(d, "value", None)
            out.append(name if isinstance(name, (str, int)) else None)
    return out


def rank(value: ir.Value) -> int | None:
    d = dims(value)
    return None if d is None else len(d)


def is_const(value: ir.Value | None) -> bool:
    """An initializer, a Constant output, or an Identity of one (TorchScript shares tied
    weights and biases through Identity)."""
    if value is None:
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return False
    if producer.op_type == "Identity":
        return is_const(producer.inputs[0])
    return producer.op_type == "Constant"


def const_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The value's tensor if it is an initializer or a Constant output (weights stay lazy)."""
    if value is None:
        return None
    producer = value.producer()
    # Through chains of Identity in a loop, not by recursion (a chain of thousands is valid ONNX).
    while value.const_value is None and producer is not None and producer.op_type == "Identity" and producer.domain in ("", "ai.onnx"):
        value = producer.inputs[0]
        if value is None:
            return None
        producer = value.producer()
    if value.const_value is not None:
        return value.const_value
    if producer is None or producer.op_type != "Constant":
        return None
    for name, attr in producer.attributes.items():
        if name == "value":
            return attr.as_tensor()
        if name in ("value_float", "value_int"):
            return ir.tensor(np.array(attr.value, dtype=np.float32 if name == "value_float" else np.int64))
        if name in ("value_floats", "value_ints"):
            dtype = np.float32 if name == "value_floats" else np.int64
            return ir.tensor(np.array(list(attr.value), dtype=dtype))
    return None


def const_array(value: ir.Value | None, max_elements: int | None = None) -> np.ndarray | None:
    tensor = const_tensor(value)
    if tensor is None:
        return None
    if max_elements is not None and int(np.prod(tensor.shape.numpy() if hasattr(tensor.shape, "numpy") else tensor.shape)) > max_elements:
        return None
    return tensor.numpy()


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    value = a.value
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Sequence",):
        return list(value)
    return value


def opset(graph_or_model, domain: str = "") -> int:
    imports = graph_or_model.opset_imports
    if domain in imports:
        return imports[domain]
    if domain == "ai.onnx" and "" in imports:
        return imports[""]
    return 0


def node_opset(node: ir.Node) -> int:
    if node.version is not None:
        return node.version
    graph = node.graph
    if graph is None:
        return 0
    return opset(graph, node.domain)


def norm_axis(axis: int, rank_: int) -> int:
    return axis + rank_ if axis < 0 else axis


def describe(node: ir.Node) -> str:
    """How a node is named in messages: op type and name (names are for people only)."""
    return f"{node.op_type}({node.name or '?'})"


def in_memory(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    """``tensor`` with its values in memory: an external (memory-mapped) tensor is copied and
    unmapped at once (mapped pages count as resident memory, and a serialised copy must not
    refer to a data file relative to a folder it will not be read from). Others as they are."""
    if not isinstance(tensor, ir.ExternalTensor):
        return tensor
    array = np.array(tensor.numpy(), copy=True)
    try:
        tensor.release()
    except BufferError:
        pass  # a view of the mapping is still alive elsewhere: it is unmapped when that goes
    return ir.Tensor(array, name=tensor.name)
