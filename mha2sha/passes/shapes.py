"""Shape inference that keeps symbolic dimensions linked.

Exporters with dynamic axes compute Reshape targets at run time (``Concat(Shape(x)[0],
Shape(x)[1], -1, 64)``). ONNX's own inference names such dimensions ``unk__42``, which loses
the fact that they are the model's ``batch`` and ``seq``; onnxruntime's symbolic shape
inference follows the shape arithmetic and keeps them, but is Python (0.3 s on a 7B graph,
where ONNX's takes 0.05 s). So ONNX's runs first, and its answer is taken when it is
complete: every output of every node has a shape, and no dimension is one ONNX invented.
Where it is not, onnxruntime's runs on just those nodes (with ONNX's shapes around them),
or on the whole graph when that cannot be done; ONNX's answer stays where both fail. Weights
are never serialised for this: initializers larger than a few bytes are passed as typed
graph inputs.
"""

from __future__ import annotations

import contextlib
import logging
import os

import onnx
import onnx_ir as ir

from mha2sha.graph.ir_utils import in_memory

log = logging.getLogger("mha2sha")

_KEEP_VALUE_BYTES = 4096  # small constants (shape targets, axes) keep their values


def _nbytes(tensor) -> int:
    """``tensor.nbytes`` without onnx_ir's generic path (a fifth of this pass on a 7B model)."""
    count = 1
    for d in tensor.shape.dims:
        count *= int(d)
    return -(-count * int(tensor.dtype.bitwidth) // 8)


def _proto_without_weights(model: ir.Model) -> onnx.ModelProto:
    graph = model.graph
    moved: list[tuple[ir.Value, object]] = []
    inlined: list[tuple[ir.Value, object]] = []
    n_inputs = len(graph.inputs)
    for init in list(graph.initializers.values()):
        tensor = init.const_value
        nbytes = _nbytes(tensor) if tensor is not None else 0
        if isinstance(tensor, ir.ExternalTensor) and nbytes <= _KEEP_VALUE_BYTES:
            # A small constant in the data file (a shape target, a scalar): its value is needed,
            # and the serialised model is read without the model's folder.
            inlined.append((init, tensor))
            init.const_value = in_memory(tensor)
            continue
        if tensor is None or nbytes > _KEEP_VALUE_BYTES:
            if init.shape is None and tensor is not None:
                init.shape = tensor.shape
            if init.dtype is None and tensor is not None:
                init.dtype = tensor.dtype
            moved.append((init, tensor))
    try:
        for init, _tensor in moved:
            graph.initializers.pop(init.name)
            init.const_value = None
            graph.inputs.append(init)
        return ir.serde.serialize_model(model)
    finally:
        original_inputs = list(graph.inputs)[:n_inputs]
        graph.inputs.clear()
        graph.inputs.extend(original_inputs)
        for init, tensor in moved:
            init.const_value = tensor
            graph.initializers.add(init) if tensor is None else graph.register_initializer(init)
        for init, tensor in inlined:
            init.const_value = tensor


def _symbolic_shape_inference():
    """onnxruntime's SymbolicShapeInference, loaded without onnxruntime.tools/__init__.py
    (which imports torch when it is installed: seconds of start-up for nothing)."""
    global _SSI
    if _SSI is None:
        import importlib.util
        from pathlib import Path

        import onnxruntime

        path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location("_mha2sha_symbolic_shape_infer", path)
        if spec is None or spec.loader is None:  # pragma: no cover
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SSI = module.SymbolicShapeInference
    return _SSI


_SSI = None


def _symbolic(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        SymbolicShapeInference = _symbolic_shape_inference()
    except Exception:  # noqa: BLE001 - fall back to ONNX's inference
        return None
    if SymbolicShapeInference is None:
        return None
    try:
        with _scratch_cwd():
            return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
    except Exception as exc:  # noqa: BLE001 - fall back to ONNX's inference
        log.debug("symbolic shape inference failed (%s); using ONNX shape inference", exc)
        return None


@contextlib.contextmanager
def _scratch_cwd():
    """onnxruntime's symbolic inference saves ``sym_shape_infer_temp.onnx`` (with external
    data) into the current directory when it cannot infer every shape: run it in a private
    temporary directory so that nothing lands in the user's folder. Only this thread runs
    while it is the current directory; every path the converter keeps is absolute."""
    import tempfile

    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="mha2sha-ssi-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def _onnx(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        log.debug("ONNX shape inference failed: %s", exc)
        return None


def _infos(inferred: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}


def _unresolved(infos: dict[str, onnx.ValueInfoProto], model: ir.Model) -> set[str]:
    """Node outputs of the main graph without a full shape, or with a dimension ONNX
    invented (it names what it cannot follow ``unk__N``, or leaves it blank)."""
    missing: set[str] = set()
    for node in model.graph:
        for out in node.outputs:
            if out.name and not _resolved(infos.get(out.name)):
                missing.add(out.name)
    return missing


def _resolved(info: onnx.ValueInfoProto | None) -> bool:
    if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") or (d.HasField("dim_param") and not d.dim_param.startswith("unk__"))
               for d in info.type.tensor_type.shape.dim)


_SHAPE_DATA = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _symbolic_around(proto: onnx.ModelProto, infos: dict[str, onnx.ValueInfoProto], unresolved: set[str]) -> dict | None:
    """onnxruntime's symbolic inference on just the nodes ONNX could not resolve (a GQA
    repeat's ``Reshape(x, [0, H, -1, D])``, say), fed with ONNX's shapes for everything they
    read. The integer tensors they read (shape arithmetic) come with the nodes that compute
    them, up to Shape, so that the symbolic values can be followed. None when that is not
    possible (subgraphs, a value without a shape): then the whole graph is inferred."""
    nodes = list(proto.graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    chosen = {i for i, n in enumerate(nodes) if any(o in unresolved for o in n.output)}
    stack = list(chosen)
    while stack:
        n = nodes[stack.pop()]
        if n.op_type in ("Shape", "Size"):
            continue  # reads only its input's shape, which is known
        for name in n.input:
            j = producer.get(name)
            info = infos.get(name)
            if j is not None and j not in chosen and info is not None and info.type.tensor_type.elem_type in _SHAPE_DATA:
                chosen.add(j)
                stack.append(j)
    sub_nodes = [nodes[i] for i in sorted(chosen)]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in sub_nodes for a in n.attribute):
        return None
    produced = {o for n in sub_nodes for o in n.output}
    initializers = {t.name: t for t in proto.graph.initializer}
    graph_inputs = {vi.name: vi for vi in proto.graph.input}
    inputs, inits, seen = [], [], set()
    for n in sub_nodes:
        for name in n.input:
            if not name or name in produced or name in seen:
                continue
            seen.add(name)
            if name in initializers:
                inits.append(initializers[name])
            elif name in graph_inputs or name in infos:
                inputs.append(graph_inputs.get(name) or infos[name])
            else:
                return None
    outputs = [onnx.ValueInfoProto(name=name) for name in sorted(unresolved & produced)]
    sub = onnx.helper.make_model(onnx.helper.make_graph(sub_nodes, "unresolved", inputs, outputs, inits),
                                 opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    sub.functions.extend(proto.functions)
    inferred = _symbolic(sub)
    if inferred is None:
        return None
    found = _infos(inferred)
    if not unresolved <= set(found):
        return None
    return {name: found[name] for name in unresolved}


def _to_ir_shape(type_proto: onnx.TypeProto) -> tuple[ir.Shape | None, ir.DataType | None]:
    tt = type_proto.tensor_type
    dtype = ir.DataType(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return None, dtype
    dims: list = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(ir.SymbolicDim(d.dim_param))
        else:
            dims.append(ir.SymbolicDim(None))
    return ir.Shape(dims), dtype


def infer_shapes(model: ir.Model, *, only_missing: bool = False) -> None:
    """Set the shape and dtype of every value of the main graph (best effort).

    ``only_missing``: fill in values that have no shape yet, with ONNX's (fast) inference,
    keeping the shapes already set (after a rewrite that set shapes on what it created).
    """
    if only_missing and all(out.shape is not None and out.dtype is not None for node in model.graph for out in node.outputs):
        return
    proto = _proto_without_weights(model)
    inferred = _onnx(proto)
    infos = _infos(inferred) if inferred is not None else None
    if not only_missing:
        unresolved = _unresolved(infos, model) if infos is not None else None
        patch = _symbolic_around(proto, infos, unresolved) if unresolved else None
        if patch is not None:
            infos.update(patch)
        elif infos is None or unresolved:
            full = _symbolic(proto)
            infos = _infos(full) if full is not None else infos
    if infos is None:
        return
    for node in model.graph:
        for out in node.outputs:
            info = infos.get(out.name)
            if info is None:
                continue
            shape, dtype = _to_ir_shape(info.type)
            if shape is not None and not (only_missing and out.shape is not None):
                out.shape = shape
            if dtype is not None and out.dtype is None:
                out.dtype = dtype
