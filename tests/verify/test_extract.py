"""Extracted blocks are valid ONNX: a node inside the block may also write a tensor the block
is fed (a Split or Unsqueeze whose other output crosses the boundary, as GPT-BigCode's fused
QKV does); the block then defines every name once and its readers read the fed value."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from verify.extract import extract
from verify.graphs import infer_shapes


def _model(first_op: str) -> onnx.ModelProto:
    """x -> Split (or Unsqueeze) -> two tensors; y = first * second-path."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    split = helper.make_tensor("split", TensorProto.INT64, [2], [3, 3])
    nodes = [helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Mul", ["a", "rb"], ["y"])]
    if first_op == "Unsqueeze":  # an Unsqueeze with two readers, one inside and one outside
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
        nodes = [helper.make_node("Split", ["x", "split"], ["a0", "b"], axis=1),
                 helper.make_node("Unsqueeze", ["a0", "axes"], ["a"]),
                 helper.make_node("Relu", ["b"], ["rb"]),
                 helper.make_node("Squeeze", ["a", "axes"], ["a_back"]),
                 helper.make_node("Mul", ["a_back", "rb"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y], [split, axes])
    else:
        graph = helper.make_graph(nodes, "g", [x], [y], [split])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_split_output_fed_to_the_block_is_defined_once():
    for first in ("Split", "Unsqueeze"):
        model = ir.serde.deserialize_model(_model(first))
        infer_shapes(model)
        block = extract(model, ["b"], ["y"])  # b is fed; the Split is still needed for a
        onnx.checker.check_model(block, full_check=True)
        names = [o for n in block.graph.node for o in n.output] + [i.name for i in block.graph.input]
        assert len(names) == len(set(names)), names
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 6)).astype(np.float32)
        b = rng.standard_normal((2, 3)).astype(np.float32)  # not x's second half: the feed must be what is read
        sess = ort.InferenceSession(block.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: {"x": x, "b": b}[i.name] for i in sess.get_inputs()}
        (got,) = sess.run(None, feeds)
        np.testing.assert_allclose(got, x[:, :3] * np.maximum(b, 0), rtol=1e-6)
