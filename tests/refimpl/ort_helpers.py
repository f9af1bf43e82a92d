"""The oracles for refimpl's tests: small ONNX graphs built with onnx.helper and run in
onnxruntime (or onnx.reference), and the tolerances used to compare against them.

Tolerances are "a few float32 ulps, scaled": |got - expected| <= ulps * eps32 * (|expected|
+ magnitude), with ``magnitude`` the largest |expected| (or a caller's scale, e.g. the sum
of |terms| of a dot product). Float64 refimpl is held to the same bound: its result is
closer to the exact value than float32 onnxruntime's, so the difference is ORT's error.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

EPS32 = float(np.finfo(np.float32).eps)


def value_info(name: str, arr: np.ndarray, *, symbolic: bool = False) -> onnx.ValueInfoProto:
    dims = [f"{name}_d{k}" for k in range(arr.ndim)] if symbolic else list(arr.shape)
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), dims)


def make_model(
    nodes: list[onnx.NodeProto],
    feeds: dict[str, np.ndarray],
    outputs: list[str],
    *,
    opset: int = 17,
    initializers: dict[str, np.ndarray] | None = None,
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """One graph with ``feeds`` as inputs (their shapes declared) and untyped outputs."""
    graph = helper.make_graph(
        nodes,
        "g",
        [value_info(k, v) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        _initializer_protos(initializers),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10 if opset >= 21 else 8
    return model


def _initializer_protos(initializers) -> list[onnx.TensorProto]:
    """Initializers given as {name: array} or as ready TensorProtos."""
    if initializers is None:
        return []
    if isinstance(initializers, dict):
        return [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    return list(initializers)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors raise; no log lines
    # No graph optimisation: the oracle computes the graph as written (fusions may change
    # the rounding, e.g. a fused LayerNorm or Gelu).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, {k: np.asarray(v) for k, v in feeds.items()})


def run_graph(nodes, inputs: dict[str, np.ndarray], outputs: list[str], *, opset: int = 17, initializers=None, extra_opsets=None):
    """Build the graph and run it in onnxruntime; returns (outputs, model)."""
    model = make_model(nodes, inputs, outputs, opset=opset, initializers=initializers, extra_opsets=extra_opsets)
    return run_ort(model, inputs, outputs), model


def assert_close(got: np.ndarray, expected: np.ndarray, *, ulps: float = 8.0, magnitude: float | None = None, what: str = "") -> None:
    """|got - expected| <= ulps * eps32 * (|expected| + magnitude), NaN where expected is NaN."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    if not np.issubdtype(expected.dtype, np.floating):
        assert got.dtype == expected.dtype or (got.dtype.kind == expected.dtype.kind), f"{what}: dtype {got.dtype} != {expected.dtype}"
        np.testing.assert_array_equal(got, expected, err_msg=what)
        return
    exp64, got64 = expected.astype(np.float64), got.astype(np.float64)
    nan = np.isnan(exp64)
    np.testing.assert_array_equal(np.isnan(got64), nan, err_msg=f"{what}: NaN positions differ")
    inf = np.isinf(exp64)
    np.testing.assert_array_equal(got64[inf], exp64[inf], err_msg=f"{what}: infinities differ")
    finite = ~nan & ~inf
    if not finite.any():
        return
    if magnitude is None:
        magnitude = float(np.max(np.abs(exp64[finite])))
    bound = ulps * EPS32 * (np.abs(exp64[finite]) + magnitude) + 1e-37
    err = np.abs(got64[finite] - exp64[finite])
    worst = int(np.argmax(err / bound))
    assert np.all(err <= bound), (
        f"{what}: max error {err[worst]:.3g} > bound {bound[worst]:.3g} "
        f"(got {got64[finite][worst]!r}, expected {exp64[finite][worst]!r}; {ulps} ulps, magnitude {magnitude:.3g})"
    )


def ulp_tolerance(expected: np.ndarray, factor: float = 64.0) -> float:
    """An absolute tolerance of ``factor`` float32 ulps of the largest |expected| (at least 1)."""
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return factor * EPS32 * max(scale, 1.0)
