"""Shape inference that keeps symbolic dimensions linked.

Exporters with dynamic axes compute Reshape targets at run time (``Concat(Shape(x)[0],
Shape(x)[1], -1, 64)``). ONNX's own inference names such dimensions ``unk__42``, which loses
the fact that they are the model's ``batch`` and ``seq``; onnxruntime's symbolic shape
inference follows the shape arithmetic and keeps them, but is Python (0.3 s on a 7B graph,
where ONNX's takes 0.05 s). So ONNX's runs first, and its answer is taken when it is
complete: every output of every node has a shape, and no dimension is one ONNX invented.
Otherwise onnxruntime's runs (and ONNX's answer is the fallback when that fails). Weights
are never serialised for this: initializers larger than a few bytes are passed as typed
graph inputs.
"""

from __future__ import annotations

import logging

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
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
    except Exception as exc:  # noqa: BLE001 - fall back to ONNX's inference
        log.debug("symbolic shape inference failed (%s); using ONNX shape inference", exc)
        return None


def _onnx(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        log.debug("ONNX shape inference failed: %s", exc)
        return None


def _complete(inferred: onnx.ModelProto, model: ir.Model) -> bool:
    """Whether every node output of the main graph got a full shape with no invented
    dimension (ONNX names what it cannot follow ``unk__N``, or leaves it blank)."""
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for node in model.graph:
        for out in node.outputs:
            if not out.name:
                continue
            info = infos.get(out.name)
            if info is None or not info.type.HasField("tensor_type"):
                return False
            tt = info.type.tensor_type
            if not tt.HasField("shape"):
                return False
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    continue
                if not d.HasField("dim_param") or d.dim_param.startswith("unk__"):
                    return False
    return True


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
    if not only_missing and (inferred is None or not _complete(inferred, model)):
        inferred = _symbolic(proto) or inferred
    if inferred is None:
        return
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
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
