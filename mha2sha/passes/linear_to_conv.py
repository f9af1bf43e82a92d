"""Replace MatMul/Gemm with a constant weight by a 1x1 Conv (HTP runs Conv far better).

    x [B, S, I] -> Transpose(0,2,1) -> Unsqueeze(3) -> [B, I, S, 1] -> Conv W[O, I, 1, 1]
      -> [B, O, S, 1] -> Squeeze(3) -> Transpose(0,2,1) -> y [B, S, O]

Batch and sequence may be symbolic: no shape arithmetic is needed. A 2-D input [N, I]
uses Transpose and Unsqueeze(0, 3). The Conv keeps the original node's name, the weight
keeps its name (now laid out [O, I, 1, 1]) and the last op writes the original output
tensor, so encodings keyed by those names still apply. A MatMul followed by a bias Add of
shape [O] becomes one Conv with that bias; the Add's output name is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mha2sha.graph.build import add_constant, fresh_name
from mha2sha.graph.derived import LinearAsConv, derive_from, derived_tensor
from mha2sha.graph.ir_utils import attr, const_array, const_tensor, dims, is_const
from mha2sha.split.rope import is_rotation


@dataclass
class ConvRecord:
    """What became of each converted projection, for encodings."""

    weights: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # name -> (new name, old axis, new axis)
    biases: dict[str, str] = field(default_factory=dict)
    activations: dict[str, list[str]] = field(default_factory=dict)  # original output -> layout tensors
    converted: int = 0


class _Builder:
    def __init__(self, graph: ir.Graph, names: set[str]):
        self.graph = graph
        self.names = names
        self.nchw: dict[int, ir.Value] = {}  # shared input layout conversions, by input value

    def unique(self, name: str) -> str:
        return fresh_name(name, self.names)

    def value(self, name: str, dtype) -> ir.Value:
        v = ir.Value(name=self.unique(name))
        v.dtype = dtype
        return v

    def ints(self, name: str, values: list[int]) -> ir.Value:
        return add_constant(self.graph, self.unique(name), np.array(values, dtype=np.int64))

    def node(self, op: str, inputs, name: str, outputs, attributes=None, before: ir.Node | None = None) -> ir.Node:
        n = ir.node(op, inputs, attributes or {}, outputs=outputs, name=self.unique(name))
        if before is not None:
            self.graph.insert_before(before, n)
        else:
            self.graph.append(n)
        return n


def _to_nchw(b: _Builder, x: ir.Value, rank: int, anchor: ir.Node) -> ir.Value:
    found = b.nchw.get(id(x))
    if found is not None:
        return found
    base = x.name or "x"
    t = b.value(f"{base}.nchw_t", x.dtype)
    if rank == 3:
        b.node("Transpose", [x], f"{base}.to_nchw_transpose", [t], {"perm": [0, 2, 1]}, before=anchor)
        axes = [3]
    else:
        b.node("Transpose", [x], f"{base}.to_nchw_transpose", [t], {"perm": [1, 0]}, before=anchor)
        axes = [0, 3]
    u = b.value(f"{base}.nchw", x.dtype)
    b.node("Unsqueeze", [t, b.ints(f"{base}.nchw_axes", axes)], f"{base}.to_nchw_unsqueeze", [u], before=anchor)
    b.nchw[id(x)] = u
    return u


def _weight_for_conv(node: ir.Node) -> tuple[ir.TensorProtocol, ir.Value, int, int] | None:
    """The projection's weight as a Conv weight [O, I, 1, 1] (described, not computed:
    mha2sha.graph.derived), its value, the channel axis it had, and O."""
    if node.op_type == "MatMul":
        w = node.inputs[1]
        if not is_const(w) or len(dims(w) or []) != 2:
            return None
        transpose, alpha, old_axis = True, 1.0, -1
    elif node.op_type == "Gemm":
        if attr(node, "transA", 0) or not is_const(node.inputs[1]):
            return None
        w = node.inputs[1]
        transpose = not attr(node, "transB", 0)
        alpha, old_axis = float(attr(node, "alpha", 1.0)), 0 if not transpose else 1
    else:
        return None
    tensor = const_tensor(w)
    rows, cols = (int(d) for d in tensor.shape)
    if node.op_type == "MatMul" and is_rotation(tensor):
        return None  # RoPE's rotate-half (mha2sha.split.rope) is a permutation, not a projection
    out_channels, in_channels = (cols, rows) if transpose else (rows, cols)
    derivation = derive_from(tensor, lambda t: LinearAsConv(t, transpose=transpose, alpha=alpha))
    return derived_tensor(derivation, [out_channels, in_channels, 1, 1], w.name or "weight"), w, old_axis, out_channels


class _NotConvertible(Exception):
    pass


def _bias(node: ir.Node, out_channels: int) -> tuple[np.ndarray | None, ir.Value | None, ir.Node | None]:
    """Gemm's C, or the [O] bias of an Add that is the MatMul's only consumer."""
    if node.op_type == "Gemm":
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return None, None, None
        c = const_array(node.inputs[2])
        if c is None or c.size not in (1, out_channels) or (c.ndim == 2 and c.shape[0] != 1):
            raise _NotConvertible("Gemm bias is not a per-channel constant")
        beta = float(attr(node, "beta", 1.0))
        c = (np.broadcast_to(c.reshape(-1), (out_channels,)) * beta).astype(c.dtype)
        return c, node.inputs[2], None
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None, None, None
    add = uses[0].node
    if add.op_type != "Add":
        return None, None, None
    other = add.inputs[1 - uses[0].idx]
    c = const_array(other)
    if c is None or c.shape[-1:] != (out_channels,) or c.size != out_channels:
        return None, None, None
    return c.reshape(-1), other, add


def _take_name(graph: ir.Graph, b: _Builder, old: ir.Value | None, fallback: str) -> str:
    """The name for a new initializer: the old one's when nothing else reads the old value."""
    if old is None or not old.name:
        return b.unique(fallback)
    if old.uses() or old.is_graph_input() or old.is_graph_output():
        return b.unique(f"{old.name}.conv")
    name = old.name
    graph.initializers.pop(name, None)
    old.name = b.unique(f"{name}.replaced")
    return name


def linear_to_conv(model: ir.Model, names: set[str], *, encoded: set[str] | frozenset = frozenset()) -> ConvRecord:
    """``encoded``: tensors with an AIMET encoding. A MatMul whose output is encoded keeps its
    bias Add separate (fusing it would remove that quantization point)."""
    graph = model.graph
    b = _Builder(graph, names)
    record = ConvRecord()
    for node in list(graph):
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        x = node.inputs[0]
        rank = len(dims(x) or [])
        if rank not in (2, 3) or is_const(x):
            continue
        found = _weight_for_conv(node)
        if found is None:
            continue
        conv_weight, w_value, old_axis, out_channels = found
        try:
            if node.op_type == "MatMul" and node.outputs[0].name in encoded:
                bias, bias_value, add = None, None, None
            else:
                bias, bias_value, add = _bias(node, out_channels)
        except _NotConvertible:
            continue
        final_out = add.outputs[0] if add is not None else node.outputs[0]
        anchor = add if add is not None else node
        base = final_out.name or "y"
        xin = _to_nchw(b, x, rank, anchor)
        conv_out = b.value(f"{base}.conv_nchw", final_out.dtype)
        squeezed = b.value(f"{base}.conv_squeezed", final_out.dtype)
        back = b.value(f"{base}.conv_out", final_out.dtype)
        # Detach the projection first so its weight and bias names can be handed over.
        conv_name = node.name
        for n in [node] + ([add] if add is not None else []):
            for i in range(len(n.inputs)):
                n.replace_input_with(i, None)
        orig_w_name = w_value.name
        orig_bias_name = bias_value.name if bias_value is not None else None
        w_name = _take_name(graph, b, w_value, f"{base}.conv_weight")
        conv_w = add_constant(graph, w_name, conv_weight)
        inputs = [xin, conv_w]
        if bias is not None:
            bias_name = _take_name(graph, b, bias_value, f"{w_name}.bias")
            inputs.append(add_constant(graph, bias_name, bias))
            if orig_bias_name:
                record.biases[orig_bias_name] = bias_name
        conv = ir.node("Conv", inputs, {"kernel_shape": [1, 1]}, outputs=[conv_out], name=b.unique(conv_name or f"{base}.Conv"))
        graph.insert_before(anchor, conv)
        axes = [3] if rank == 3 else [0, 3]
        b.node("Squeeze", [conv_out, b.ints(f"{base}.squeeze_axes", axes)], f"{base}.from_nchw_squeeze", [squeezed], before=anchor)
        perm = [0, 2, 1] if rank == 3 else [1, 0]
        b.node("Transpose", [squeezed], f"{base}.from_nchw_transpose", [back], {"perm": perm}, before=anchor)
        # The original output tensor keeps its name.
        final_name = final_out.name
        back.shape = final_out.shape
        final_out.replace_all_uses_with(back, replace_graph_outputs=True)
        final_out.name = b.unique(f"{final_name}.linear")
        back.name = final_name
        graph.remove([n for n in [node, add] if n is not None], safe=False)
        record.weights[orig_w_name] = (w_name, old_axis, 0)
        record.activations[final_name] = [conv_out.name, squeezed.name]
        record.converted += 1
    return record


def run(model: ir.Model, ledger, *, encoded: set[str] | frozenset = frozenset()):
    """The pass as the driver runs it (mha2sha.ledger): converts, then appends what became of
    each weight, bias and projection output. Returns ``PassResult(changed, ConvRecord)``."""
    from mha2sha.graph.build import tensor_names
    from mha2sha.ledger import PassResult

    record = linear_to_conv(model, tensor_names(model.graph, node_names=True), encoded=encoded)
    ledger.extend(ledger_entries(record))
    return PassResult(record.converted > 0, record)


def ledger_entries(record: ConvRecord) -> list:
    """A ConvRecord as ledger entries (mha2sha.ledger)."""
    from mha2sha.ledger import TensorPieces, WeightRelayout, WeightRenamed

    return ([WeightRelayout(w, new, old, axis) for w, (new, old, axis) in record.weights.items()]
            + [WeightRenamed(b, new) for b, new in record.biases.items()]
            + [TensorPieces(out, tuple(new), "linear_to_conv") for out, new in record.activations.items()])
