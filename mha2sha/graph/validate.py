"""Refuse an invalid model before converting it (exit 2 naming the problem).

A model that is not valid ONNX used to be converted anyway and then fail verification (exit 1
and a VERIFICATION_FAILED marker for the user's model, not ours), or crash (exit 4). Two
layers, both on the protobuf as parsed, without reading external weights:

1. our own checks, for what onnx.checker misses or reports badly: names that are not UTF-8,
   cycles, inputs nobody produces, inline data that does not hold what its dims declare
   (1e12 elements with 16 KB of data), negative dims (also of graph inputs and outputs), duplicate external_data keys (onnx keeps
   the last ``location``, onnxruntime refuses the file), an opset newer than the installed onnx knows;
2. ``onnx.checker.check_model(full_check=True)``: every node against its operator schema at
   the model's opset (an opset-7 model using a newer op), types, and strict shape inference.

The graph is walked iteratively (no recursion on depth: a chain of thousands of nodes is fine).
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import onnx_ir as ir

from mha2sha.errors import InputError

_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
# onnx.checker's own messages can be long; one line of this many characters is enough.
_MAX_MESSAGE = 400


def validate_model(proto: onnx.ModelProto, path: Path) -> None:
    """Raise InputError(path, <problem>) when ``proto`` is not a valid model."""
    _check_opsets(proto, path)
    _check_names(proto, path)
    _check_tensors(proto, path)
    _check_input_dims(proto, path)
    sorted_nodes = _check_graph_order(proto.graph, path, outer=set())
    _run_checker(proto, path, sorted_nodes)


def _fail(path: Path, message: str) -> None:
    raise InputError(path, f"invalid model: {message}")


def _check_opsets(proto: onnx.ModelProto, path: Path) -> None:
    known = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version()}
    for domain in ("ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"):
        versions = [s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain]
        if versions:
            known[domain] = max(versions)
    for opset in proto.opset_import:
        newest = known.get(opset.domain)
        if newest is not None and opset.version > newest:
            _fail(path, f"opset {opset.version} of domain {opset.domain or 'ai.onnx'!r} is newer than the installed onnx "
                        f"{onnx.__version__} knows (up to {newest}); upgrade onnx or export with an older opset")
        if opset.version < 1:
            _fail(path, f"opset version {opset.version} of domain {opset.domain or 'ai.onnx'!r} is not valid")


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If/Loop/Scan bodies), without recursion."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)


def _check_names(proto: onnx.ModelProto, path: Path) -> None:
    # proto2 strings that are not UTF-8 come back from protobuf as bytes.
    def bad(value) -> bool:
        return isinstance(value, bytes)

    for g in _graphs(proto.graph):
        for v in list(g.input) + list(g.output) + list(g.value_info):
            if bad(v.name):
                _fail(path, f"a value name is not UTF-8 text ({v.name[:40]!r})")
        for t in g.initializer:
            if bad(t.name):
                _fail(path, f"an initializer name is not UTF-8 text ({t.name[:40]!r})")
        for node in g.node:
            for field in (node.name, node.op_type, node.domain, *node.input, *node.output, *(a.name for a in node.attribute)):
                if bad(field):
                    _fail(path, f"a name in node {node.name if not bad(node.name) else '?'!r} is not UTF-8 text ({field[:40]!r})")


def _tensors(proto: onnx.ModelProto):
    for g in _graphs(proto.graph):
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors


def _check_tensors(proto: onnx.ModelProto, path: Path) -> None:
    for t in _tensors(proto):
        if any(d < 0 for d in t.dims):
            _fail(path, f"tensor {t.name!r} has a negative dimension {list(t.dims)}")
        keys = [e.key for e in t.external_data]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            _fail(path, f"tensor {t.name!r} has external data key(s) {duplicated} more than once")
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
            continue
        if t.data_type == onnx.TensorProto.UNDEFINED:
            _fail(path, f"tensor {t.name!r} has no data type")
        count = math.prod(t.dims)
        if t.HasField("raw_data"):
            try:
                itemsize = ir.DataType(t.data_type).itemsize
            except ValueError:
                _fail(path, f"tensor {t.name!r} has an unknown data type {t.data_type}")
            need = math.ceil(count * itemsize)
            if len(t.raw_data) != need:
                _fail(path, f"tensor {t.name!r} declares dims {list(t.dims)} ({need} bytes) but holds {len(t.raw_data)} bytes of data")
            continue
        held = sum(len(getattr(t, f)) for f in _TYPED_FIELDS)
        expected = count * (2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1)
        if held != expected and not _packed_4bit(t, held, count):
            _fail(path, f"tensor {t.name!r} declares dims {list(t.dims)} ({count} elements) but holds {held} values")


def _packed_4bit(t: onnx.TensorProto, held: int, count: int) -> bool:
    four_bit = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
    return t.data_type in four_bit and held == math.ceil(count / 2)


def _check_input_dims(proto: onnx.ModelProto, path: Path) -> None:
    initialized = {t.name for t in proto.graph.initializer}
    for v in list(proto.graph.input) + list(proto.graph.output):
        if v.name in initialized or not v.type.HasField("tensor_type"):
            continue
        for d in v.type.tensor_type.shape.dim:
            # 0 is valid (an empty KV cache at the first step); negative never is.
            if d.HasField("dim_value") and d.dim_value < 0:
                kind = "input" if v in proto.graph.input else "output"
                _fail(path, f"graph {kind} {v.name!r} has a dimension of {d.dim_value} (dims must be 0 or more, or symbolic)")


def _check_graph_order(graph: onnx.GraphProto, path: Path, outer: set[str]) -> list[int] | None:
    """Every node input is produced (by a graph input, an initializer, an earlier node or, in
    a subgraph, the enclosing graphs) and the graph has no cycle. Returns a topological order
    of the main graph's nodes when the file's order is not one (the checker wants one; the
    converter sorts itself), else None."""
    known = set(outer) | {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                if out in producer or out in known - {""}:
                    _fail(path, f"tensor {out!r} is produced twice (by node {node.name!r})")
                producer[out] = i
    scope = known | set(producer)
    waiting = [0] * len(graph.node)
    readers: dict[int, list[int]] = {}
    in_order = True
    for i, node in enumerate(graph.node):
        needs = set(_node_reads(node, scope))
        for name in needs:
            if name in known:
                continue
            if name not in producer:
                _fail(path, f"node {node.name or node.op_type!r} reads {name!r}, which no node, input or initializer produces")
            src = producer[name]
            if src >= i:
                in_order = False
            waiting[i] += 1
            readers.setdefault(src, []).append(i)
    order, ready = [], [i for i, w in enumerate(waiting) if w == 0]
    while ready:
        i = ready.pop()
        order.append(i)
        for j in readers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(graph.node):
        stuck = next(graph.node[i] for i, w in enumerate(waiting) if w > 0)
        _fail(path, f"the graph has a cycle (through node {stuck.name or stuck.op_type!r})")
    for node in graph.node:  # subgraphs see this graph's names
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
                _check_graph_order(sub, path, scope)
    return None if in_order else order


def _node_reads(node: onnx.NodeProto, scope: set[str]):
    """The names a node reads: its inputs, and what its subgraphs take from this graph."""
    yield from (name for name in node.input if name)
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for sub in subs:
            for g in _graphs(sub):
                local = {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
                for n in g.node:
                    yield from (name for name in n.input if name and name not in local and name in scope)


def _run_checker(proto: onnx.ModelProto, path: Path, order: list[int] | None) -> None:
    checked = _checkable_copy(proto, order)
    try:
        onnx.checker.check_model(checked, full_check=True)
    except onnx.checker.ValidationError as exc:
        _fail(path, _one_line(str(exc)))
    except onnx.shape_inference.InferenceError as exc:
        _fail(path, "shape inference: " + _one_line(str(exc)))
    except ValueError as exc:  # e.g. protobuf too large to serialise
        _fail(path, _one_line(str(exc)))


def _checkable_copy(proto: onnx.ModelProto, order: list[int] | None) -> onnx.ModelProto:
    """What the checker should see (a copy: weights on disk are never read):

    - externally stored initializers as typed graph inputs: their locations, sizes and files
      were checked by graph.io.check_external_data, and onnx.checker would look for the files
      relative to the current directory;
    - the nodes in a topological order when the file's is not one (valid, the converter sorts);
    - IR 4 when the file is IR < 4: the converter writes IR 4 (graph.io), and an IR-3 file
      whose initializers are inputs is valid either way."""
    checked = onnx.ModelProto()
    checked.CopyFrom(proto)
    graph = checked.graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        listed = {v.name for v in graph.input}
        kept = [t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external if t.name not in listed)
        del graph.initializer[:]
        graph.initializer.extend(kept)
    if order is not None:
        nodes = [onnx.NodeProto() for _ in order]
        for copy, i in zip(nodes, order):
            copy.CopyFrom(graph.node[i])
        del graph.node[:]
        graph.node.extend(nodes)
    if checked.ir_version < 4:
        checked.ir_version = 4
    return checked


def _one_line(text: str) -> str:
    line = " ".join(part.strip() for part in text.strip().splitlines() if part.strip() and not part.startswith("==>"))
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."
