"""Write a model as a QDQ ONNX model from its AIMET encodings (``--emit-qdq``).

The form onnxruntime-qnn (and QNN's ONNX converter) reads as a quantized model: every
encoded weight is stored as integers behind a DequantizeLinear, every encoded activation
(node output or graph input) is followed by QuantizeLinear -> DequantizeLinear, and
biases of Conv / Gemm / MatMul+Add become int32 with the scale QNN expects,
bias scale = input scale x weight scale (per output channel when the weight is), zero
point 0.

Arithmetic (AIMET_ENCODINGS.md, refimpl.quant): AIMET's real = (q + offset) * scale with q
in [0, 2^bw - 1] is ONNX's real = (q - zero_point) * scale with zero_point = -offset and
unsigned storage; a signed-symmetric encoding (offset -2^(bw-1)) is stored signed with
zero point 0, the same grid. Weights are quantized here with AIMET's rounding (floor(x /
scale - offset + 0.5), in the weight's float type), so their DequantizeLinear reproduces
the simulated weights exactly; activations are rounded by QuantizeLinear (half to even: differs from AIMET only
on exact ties). 16-bit activations need QuantizeLinear from opset 21; older models get the
com.microsoft Q/DQ ops (same semantics, any opset), which onnxruntime and QNN read.

Kept float (listed in the summary): float encodings (float16 is the HTP float path
anyway), per-block / LPBQ weights, encodings on tensors this module cannot place (an
initializer that is also a graph input).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from refimpl.quant import QuantEncoding, quantize_dequantize

_MS = "com.microsoft"
_DATA_MOVEMENT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather", "Slice", "Split", "Expand"}


def _storage(enc: QuantEncoding) -> tuple[np.dtype, int, bool]:
    """(numpy storage dtype, ONNX dtype, signed) for an int encoding."""
    offset = np.asarray(enc.offset).reshape(-1)
    signed = bool(enc.symmetric) and np.all(offset == -(2 ** (enc.bitwidth - 1)))
    bits = 8 if enc.bitwidth <= 8 else 16 if enc.bitwidth <= 16 else 32
    if bits == 32:
        return np.dtype(np.int32), TensorProto.INT32, True
    np_dtype = np.dtype(f"{'int' if signed else 'uint'}{bits}")
    return np_dtype, helper.np_dtype_to_tensor_dtype(np_dtype), signed


def _zero_point(enc: QuantEncoding, np_dtype, signed: bool) -> np.ndarray:
    offset = np.asarray(enc.offset, dtype=np.int64)
    zp = np.zeros_like(offset) if signed else -offset
    if np.ndim(enc.scale) and not np.ndim(zp):
        zp = np.full(np.shape(enc.scale), int(zp))
    return zp.astype(np_dtype)


def _quantize_weight(x: np.ndarray, enc: QuantEncoding, np_dtype, signed: bool) -> np.ndarray:
    """The integers of AIMET's simulated weight (refimpl.quant, in the weight's own float
    type as AIMET computes it), in the storage type: dequantizing gives it back exactly."""
    simulated = quantize_dequantize(x, enc).astype(np.float64)
    scale = np.asarray(enc.scale, dtype=np.float64)
    offset = np.asarray(enc.offset, dtype=np.float64)
    if enc.axis is not None and scale.ndim:
        shape = [1] * x.ndim
        shape[enc.axis] = -1
        scale, offset = scale.reshape(shape), (offset.reshape(shape) if offset.ndim else offset)
    q = np.rint(simulated / scale - offset)
    if signed:
        q = q + offset
    return q.astype(np_dtype)


class _Builder:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.names = {v for n in self.graph.node for v in list(n.input) + list(n.output)}
        self.names |= {t.name for t in self.graph.initializer} | {i.name for i in self.graph.input}
        self.new_nodes: list[onnx.NodeProto] = []
        self.domain = ""

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qparams(self, name: str, enc: QuantEncoding, np_dtype, signed: bool) -> tuple[str, str]:
        scale = self.const(f"{name}_scale", np.asarray(enc.scale, dtype=np.float32))
        zp = self.const(f"{name}_zero_point", _zero_point(enc, np_dtype, signed))
        return scale, zp

    def dq(self, q: str, scale: str, zp: str, out: str, axis: int | None) -> onnx.NodeProto:
        attrs = {"axis": axis} if axis is not None else {}
        return helper.make_node("DequantizeLinear", [q, scale, zp], [out], name=self.unique(f"{out}_dq"),
                                domain=self.domain, **attrs)


def to_qdq(model: onnx.ModelProto, encodings: Mapping[str, QuantEncoding]) -> tuple[onnx.ModelProto, dict]:
    """A QDQ copy of ``model`` (weights loaded) for ``encodings`` ({tensor: QuantEncoding},
    mha2sha.encodings.numeric_encodings); returns it and a summary of what was placed."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    b = _Builder(model)
    graph = model.graph
    encodings = _through_data_movement(graph, encodings)
    sixteen = any(e.dtype == "int" and 8 < e.bitwidth <= 16 for e in encodings.values())
    if sixteen and b.opset < 21:
        b.domain = _MS
        if not any(o.domain == _MS for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(_MS, 1))
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    producers = {o: n for n in graph.node for o in n.output}
    consumed = {v for n in graph.node for v in n.input} | {o.name for o in graph.output}
    summary = {"weights": 0, "activations": 0, "biases_int32": 0, "kept_float": {}}

    def keep(name: str, why: str) -> None:
        summary["kept_float"][name] = why

    # Biases first: their scale comes from the input's and the weight's encodings.
    bias_plan = _bias_plan(graph, inits, producers, encodings)
    quantized_weights: dict[str, tuple[str, str, str]] = {}
    for name, enc in encodings.items():
        if name in bias_plan:
            continue
        if enc.dtype != "int":
            keep(name, "float encoding")
            continue
        if enc.block_size is not None:
            keep(name, "per-block encoding")
            continue
        np_dtype, _, signed = _storage(enc)
        if name in inits:
            if name in graph_inputs:
                keep(name, "initializer that is also a graph input")
                continue
            if name not in consumed:
                continue  # an initializer no node reads (a DequantizeLinear alone is refused by QNN)
            tensor = inits[name]
            values = numpy_helper.to_array(tensor)
            q_name = b.unique(f"{name}_quantized")
            graph.initializer.remove(tensor)
            graph.initializer.append(numpy_helper.from_array(_quantize_weight(values, enc, np_dtype, signed), q_name))
            scale, zp = b.qparams(name, enc, np_dtype, signed)
            b.new_nodes.append(b.dq(q_name, scale, zp, name, enc.axis if np.ndim(enc.scale) else None))
            quantized_weights[name] = (q_name, scale, zp)
            summary["weights"] += 1
        elif name in producers or name in graph_inputs:
            if np.ndim(enc.scale):
                keep(name, "per-channel activation encoding")
                continue
            scale, zp = b.qparams(name, enc, np_dtype, signed)
            if name in graph_inputs:
                source, target = name, b.unique(f"{name}_dequantized")
                for n in graph.node:
                    for i, v in enumerate(n.input):
                        if v == name:
                            n.input[i] = target
            else:
                source = b.unique(f"{name}_float")
                node = producers[name]
                node.output[list(node.output).index(name)] = source
                target = name
            q = b.unique(f"{name}_q")
            b.new_nodes.append(helper.make_node("QuantizeLinear", [source, scale, zp], [q], name=b.unique(f"{name}_quantize"),
                                                domain=b.domain))
            b.new_nodes.append(b.dq(q, scale, zp, target, None))
            summary["activations"] += 1
        else:
            keep(name, "not a tensor of the model")
    for bias, (values, scale) in bias_plan.items():
        tensor = inits[bias]
        q_name = b.unique(f"{bias}_quantized")
        q = np.clip(np.round(values.astype(np.float64) / scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        graph.initializer.remove(tensor)
        graph.initializer.append(numpy_helper.from_array(q, q_name))
        s = b.const(f"{bias}_scale", scale.astype(np.float32))
        zp = b.const(f"{bias}_zero_point", np.zeros(scale.shape, dtype=np.int32))
        b.new_nodes.append(b.dq(q_name, s, zp, bias, 0 if scale.ndim else None))
        summary["biases_int32"] += 1
    _insert_in_order(graph, b.new_nodes)
    return model, summary


def _same(a: QuantEncoding, b: QuantEncoding) -> bool:
    return (a.dtype, a.bitwidth, a.symmetric, a.axis, a.block_size) == (b.dtype, b.bitwidth, b.symmetric, b.axis, b.block_size) \
        and np.array_equal(a.scale, b.scale) and np.array_equal(a.offset, b.offset)


def _through_data_movement(graph, encodings: Mapping[str, QuantEncoding]) -> dict[str, QuantEncoding]:
    """The encodings plus one on every data-movement output (Concat of the heads, Reshape,
    Transpose, ...) whose activation inputs all carry one same int encoding. Exact: values
    on a grid stay on it. QNN needs it: a float Concat between quantized ops makes the
    consumer float, and a float Conv refuses its per-channel weight DequantizeLinear."""
    out = dict(encodings)
    inits = {t.name for t in graph.initializer}
    for n in graph.node:  # topological order
        if n.op_type not in _DATA_MOVEMENT | {"Concat"} or len(n.output) != 1 or n.output[0] in out:
            continue
        data = [n.input[0]] if n.op_type != "Concat" else list(n.input)
        found = [out.get(v) for v in data if v and v not in inits]
        if found and all(e is not None and e.dtype == "int" and not np.ndim(e.scale) for e in found) \
                and all(_same(found[0], e) for e in found[1:]):
            out[n.output[0]] = found[0]
    return out


def _bias_plan(graph, inits, producers, encodings) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{bias initializer: (values, int32 scale)} for Conv / Gemm biases and MatMul + Add
    biases whose input and weight both have int encodings (scale = input x weight)."""
    plan = {}

    def int_enc(name):
        e = encodings.get(name)
        return e if e is not None and e.dtype == "int" and e.block_size is None else None

    def input_enc(x: str):
        # AIMET puts no quantizer on data movement (Reshape, Transpose, ...): its output
        # carries its input's encoding.
        for _ in range(16):
            e = int_enc(x)
            if e is not None:
                return e
            node = producers.get(x)
            if node is None or node.op_type not in _DATA_MOVEMENT or not node.input:
                return None
            x = node.input[0]
        return None

    def add(bias: str, x: str, w: str) -> None:
        ex, ew = input_enc(x), int_enc(w)
        if bias not in inits or ex is None or ew is None or np.ndim(ex.scale):
            return
        values = numpy_helper.to_array(inits[bias])
        scale = np.float64(ex.scale) * np.asarray(ew.scale, dtype=np.float64)
        if scale.ndim and scale.shape != values.shape:
            return
        plan[bias] = (values, scale)

    for n in graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
            add(n.input[2], n.input[0], n.input[1])
        elif n.op_type == "Add" and len(n.input) == 2:
            for bias, other in ((n.input[1], n.input[0]), (n.input[0], n.input[1])):
                mm = producers.get(other)
                if bias in inits and mm is not None and mm.op_type == "MatMul" and mm.input[1] in inits:
                    add(bias, mm.input[0], mm.input[1])
    return plan


def _insert_in_order(graph, new_nodes: list[onnx.NodeProto]) -> None:
    """Put the new nodes in the graph in topological order (each right after what it reads)."""
    nodes = list(graph.node) + new_nodes
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    order, done, state = [], set(), {}

    for start in range(len(nodes)):
        stack = [start]
        while stack:
            i = stack[-1]
            if i in done:
                stack.pop()
                continue
            pending = [produced_by[v] for v in nodes[i].input if v not in available and v in produced_by
                       and produced_by[v] not in done]
            if pending and state.get(i) != "expanded":
                state[i] = "expanded"
                stack.extend(pending)
                continue
            stack.pop()
            done.add(i)
            order.append(nodes[i])
    del graph.node[:]
    graph.node.extend(order)
