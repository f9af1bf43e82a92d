"""Where a parameter's channels lie, derived from the op that consumes it.

AIMET 0.6.1 and 1.0.0 files store no axis: per-channel scales follow the *output* channels
of the consuming op, per-block scales run along its *input* channels. The rules (facts
checked against aimet-onnx):

=============================  =============  ==========
consumer (input)               channel axis   block axis
=============================  =============  ==========
Conv weight                    0              1
ConvTranspose weight           1              0
Gemm B, transB=1 ([out, in])   0              1
Gemm B, transB=0 ([in, out])   1              0
MatMul B ([..., in, out])      -1             -2
MatMul A (constant left side)  -2             -1
1-D (biases, norm weights)     0              -
anything else                  0              -
=============================  =============  ==========

Layout-only ops between the parameter and its consumer (Transpose, Cast, Identity,
DequantizeLinear) are looked through; a Transpose maps the axis back through its ``perm``.
Models are ``onnx.ModelProto`` or ``onnx_ir.Model``; weights are never read, only shapes.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from mha2sha.encodings.model import BLOCKED, EncodingSet, default_block_axis

_LOOK_THROUGH = ("Transpose", "Cast", "Identity", "DequantizeLinear", "QuantizeLinear")


class ModelView:
    """The few facts about a model that encodings need: names, shapes, consumers."""

    def __init__(self, model):
        if isinstance(model, onnx.ModelProto):
            model = ir.from_proto(model)
        if not isinstance(model, ir.Model):
            raise TypeError(f"expected onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")
        self.model = model
        graph = model.graph
        self.values: dict[str, ir.Value] = {v.name: v for v in graph.inputs if v.name}
        self.values.update({name: v for name, v in graph.initializers.items()})
        self._constants: set[str] = set()
        for node in graph:
            for out in node.outputs:
                if out.name:
                    self.values[out.name] = out
                    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                        self._constants.add(out.name)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def is_param(self, name: str) -> bool:
        """An initializer or a Constant's output (what AIMET lists under param_encodings)."""
        value = self.values.get(name)
        return value is not None and (value.is_initializer() or name in self._constants)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape when every dimension is known, else None."""
        value = self.values.get(name)
        if value is None:
            return None
        shape = value.shape
        if shape is None and value.const_value is not None:
            shape = value.const_value.shape
        if shape is None:
            return None
        dims = tuple(shape)
        return dims if all(isinstance(d, int) for d in dims) else None

    def rank(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None:
            return None
        shape = value.shape if value.shape is not None else (value.const_value.shape if value.const_value is not None else None)
        return None if shape is None else len(shape)


def as_view(model) -> ModelView:
    """A ModelView of ``model`` (built once: pass the view to repeated calls)."""
    return model if isinstance(model, ModelView) else ModelView(model)


def channel_axis_of(param_name: str, model) -> int:
    """The output-channel axis of parameter ``param_name`` (see the module table). The axis
    may be negative (MatMul weights: -1, whatever their rank). KeyError if the model has no
    such tensor. ``model``: onnx.ModelProto, onnx_ir.Model or a ModelView."""
    view = as_view(model)
    if param_name not in view:
        raise KeyError(f"the model has no tensor {param_name!r}")
    return _axis_of_value(view.values[param_name], view.rank(param_name))


def block_axis_of(param_name: str, model) -> int | None:
    """The axis per-block scales run along (the consumer's input channels), or None."""
    view = as_view(model)
    rank = view.rank(param_name)
    if rank is None or rank < 2:
        return None
    return default_block_axis(channel_axis_of(param_name, view), rank)


def _axis_of_value(value: ir.Value, rank: int | None, depth: int = 0) -> int:
    if rank is not None and rank <= 1:
        return 0
    for use in value.uses():
        node, index = use.node, use.idx
        op = node.op_type
        if op == "Conv" and index == 1:
            return 0
        if op == "ConvTranspose" and index == 1:
            return 1
        if op == "Gemm" and index == 1:
            return 0 if _int_attr(node, "transB") else 1
        if op == "Gemm" and index == 0:
            return 1 if _int_attr(node, "transA") else 0
        if op == "MatMul":
            return -1 if index == 1 else -2
        if op in _LOOK_THROUGH and index == 0 and depth < 8 and node.outputs:
            inner = _axis_of_value(node.outputs[0], rank, depth + 1)
            if op == "Transpose":
                perm = node.attributes.get("perm")
                if perm is not None and rank is not None:
                    return list(perm.value)[inner % rank]
                if perm is None and rank is not None:  # default perm reverses the axes
                    return rank - 1 - inner % rank
            return inner
    return 0


def _int_attr(node: ir.Node, name: str) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else 0


def bind(enc_set: EncodingSet, model) -> None:
    """Fill each parameter entry's missing layout from ``model`` (see EncodingSet.bind)."""
    view = as_view(model)
    for name, enc in list(enc_set.tensors.items()):
        if enc.kind not in ("per_channel", *BLOCKED) or not view.is_param(name):
            continue
        shape = view.shape(name)
        if shape is None:
            continue
        rank = len(shape)
        bound = enc.copy()
        if bound.rank is None:
            bound.rank = rank
        if bound.channel_axis is None:
            bound.channel_axis = _axis_of_value(view.values[name], rank) % rank
        if enc.kind in BLOCKED and bound.block_axis is None:
            bound.block_axis = default_block_axis(bound.channel_axis, rank)
        if enc.kind == "per_block" and enc.channels is None:
            try:
                bound = bound.with_channels(shape[bound.channel_axis % rank])
            except ValueError:
                continue  # validate_against reports the mismatch
        enc_set.tensors[name] = bound
