"""An ONNX interpreter over refimpl's numpy operators.

``run(model, feeds, dtype=np.float64)`` evaluates every float tensor in float64 (weights,
feeds, constants, Cast and CastLike targets): the ground truth that verification compares
onnxruntime against. float16 (and bfloat16) models are evaluated the same way, in the
compute dtype (float32 by default): their weights are exact in it, and casts to float16
inside the graph do not round. Outputs come back in the compute dtype, integer and
boolean tensors in their own types.

``encodings`` (tensor name -> QuantEncoding) fake-quantizes the named weights once at load
and the named activations right after they are produced (graph inputs included), with
AIMET's arithmetic (refimpl.quant).

A Session prepares a model once: attributes parsed, weights converted, nodes in a
topological order (the graph's node order does not matter), the last use of every tensor
known so that intermediates are freed as soon as they are dead, unless requested.
numpy floating-point warnings are silenced during a run: overflow to inf and NaN from
0/0 are ONNX semantics, not errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from refimpl.errors import FeedError, RefimplError, UnsupportedOpError
from refimpl.ops import REGISTRY, Adapter, Ctx
from refimpl.quant import QuantEncoding, quantize_dequantize

__all__ = ["run", "Session", "RefimplError", "UnsupportedOpError", "FeedError"]


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path = Path(os.fspath(model))
        if not path.is_file():
            raise RefimplError(f"{path}: no such model file")
        try:
            # External data is read relative to the model's folder.
            proto = onnx.load(str(path), load_external_data=True)
        except Exception as exc:  # noqa: BLE001 - protobuf and IO errors alike
            raise RefimplError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from exc
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    return proto


def _attributes(node: onnx.NodeProto) -> dict:
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        out[attr.name] = value
    return out


def _in_compute_dtype(arr: np.ndarray, float_dtype) -> np.ndarray:
    if arr.dtype != float_dtype and (np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"):
        return arr.astype(float_dtype)
    return arr


def _constant_value(node: onnx.NodeProto, float_dtype) -> np.ndarray:
    """The value of a Constant node, in every attribute form."""
    for attr in node.attribute:
        if attr.name == "value":
            return _in_compute_dtype(numpy_helper.to_array(attr.t), float_dtype)
        if attr.name == "sparse_value":
            return _in_compute_dtype(_dense(attr.sparse_tensor), float_dtype)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=float_dtype)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=float_dtype)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
        if attr.name == "value_string":
            return np.array(attr.s.decode(), dtype=object)
        if attr.name == "value_strings":
            return np.array([s.decode() for s in attr.strings], dtype=object)
    raise RefimplError(f"Constant node {node.name!r} has no value attribute")


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    out = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    indices = numpy_helper.to_array(sparse.indices)
    if indices.ndim == 1:  # linear indices
        out.reshape(-1)[indices] = values
    else:  # [nnz, rank] coordinates
        out[tuple(indices.T)] = values
    return out


def _topological_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[int]:
    """Indices of ``nodes`` so that every node follows the producers of its inputs (Kahn's
    algorithm; ties keep the graph's order)."""
    producer = {out: k for k, node in enumerate(nodes) for out in node.output if out}
    waiting_on = [0] * len(nodes)
    consumers: list[list[int]] = [[] for _ in nodes]
    for k, node in enumerate(nodes):
        for name in set(node.input):
            if name and name in producer and name not in available:
                waiting_on[k] += 1
                consumers[producer[name]].append(k)
    ready = [k for k in range(len(nodes)) if waiting_on[k] == 0]
    ready.reverse()  # a stack popped from the end: lowest index first
    order = []
    while ready:
        k = ready.pop()
        order.append(k)
        for c in reversed(consumers[k]):
            waiting_on[c] -= 1
            if waiting_on[c] == 0:
                ready.append(c)
    if len(order) != len(nodes):
        stuck = next(nodes[k] for k in range(len(nodes)) if waiting_on[k])
        raise RefimplError(f"the graph has a cycle through node {stuck.name or stuck.op_type!r}")
    return order


@dataclass(frozen=True)
class _Step:
    adapter: Adapter
    node: onnx.NodeProto
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ctx: Ctx
    attrs: dict


@dataclass(frozen=True)
class _InputSpec:
    name: str
    dtype: np.dtype | None  # the declared type, None when unknown
    dims: tuple | None  # int (static), str (symbolic) or None (unknown) per axis; None: any rank

    @classmethod
    def of(cls, info: onnx.ValueInfoProto) -> _InputSpec:
        tensor_type = info.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)) if tensor_type.elem_type else None
        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
            )
        return cls(info.name, dtype, dims)

    def check(self, value, bindings: dict[str, int]) -> np.ndarray:
        """The feed as an array of the declared type; FeedError on a mismatch."""
        arr = np.asarray(value)
        if self.dtype is not None:
            arr = self._checked_type(arr)
        if self.dims is not None:
            if arr.ndim != len(self.dims):
                raise FeedError(f"input {self.name!r}: expected rank {len(self.dims)} {self._shape_text()}, got shape {list(arr.shape)}")
            for axis, (want, got) in enumerate(zip(self.dims, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise FeedError(f"input {self.name!r}: dimension {axis} must be {want} {self._shape_text()}, got shape {list(arr.shape)}")
                if isinstance(want, str) and bindings.setdefault(want, got) != got:
                    raise FeedError(f"input {self.name!r}: dimension {axis} ({want}) is {got}, but {bindings[want]} in an earlier input")
        return arr

    def _checked_type(self, arr: np.ndarray) -> np.ndarray:
        want, got = self.dtype, arr.dtype
        if got == want:
            return arr
        float_like = np.issubdtype(want, np.floating) or want.name == "bfloat16"
        # Any float feeds a float input (it is computed in the compute dtype anyway); any
        # integer feeds an integer input (converted to the declared type).
        if float_like and np.issubdtype(got, np.floating):
            return arr
        if np.issubdtype(want, np.integer) and np.issubdtype(got, np.integer):
            return arr.astype(want)
        raise FeedError(f"input {self.name!r}: expected {want.name}, got {got.name}")

    def _shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


class Session:
    """A model prepared once and run many times (like onnxruntime's InferenceSession).

    ``model``: a path (external data read from the model's folder) or a ModelProto.
    ``dtype``: the compute dtype of every float tensor, np.float32 or np.float64.
    ``encodings``: tensor name -> QuantEncoding to fake-quantize (see the module doc).
    Unsupported ops are reported here, before any run.
    """

    def __init__(self, model, *, dtype=np.float32, encodings: Mapping[str, QuantEncoding] | None = None):
        self.float_dtype = np.dtype(dtype).type
        if self.float_dtype not in (np.float32, np.float64):
            raise RefimplError(f"compute dtype must be float32 or float64, not {np.dtype(dtype).name}")
        proto = _load(model)
        graph = proto.graph
        self.encodings = dict(encodings or {})
        opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}

        self.weights: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            self.weights[init.name] = self._quantized(init.name, _in_compute_dtype(numpy_helper.to_array(init), self.float_dtype))
        for sparse in graph.sparse_initializer:
            name = sparse.values.name
            self.weights[name] = self._quantized(name, _in_compute_dtype(_dense(sparse), self.float_dtype))
        # Inputs with an initializer of the same name (IR < 4 style) are optional feeds.
        self.inputs = [_InputSpec.of(i) for i in graph.input if i.name not in self.weights]
        self.overridable = {i.name for i in graph.input if i.name in self.weights}
        self.output_names = [o.name for o in graph.output]

        nodes = list(graph.node)
        available = set(self.weights) | {i.name for i in graph.input}
        self.constants: dict[str, np.ndarray] = {}
        self.steps: list[_Step] = []
        for k in _topological_order(nodes, available):
            node = nodes[k]
            domain = "" if node.domain in ("", "ai.onnx") else node.domain
            opset = opsets.get(domain, 0)
            if node.op_type == "Constant" and domain == "":
                self.constants[node.output[0]] = self._quantized(node.output[0], _constant_value(node, self.float_dtype))
                continue
            adapter = REGISTRY.get((domain, node.op_type))
            if adapter is None or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise UnsupportedOpError(node.op_type, domain, opset, node.name)
            ctx = Ctx(opset, self.float_dtype, node.name, len(node.output))
            self.steps.append(_Step(adapter, node, tuple(node.input), tuple(node.output), ctx, _attributes(node)))
        self._known = set(self.weights) | set(self.constants) | available | {o for s in self.steps for o in s.outputs if o}
        self._last_use: dict[str, int] = {}
        for k, step in enumerate(self.steps):
            for name in step.inputs:
                if name:
                    self._last_use[name] = k
        self._free_plans: dict[tuple[str, ...], list[list[str]]] = {}

    def _quantized(self, name: str, value: np.ndarray) -> np.ndarray:
        enc = self.encodings.get(name)
        if enc is None or not np.issubdtype(value.dtype, np.floating):
            return value
        return quantize_dequantize(value, enc)

    def _free_plan(self, keep: tuple[str, ...]) -> list[list[str]]:
        """For each step, the tensors that die after it (never weights, constants or ``keep``)."""
        plan = self._free_plans.get(keep)
        if plan is None:
            plan = [[] for _ in self.steps]
            kept = set(keep) | set(self.weights) | set(self.constants)
            for name, k in self._last_use.items():
                if name not in kept:
                    plan[k].append(name)
            self._free_plans[keep] = plan
        return plan

    def _bind_feeds(self, feeds: Mapping[str, np.ndarray], lazy: set[str]) -> dict[str, np.ndarray]:
        """The feeds in the compute dtype. A float feed of another dtype without an encoding
        is converted where a node reads it (its name added to ``lazy``), so that a model
        fed its weights (verify.block_check) holds them once, not also in float64."""
        env: dict[str, np.ndarray] = {}
        bindings: dict[str, int] = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise FeedError(f"missing feed for input {spec.name!r} (the model's inputs: {[s.name for s in self.inputs]})")
            value = spec.check(feeds[spec.name], bindings)
            if spec.name not in self.encodings and value.dtype != self.float_dtype and np.issubdtype(value.dtype, np.floating):
                env[spec.name] = value
                lazy.add(spec.name)
                continue
            env[spec.name] = self._quantized(spec.name, _in_compute_dtype(value, self.float_dtype))
        for name in self.overridable & feeds.keys():
            env[name] = self._quantized(name, _in_compute_dtype(np.asarray(feeds[name]), self.float_dtype))
        return env

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Iterable[str] | str | None = None) -> dict[str, np.ndarray]:
        """Evaluate the model; see ``refimpl.run`` for ``outputs``. Feeds that name no input
        are ignored."""
        want_all = isinstance(outputs, str) and outputs == "all"
        if isinstance(outputs, str) and not want_all:
            outputs = [outputs]
        wanted = tuple(self.output_names if outputs is None else () if want_all else outputs)
        unknown = [n for n in wanted if n not in self._known]
        if unknown:
            raise RefimplError(f"requested tensors that the model does not have: {unknown}")
        env = dict(self.weights)
        env.update(self.constants)
        lazy: set[str] = set()
        env.update(self._bind_feeds(feeds, lazy))
        results: dict[str, np.ndarray] = {}
        free = None if want_all else self._free_plan(wanted)
        with np.errstate(all="ignore"):
            for k, step in enumerate(self.steps):
                values = self._execute(step, env, lazy)
                for name, value in zip(step.outputs, values):
                    if name:
                        env[name] = value
                        if want_all:
                            results[name] = value
                if free is not None:
                    for name in free[k]:
                        env.pop(name, None)
        if want_all:
            results.update({n: env[n] for n in self.constants})
            results.update({s.name: env[s.name].astype(self.float_dtype) if s.name in lazy else env[s.name] for s in self.inputs})
            return results
        missing = [n for n in wanted if n not in env]
        if missing:
            raise RefimplError(f"requested tensors were not computed (optional outputs not produced): {missing}")
        return {n: env[n].astype(self.float_dtype) if n in lazy else env[n] for n in wanted}

    def _execute(self, step: _Step, env: dict[str, np.ndarray], lazy: set[str] = frozenset()) -> list[np.ndarray]:
        try:
            args = [env[name] if name else None for name in step.inputs]
        except KeyError as exc:
            raise RefimplError(f"node {step.node.name or step.node.op_type!r} reads {exc.args[0]!r}, which nothing produces") from None
        tiled = bool(lazy) and _tiles_weight(step, args, lazy, self.float_dtype)
        if lazy and not tiled:
            args = [arg.astype(self.float_dtype, copy=False) if name in lazy else arg for name, arg in zip(step.inputs, args)]
        try:
            values = _tiled_matmul(*args) if tiled else step.adapter(step.ctx, args, step.attrs)
        except NotImplementedError as exc:
            raise UnsupportedOpError(step.node.op_type, step.node.domain, step.ctx.opset, step.node.name, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - say which node failed, keep the cause chained
            shapes = ", ".join("None" if x is None else f"{x.dtype.name}{list(x.shape)}" for x in args)
            raise RefimplError(
                f"{step.node.op_type} node {step.node.name or '?'!r} failed on inputs ({shapes}): {type(exc).__name__}: {exc}"
            ) from exc
        out = []
        for name, value in zip(step.outputs, values):
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.floating):
                if value.dtype != self.float_dtype:
                    value = value.astype(self.float_dtype)
                if name in self.encodings:
                    value = quantize_dequantize(value, self.encodings[name])
            out.append(value)
        return out


_TILE_BYTES = 16 << 20  # float64 columns of a weight converted at a time


def _tiles_weight(step: _Step, args: list, lazy: set[str], float_dtype) -> bool:
    """A float64 MatMul of an activation by a weight fed in another dtype: computed in
    column tiles (each output column is the same sum in the same order as the untiled
    einsum in ops/nn.py), so the weight is never whole in float64."""
    return (step.node.op_type == "MatMul" and float_dtype is np.float64 and step.inputs[1] in lazy
            and step.inputs[0] not in lazy and args[0].ndim >= 2 and args[1].ndim >= 2
            and np.issubdtype(args[0].dtype, np.floating) and args[1].nbytes > _TILE_BYTES // 4)


def _tiled_matmul(x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    shape = np.broadcast_shapes(x.shape[:-2], w.shape[:-2]) + (x.shape[-2], w.shape[-1])
    out = np.empty(shape, dtype=np.float64)
    step = max(1, _TILE_BYTES // (8 * int(np.prod(w.shape[:-1]))))
    for k in range(0, w.shape[-1], step):
        out[..., k:k + step] = np.einsum("...ij,...jk->...ik", x, w[..., k:k + step].astype(np.float64), optimize=False)
    return [out]


def run(
    model,
    feeds: Mapping[str, np.ndarray],
    *,
    dtype=np.float32,
    encodings: Mapping[str, QuantEncoding] | None = None,
    outputs: Iterable[str] | str | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate ``model`` (a path or an onnx.ModelProto) on ``feeds``.

    ``dtype``: the compute dtype of every float tensor (np.float64 for the ground truth).
    ``encodings``: tensor name -> QuantEncoding, fake-quantized as described in the module
    docstring. ``outputs``: None for the graph outputs; a list of tensor names (any
    intermediate, input or weight); or "all" for every tensor the graph computes, plus
    constants and inputs. Returns name -> array.

    Raises FeedError (missing feed, wrong rank, static dimension or type),
    UnsupportedOpError (an op refimpl does not implement) or RefimplError (a node failed).
    To run one model many times, build a ``Session`` once and call its ``run``.
    """
    return Session(model, dtype=dtype, encodings=encodings).run(feeds, outputs)
