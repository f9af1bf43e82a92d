"""An ONNX interpreter over refimpl's numpy operators.

``run(model, feeds, dtype=np.float64)`` evaluates every float tensor (weights, feeds,
constants, Cast targets) in float64: the ground truth that verification compares
onnxruntime against. ``encodings`` fake-quantizes named weights at load and named
activations right after they are produced (graph inputs included), by AIMET arithmetic.
Nodes run in a topological order computed once; a tensor is freed after its last use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from refimpl.ops import REGISTRY, Ctx
from refimpl.quant import QuantEncoding, quantize_dequantize


class RefimplError(Exception):
    """Base of refimpl's errors."""


class UnsupportedOpError(RefimplError):
    def __init__(self, node: onnx.NodeProto, opset: int):
        domain = node.domain or "ai.onnx"
        super().__init__(f"unsupported op {domain}::{node.op_type} (opset {opset}) at node {node.name or '?'!r}")
        self.op_type = node.op_type
        self.domain = domain


class FeedError(RefimplError):
    pass


_DOMAIN_ALIASES = {"ai.onnx": ""}


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(os.fspath(model))
    return onnx.load(str(path), load_external_data=True)


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        out[a.name] = value
    return out


def _topological(graph: onnx.GraphProto, available: set[str]) -> list[onnx.NodeProto]:
    producers = {}
    for idx, n in enumerate(graph.node):
        for o in n.output:
            if o:
                producers[o] = idx
    pending = {idx: sum(1 for i in n.input if i and i in producers and i not in available) for idx, n in enumerate(graph.node)}
    consumers: dict[int, list[int]] = {}
    for idx, n in enumerate(graph.node):
        for i in n.input:
            if i and i in producers and i not in available:
                consumers.setdefault(producers[i], []).append(idx)
    ready = [idx for idx, c in pending.items() if c == 0]
    order: list[int] = []
    while ready:
        idx = ready.pop(0)
        order.append(idx)
        for c in consumers.get(idx, []):
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
    if len(order) != len(graph.node):
        raise RefimplError("the graph has a cycle or reads a tensor that nothing produces")
    return [graph.node[i] for i in order]


def _check_feed(info: onnx.ValueInfoProto, value, bindings: dict[str, int]) -> np.ndarray:
    arr = np.asarray(value)
    tt = info.type.tensor_type
    expected = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
    if expected is not None:
        kind_ok = (np.issubdtype(expected, np.floating) and np.issubdtype(arr.dtype, np.floating)) or arr.dtype == expected or (
            np.issubdtype(expected, np.integer) and np.issubdtype(arr.dtype, np.integer)
        )
        if not kind_ok:
            raise FeedError(f"input {info.name!r}: expected {np.dtype(expected).name}, got {arr.dtype.name}")
    if tt.HasField("shape"):
        dims = tt.shape.dim
        if len(dims) != arr.ndim:
            raise FeedError(f"input {info.name!r}: expected rank {len(dims)}, got shape {list(arr.shape)}")
        for k, (d, actual) in enumerate(zip(dims, arr.shape)):
            if d.HasField("dim_value") and d.dim_value != actual:
                raise FeedError(f"input {info.name!r}: dimension {k} must be {d.dim_value}, got {actual}")
            if d.HasField("dim_param") and d.dim_param:
                bound = bindings.setdefault(d.dim_param, actual)
                if bound != actual:
                    raise FeedError(f"input {info.name!r}: dimension {k} ({d.dim_param}) is {actual} here but {bound} elsewhere")
    return arr


class Session:
    """A model prepared once (order, attributes, weights in the compute dtype) and run many
    times, like onnxruntime's InferenceSession. ``run()`` below caches one per model."""

    def __init__(self, model, *, dtype=np.float32, encodings: Mapping[str, QuantEncoding] | None = None):
        proto = _load(model)
        self.graph = proto.graph
        self.float_dtype = np.dtype(dtype).type
        self.encodings = dict(encodings or {})
        opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in proto.opset_import}
        self.weights: dict[str, np.ndarray] = {}
        for t in self.graph.initializer:
            arr = _f_plain(numpy_helper.to_array(t), self.float_dtype)
            enc = self.encodings.get(t.name)
            self.weights[t.name] = quantize_dequantize(arr, enc) if enc is not None else arr
        self.inputs = [i for i in self.graph.input if i.name not in self.weights]
        available = set(self.weights) | {i.name for i in self.inputs}
        self.steps = []
        for node in _topological(self.graph, available):
            domain = _DOMAIN_ALIASES.get(node.domain, node.domain)
            opset = opsets.get(domain, 0)
            if node.op_type == "Constant":
                value = _constant(node, self.float_dtype)
                self.steps.append((None, node, [], list(node.output), value))
                continue
            adapter = REGISTRY.get((domain, node.op_type))
            if adapter is None:
                raise UnsupportedOpError(node, opset)
            ctx = Ctx(opset, self.float_dtype, node.name, len(node.output))
            self.steps.append((adapter, node, list(node.input), list(node.output), (ctx, _attrs(node))))
        self.last_use: dict[str, int] = {}
        for k, (_, _, ins, _, _) in enumerate(self.steps):
            for name in ins:
                if name:
                    self.last_use[name] = k

    def run(self, feeds: Mapping[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = dict(self.weights)
        bindings: dict[str, int] = {}
        for info in self.graph.input:
            if info.name in self.weights:
                if info.name in feeds:
                    env[info.name] = _f_plain(np.asarray(feeds[info.name]), self.float_dtype)
                continue
            if info.name not in feeds:
                raise FeedError(f"missing feed for input {info.name!r}")
            arr = _f_plain(_check_feed(info, feeds[info.name], bindings), self.float_dtype)
            enc = self.encodings.get(info.name)
            env[info.name] = quantize_dequantize(arr, enc) if enc is not None else arr
        want_all = outputs == "all"
        wanted = [o.name for o in self.graph.output] if outputs is None else (None if want_all else list(outputs))
        keep = set(wanted or [])
        result: dict[str, np.ndarray] = {}
        encodings = self.encodings
        float_dtype = self.float_dtype
        for k, (adapter, node, ins, outs, extra) in enumerate(self.steps):
            if adapter is None:
                values = [extra]
            else:
                try:
                    args = [env[name] if name else None for name in ins]
                except KeyError as exc:
                    raise RefimplError(f"node {node.name or node.op_type!r} reads {exc.args[0]!r}, which is not computed") from None
                ctx, attrs = extra
                try:
                    values = adapter(ctx, args, attrs)
                except RefimplError:
                    raise
                except NotImplementedError as exc:
                    raise UnsupportedOpError(node, ctx.opset) from exc
                except Exception as exc:  # noqa: BLE001 - name the node that failed
                    raise RefimplError(f"{node.op_type} node {node.name or '?'!r} failed: {type(exc).__name__}: {exc}") from exc
            for name, value in zip(outs, values):
                if not name:
                    continue
                if not isinstance(value, np.ndarray):
                    value = np.asarray(value)
                if value.dtype != float_dtype and np.issubdtype(value.dtype, np.floating):
                    value = value.astype(float_dtype)
                if encodings:
                    enc = encodings.get(name)
                    if enc is not None and np.issubdtype(value.dtype, np.floating):
                        value = quantize_dequantize(value, enc)
                env[name] = value
                if want_all:
                    result[name] = value
            if not want_all:
                for name in ins:
                    if name and self.last_use.get(name) == k and name not in keep and name not in self.weights:
                        env.pop(name, None)
        if want_all:
            result.update({k: v for k, v in env.items() if k not in self.weights})
            return result
        missing = [n for n in wanted if n not in env]
        if missing:
            raise RefimplError(f"requested tensors not computed: {missing}")
        return {n: env[n] for n in wanted}


_SESSIONS: dict[tuple, tuple[object, Session]] = {}


def run(
    model,
    feeds: Mapping[str, np.ndarray],
    *,
    dtype=np.float32,
    encodings: Mapping[str, QuantEncoding] | None = None,
    outputs=None,
) -> dict[str, np.ndarray]:
    """Evaluate ``model`` (path or ModelProto) on ``feeds``; see the module docstring.

    ``outputs``: None for the graph outputs, a list of tensor names (intermediates
    allowed), or "all" for every tensor. A prepared Session is reused for the same
    ModelProto object and dtype when no encodings are given.
    """
    if encodings or not isinstance(model, onnx.ModelProto):
        return Session(model, dtype=dtype, encodings=encodings).run(feeds, outputs)
    key = (id(model), np.dtype(dtype).str)
    cached = _SESSIONS.get(key)
    if cached is None or cached[0] is not model:
        if len(_SESSIONS) > 8:
            _SESSIONS.clear()
        cached = (model, Session(model, dtype=dtype))
        _SESSIONS[key] = cached
    return cached[1].run(feeds, outputs)


def _f_plain(arr: np.ndarray, float_dtype) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype != float_dtype:
        return arr.astype(float_dtype)
    return arr


def _constant(node: onnx.NodeProto, float_dtype) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return _f_plain(numpy_helper.to_array(a.t), float_dtype)
        if a.name == "value_float":
            return np.array(a.f, dtype=float_dtype)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=float_dtype)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    raise RefimplError(f"Constant node {node.name!r} has no supported value attribute")
