"""Float feeds of another dtype than the compute dtype (a block's weights fed as inputs by
verify.block_check) are converted where they are read, and a float64 MatMul by such a
weight runs in column tiles: the results must be exactly those of converting first.

Oracle: numpy, the weight converted to float64 whole, with the summation order of
refimpl's float64 MatMul (einsum, optimize=False)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import refimpl


def _model(k: int, n: int):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 5, k]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT16, [k, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT16, [n])],
        [helper.make_tensor_value_info("z", TensorProto.DOUBLE, None), helper.make_tensor_value_info("w", TensorProto.FLOAT16, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("n", [7, 7001])  # one tile; several tiles and a partial last one
def test_weights_fed_in_float16_equal_the_float64_product_exactly(n):
    rng = np.random.default_rng(n)
    k = 300
    x = rng.standard_normal((2, 5, k))
    w = rng.standard_normal((k, n)).astype(np.float16)
    b = rng.standard_normal(n).astype(np.float16)
    got = refimpl.run(_model(k, n), {"x": x, "w": w, "b": b}, dtype=np.float64, outputs=["z", "w"])
    expected = np.einsum("...ij,...jk->...ik", x, w.astype(np.float64), optimize=False) + b.astype(np.float64)
    assert np.array_equal(got["z"], expected)
    # An input asked for as an output comes back in the compute dtype, like every tensor.
    assert got["w"].dtype == np.float64 and np.array_equal(got["w"], w.astype(np.float64))
