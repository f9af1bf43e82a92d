"""Build one-op (or few-op) ONNX graphs and run them in onnxruntime: the oracle for refimpl."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper


def tensor_type(arr: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(arr.dtype)


def run_graph(nodes, inputs: dict[str, np.ndarray], outputs: list[str], *, opset: int = 17, initializers=None, domain_opsets=None):
    """Run ``nodes`` in onnxruntime with ``inputs`` fed; returns (outputs, model)."""
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, tensor_type(v), v.shape) for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializers or [],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domain_opsets or {}).items()]
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = 10 if opset >= 21 else 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, inputs), model


def ulp_tolerance(expected: np.ndarray, factor: float = 64.0) -> float:
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return factor * float(np.finfo(np.float32).eps) * max(scale, 1.0)
