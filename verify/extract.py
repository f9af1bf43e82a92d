"""Cut a standalone model out of a larger one: the nodes between named inputs and outputs.

Used to verify one attention block at a time, whatever the size of the whole model: only
the block's weights are read.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from verify.block_check import WeightRef
from verify.graphs import in_memory, is_const


class ExtractError(ValueError):
    pass


def _value_map(graph: ir.Graph) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for v in graph.inputs:
        values[v.name] = v
    for v in graph.initializers.values():
        values[v.name] = v
    for node in graph:
        for out in node.outputs:
            if out.name:
                values[out.name] = out
    return values


def minimal_inputs(original: ir.Model, converted: ir.Model, pairs: list[list[str]], mha_fixed: list[str] = (),
                   sha_fixed: list[str] = ()) -> list[list[str]]:
    """The block's input pairs ``[mha, sha]`` without those that both models compute from
    the others.

    A split block may read a tensor from further up than the original did (a per-kv-head
    RoPE reads cos [B, S, D] where the MHA block read Unsqueeze(cos) [B, 1, S, D]); both
    block models must then start from the upstream tensor, with the node in between inside
    the block, so that both are fed the same values. A pair is dropped only when one node
    computes it from the other inputs (and constants) in both models: otherwise (linear->conv
    rewrote its producer, say) it stays an input of both. ``*_fixed``: inputs that always
    stay (per-head cache pieces)."""
    mha_values, sha_values = _value_map(original.graph), _value_map(converted.graph)
    kept = [list(p) for p in dict.fromkeys(tuple(p) for p in pairs)]

    def derived(values: dict[str, ir.Value], name: str, stop: set[str]) -> bool:
        v = values.get(name)
        node = v.producer() if v is not None else None
        if node is None:
            return False
        sources = [i for i in node.inputs if i is not None]
        return (bool(sources) and all(i.name in stop or is_const(i) for i in sources)
                and any(i.name in stop for i in sources))

    changed = True
    while changed:
        changed = False
        for pair in list(kept):
            mha_stop = {m for m, _ in kept} | set(mha_fixed)
            sha_stop = {s for _, s in kept} | set(sha_fixed)
            if derived(mha_values, pair[0], mha_stop) and derived(sha_values, pair[1], sha_stop):
                kept.remove(pair)
                changed = True
    return kept


def extract(model: ir.Model, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """A model computing ``outputs`` from ``inputs`` (and the constants they need).

    Graph inputs reached on the way that are not listed become inputs too (a block may read
    e.g. a position input directly); the caller reads the extracted model's inputs.
    """
    return _cut(model, inputs, outputs, lazy=False)[0]


def extract_lazy(model: ir.Model, inputs: list[str], outputs: list[str]) -> tuple[onnx.ModelProto, list[WeightRef]]:
    """Like ``extract``, without reading the weights: every constant stored in a file (an
    ``ir.ExternalTensor`` of a dtype of whole bytes) becomes a graph input of the block
    model, after its other inputs, and is listed with where its bytes are, for
    ``verify.block_check.read_weights``. (The file may not be written yet: the converter
    cuts its blocks out while it writes.)"""
    return _cut(model, inputs, outputs, lazy=True)


def _lazy_ref(value: ir.Value) -> WeightRef | None:
    tensor = value.const_value
    if not isinstance(tensor, ir.ExternalTensor):
        return None
    dtype = np.dtype(tensor.dtype.numpy())
    if dtype.itemsize != tensor.dtype.itemsize:  # 4-bit types: packed, read in memory
        return None
    return WeightRef(value.name, str(tensor.path), int(tensor.offset or 0), int(tensor.length or tensor.nbytes),
                     dtype, tuple(int(d) for d in tensor.shape), int(tensor.dtype))


def _cut(model: ir.Model, inputs: list[str], outputs: list[str], *, lazy: bool) -> tuple[onnx.ModelProto, list[WeightRef]]:
    graph = model.graph
    values = _value_map(graph)
    stop = set(inputs)
    missing = [n for n in outputs if n not in values]
    if missing:
        raise ExtractError(f"outputs not in the model: {missing}")
    needed_nodes: dict[int, ir.Node] = {}
    needed_inits: dict[str, ir.Value] = {}
    extra_inputs: dict[str, ir.Value] = {}
    stack = [values[n] for n in outputs]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v.name in stop:
            continue
        if v.is_initializer() or (v.const_value is not None and v.producer() is None):
            needed_inits[v.name] = v
            continue
        node = v.producer()
        if node is None:
            extra_inputs[v.name] = v
            continue
        needed_nodes[id(node)] = node
        stack.extend(i for i in node.inputs if i is not None)
    order = [n for n in graph if id(n) in needed_nodes]
    proto_nodes = [ir.serde.serialize_node(n) for n in order]
    _rename_fed_outputs(proto_nodes, stop - set(outputs))
    refs = [ref for ref in (_lazy_ref(v) for v in needed_inits.values()) if ref is not None] if lazy else []
    lazy_names = {ref.name for ref in refs}
    kept = [v for v in needed_inits.values() if v.name not in lazy_names]
    proto_inits = [ir.serde.serialize_tensor(in_memory(v.const_value)) for v in kept]
    for t, v in zip(proto_inits, kept):
        t.name = v.name
    used = {name for n in proto_nodes for name in n.input}
    input_infos = []
    for name in list(inputs) + list(extra_inputs):
        if name not in used and name not in outputs:
            continue
        v = values.get(name)
        if v is None:
            raise ExtractError(f"input {name!r} is not in the model")
        input_infos.append(_value_info(v))
    input_infos += [onnx.helper.make_tensor_value_info(ref.name, ref.elem_type, ref.shape) for ref in refs]
    output_infos = [_value_info(values[n]) for n in outputs]
    g = onnx.helper.make_graph(proto_nodes, "block", input_infos, output_infos, proto_inits)
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    out = onnx.helper.make_model(g, opset_imports=opsets)
    out.ir_version = model.ir_version
    return out, refs


def _rename_fed_outputs(nodes: list[onnx.NodeProto], fed: set[str]) -> None:
    """A node in the block may also write a tensor the block is fed (a Split or Unsqueeze
    whose other output is the block's input: GPT-BigCode's fused QKV): that output gets a
    name of its own, so the block defines every name once and its readers read the feed."""
    taken = {name for n in nodes for name in list(n.input) + list(n.output)} | fed
    for node in nodes:
        for k, name in enumerate(node.output):
            if name in fed:
                fresh, i = f"{name}__not_read_in_block", 0
                while fresh in taken:
                    i += 1
                    fresh = f"{name}__not_read_in_block{i}"
                taken.add(fresh)
                node.output[k] = fresh


def _value_info(v: ir.Value) -> onnx.ValueInfoProto:
    dtype = v.dtype if v.dtype is not None else ir.DataType.FLOAT
    shape = None
    if v.shape is not None:
        shape = [d if isinstance(d, int) else (d.value if isinstance(getattr(d, "value", None), str) else None) for d in v.shape]
    return onnx.helper.make_tensor_value_info(v.name, int(dtype), shape)
