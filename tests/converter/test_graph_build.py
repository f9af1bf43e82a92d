"""The shared graph helpers (mha2sha/graph/build.py), checked against the ONNX protobuf and
onnxruntime rather than against themselves."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from fuzz import AttentionConfig, build
from mha2sha.graph.build import (
    add_constant,
    axes_are_computed,
    axes_of,
    fresh_name,
    linear_weight,
    tensor_names,
)
from tests.converter.conftest import run_ort


def test_tensor_names_are_the_protobuf_names():
    proto = build(AttentionConfig(heads=4, kv_heads=2, layers=2), seed=1).model
    expected = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    expected |= {o for n in proto.graph.node for o in n.output}
    graph = ir.serde.deserialize_model(proto).graph
    assert tensor_names(graph) == expected
    assert tensor_names(graph, node_names=True) == expected | {n.name for n in proto.graph.node}


def test_fresh_names_never_collide():
    taken = {"a", "a_2", "b"}
    assert [fresh_name("a", taken), fresh_name("a", taken), fresh_name("c", taken), fresh_name("b", taken, sep="")] == ["a_3", "a_4", "c", "b2"]
    assert {"a_3", "a_4", "c", "b2"} <= taken


@pytest.mark.parametrize("opset", [11, 13])
def test_axes_from_the_attribute_or_the_input_match_onnxruntime(opset):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if opset == 11:
        node = helper.make_node("Unsqueeze", ["x"], ["y"], axes=[-1, 1])
        inits = []
    else:
        node = helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
        inits = [onnx.numpy_helper.from_array(np.array([-1, 1], np.int64), "axes")]
    proto = helper.make_model(helper.make_graph([node], "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)])
    shape = run_ort(proto, {"x": np.zeros((2, 3, 4), np.float32)})["y"].shape
    ir_node = next(iter(ir.serde.deserialize_model(proto).graph))
    axes = axes_of(ir_node, len(shape))
    assert [shape[a] for a in sorted(axes)] == [1, 1] and sorted(axes) == [1, 4]
    assert not axes_are_computed(ir_node)


def test_a_constant_added_is_what_onnxruntime_reads():
    proto = helper.make_model(helper.make_graph([], "g", [], []),
                              opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    value = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not contiguous
    model.graph.outputs.append(add_constant(model.graph, "c", value))
    model.graph.outputs.append(add_constant(model.graph, "s", np.array(7, dtype=np.int64)))  # 0-d stays 0-d
    got = run_ort(ir.serde.serialize_model(model), {})
    assert np.array_equal(got["c"], value)
    assert got["s"].shape == () and got["s"] == 7


@pytest.mark.parametrize("projection,out_axis", [("matmul", 1), ("gemm", 1), ("gemm_transb", 0)])
def test_linear_weight_channels_are_the_projection_sizes(projection, out_axis):
    cfg = AttentionConfig(heads=4, kv_heads=2, head_dim=8, hidden=32, projection=projection, mlp=False)
    model = ir.serde.deserialize_model(build(cfg, seed=1).model)
    views = [v for v in (linear_weight(n) for n in model.graph) if v is not None]
    outs = sorted(v.out_channels for v in views)
    # q (H*D), k and v (KV*D), o (E): sizes from the config, not from the graph
    assert outs == sorted([cfg.heads * 8, cfg.kv_heads * 8, cfg.kv_heads * 8, cfg.hidden])
    assert sorted(v.in_channels for v in views) == sorted([cfg.hidden] * 3 + [cfg.heads * 8])
    assert {v.out_axis for v in views} == {out_axis}
    assert all(v.weight.const_value.shape[v.out_axis] == v.out_channels for v in views)
