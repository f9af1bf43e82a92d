"""Loading models and the few graph helpers the verifier needs, on onnx / onnx_ir /
onnxruntime only (the verifier judges a pair of models whoever made them, so it shares no
code with the converter).

Shapes: ONNX's inference runs first on a copy without the large weights; when it leaves a
node output without a shape, or invents dimension names (``unk__3``) for the run-time shape
arithmetic of exports with dynamic axes, onnxruntime's symbolic shape inference runs on the
whole copy and its answer is taken where it has one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

log = logging.getLogger("mha2sha.verify")

_KEEP_VALUE_BYTES = 4096  # small constants (shape targets, axes) keep their values for inference


def load(path: str | Path, *, allow_hard_links: bool = False) -> ir.Model:
    """The model with its weights left on disk (read when a block needs them).

    ``allow_hard_links``: data files with several hard links (``--link-weights`` outputs) are
    read, as long as they are inside the model's folder."""
    path = Path(path)
    model = ir.serde.deserialize_model(onnx.load(str(path), load_external_data=False))
    base = path.resolve().parent
    ir.external_data.set_base_dir(model.graph, str(base))
    if allow_hard_links:
        for value in model.graph.initializers.values():
            t = value.const_value
            if isinstance(t, ir.ExternalTensor):
                target = (base / t.location).resolve()
                if base in target.parents:
                    value.const_value = ir.ExternalTensor(str(target), t.offset, t.length, t.dtype, shape=t.shape, name=t.name, base_dir="")
    return model


def load_proto(path: str | Path, *, allow_hard_links: bool = False) -> onnx.ModelProto:
    """The model with every weight in memory (read through onnx_ir, which maps the data file
    where onnx.load refuses one with several hard links, as --link-weights writes)."""
    model = load(path, allow_hard_links=allow_hard_links)
    for v in model.graph.initializers.values():
        if v.const_value is not None:
            v.const_value = in_memory(v.const_value)
    return ir.serde.serialize_model(model)


def weight_bytes(model: ir.Model) -> int:
    total = 0
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is not None:
            count = 1
            for d in t.shape.dims:
                count *= int(d)
            total += -(-count * int(t.dtype.bitwidth) // 8)
    return total


def in_memory(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    """An external tensor copied into memory (a serialised block must not refer to a data
    file relative to a folder it is not read from); others as they are."""
    if not isinstance(tensor, ir.ExternalTensor):
        return tensor
    array = np.array(tensor.numpy(), copy=True)
    tensor.release()
    return ir.Tensor(array, name=tensor.name)


def is_const(value: ir.Value | None) -> bool:
    """An initializer, a Constant output, or an Identity of one."""
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


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or Constant (through Identity), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.op_type == "Identity":
        return const_array(producer.inputs[0])
    if producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def _proto_for_inference(model: ir.Model) -> onnx.ModelProto:
    """The graph with large weights as typed graph inputs (nothing large is serialised)."""
    return _without_large(model)


def _nbytes(t) -> int:
    count = 1
    for d in t.shape.dims:
        count *= int(d)
    return -(-count * int(t.dtype.bitwidth) // 8)


def _without_large(model: ir.Model) -> onnx.ModelProto:
    graph = model.graph
    large = [v for v in graph.initializers.values() if v.const_value is not None and _nbytes(v.const_value) > _KEEP_VALUE_BYTES]
    small_external = [v for v in graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor) and v not in large]
    saved = {id(v): v.const_value for v in large + small_external}
    n_inputs = len(graph.inputs)
    try:
        for v in small_external:
            v.const_value = in_memory(v.const_value)
        for v in large:
            if v.shape is None:
                v.shape = saved[id(v)].shape
            if v.dtype is None:
                v.dtype = saved[id(v)].dtype
            graph.initializers.pop(v.name)
            v.const_value = None
            graph.inputs.append(v)
        return ir.serde.serialize_model(model)
    finally:
        del graph.inputs[n_inputs:]
        for v in large:
            v.const_value = saved[id(v)]
            graph.register_initializer(v)
        for v in small_external:
            v.const_value = saved[id(v)]


def _complete(infos: dict[str, onnx.ValueInfoProto], model: ir.Model) -> bool:
    for node in model.graph:
        for out in node.outputs:
            info = infos.get(out.name)
            if not out.name:
                continue
            if info is None or not info.type.tensor_type.HasField("shape"):
                return False
            for d in info.type.tensor_type.shape.dim:
                if not d.HasField("dim_value") and (not d.dim_param or d.dim_param.startswith("unk__")):
                    return False
    return True


def _symbolic(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    import importlib.util

    import onnxruntime

    # Loaded by path: onnxruntime.tools/__init__ imports torch when it is installed.
    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    try:
        spec = importlib.util.spec_from_file_location("_verify_symbolic_shape_infer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
    except Exception as exc:  # noqa: BLE001 - keep ONNX's answer
        log.debug("symbolic shape inference failed: %s", exc)
        return None


def _infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = proto.graph
    return {i.name: i for i in list(g.value_info) + list(g.output) + list(g.input)}


def infer_shapes(model: ir.Model) -> None:
    """Set the shape and dtype of every node output of the main graph (best effort)."""
    proto = _proto_for_inference(model)
    try:
        infos = _infos(onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True))
    except Exception as exc:  # noqa: BLE001
        log.debug("ONNX shape inference failed: %s", exc)
        infos = {}
    if not _complete(infos, model):
        full = _symbolic(proto)
        if full is not None:
            infos.update({k: v for k, v in _infos(full).items() if v.type.tensor_type.HasField("shape")})
    for node in model.graph:
        for out in node.outputs:
            info = infos.get(out.name)
            if info is None:
                continue
            tt = info.type.tensor_type
            if tt.elem_type and out.dtype is None:
                out.dtype = ir.DataType(tt.elem_type)
            if tt.HasField("shape"):
                out.shape = ir.Shape([d.dim_value if d.HasField("dim_value") else ir.SymbolicDim(d.dim_param or None) for d in tt.shape.dim])


def tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        names.update(n.output)
    return names
