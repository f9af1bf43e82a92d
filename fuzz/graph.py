"""A small ONNX graph builder with exporter-like names, readable or opaque.

Readable names mimic the TorchScript exporter (``/model/layers.0/self_attn/q_proj/MatMul``);
opaque names mimic what exporters really leave behind (``onnx::MatMul_597``, ``val_39``) so
that no code under test can lean on names.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphBuilder:
    def __init__(self, *, opset: int, opaque: bool, dtype=np.float32):
        self.opset = opset
        self.opaque = opaque
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.scope = ""
        self._counter = 0
        self._names: set[str] = set()

    # -- naming --------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        self._counter += 1
        name = f"{base}_{self._counter}" if base in self._names or not base else base
        self._names.add(name)
        return name

    def tensor_name(self, op: str, role: str = "") -> str:
        if self.opaque:
            self._counter += 1
            return f"onnx::{op}_{self._counter}" if self._counter % 2 else f"val_{self._counter}"
        return self._fresh(f"{self.scope}/{role or op}_output_0")

    def weight_name(self, role: str) -> str:
        if self.opaque:
            self._counter += 1
            return f"onnx::MatMul_{self._counter}" if "weight" in role else f"val_{self._counter}"
        return self._fresh(f"{self.scope.strip('/').replace('/', '.')}.{role}" if self.scope else role)

    # -- graph pieces ------------------------------------------------------------------------
    def input(self, name: str, dtype, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
        return name

    def output(self, name: str, dtype, shape=None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))

    def const(self, array, role: str = "const", *, as_weight: bool = False) -> str:
        arr = np.asarray(array)
        name = self.weight_name(role) if as_weight else (self.tensor_name("Constant", role) if self.opaque else self._fresh(f"{self.scope}/{role}"))
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values, role: str = "shape") -> str:
        return self.const(np.array(values, dtype=np.int64), role)

    def scalar(self, value: float, role: str = "scalar") -> str:
        return self.const(np.array(value, dtype=self.dtype), role)

    def op(self, op_type: str, inputs, *, role: str = "", outputs: list[str] | None = None, n_out: int = 1, domain: str = "", **attrs):
        outs = outputs or [self.tensor_name(op_type, role or op_type) for _ in range(n_out)]
        name = f"{self.scope}/{role or op_type}" if not self.opaque else f"{op_type}_{self._counter}"
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._fresh(name), domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    # -- opset-dependent forms -------------------------------------------------------------
    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")]) if self.opset >= 13 else self.op("Unsqueeze", [x], axes=axes)

    def squeeze(self, x: str, axes: list[int]) -> str:
        return self.op("Squeeze", [x, self.ints(axes, "axes")]) if self.opset >= 13 else self.op("Squeeze", [x], axes=axes)

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes, "axes")], keepdims=1)
        return self.op("ReduceMean", [x], axes=axes, keepdims=1)

    def split(self, x: str, sizes: list[int], axis: int) -> list[str]:
        return self.op("Split", [x, self.ints(sizes, "split")], axis=axis, n_out=len(sizes))

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.ints([start], "starts"), self.ints([end], "ends"), self.ints([axis], "axes")])

    def reshape(self, x: str, shape: list[int] | str) -> str:
        target = shape if isinstance(shape, str) else self.ints(shape, "shape")
        return self.op("Reshape", [x, target])

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", [x], perm=perm)

    def model(self, *, shuffle_seed: int | None = None) -> onnx.ModelProto:
        nodes = list(self.nodes)
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(nodes))
            nodes = [nodes[i] for i in order]
        graph = helper.make_graph(nodes, "attention", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="mha2sha-fuzz")
        # The lowest IR version that knows this opset, as the exporters of that opset wrote.
        model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", self.opset)])
        return model
