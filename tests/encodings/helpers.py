"""Shared by the encodings tests: the tiny model the hand-written fixtures describe, an
exact JSON comparison, and fixture paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(p.name for p in DATA.glob("*.encodings"))


def fixture(name: str) -> Path:
    return DATA / name


def load_json(path) -> object:
    return json.loads(Path(path).read_text())


def strict_equal(a, b, path: str = "$") -> None:
    """Equal JSON values, ints and floats not confused (1 != 1.0, True != 1); key order aside."""
    assert type(a) is type(b), f"{path}: {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            strict_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            strict_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b)), f"{path}: {a!r} != {b!r}"
        assert math.copysign(1, a) == math.copysign(1, b), f"{path}: sign of zero differs"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _init(name: str, shape, seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def tiny_model() -> onnx.ModelProto:
    """The model the fixtures encode: x [2, 8];
    q = x @ q.weight [8, 4] (MatMul: channels on axis 1),
    k = Gemm(x, k.weight [4, 8], k.bias, transB=1) (channels on axis 0),
    v = Gemm(x, v.weight [8, 4], transB=0) (channels on axis 1, blocks on axis 0),
    o4 = Conv(Reshape(x) = x4 [2, 8, 1, 1], o.weight [4, 8, 1, 1]) (channels 0, blocks 1),
    probs = Softmax(q @ Transpose(k) = kT), attn = probs @ v, y = LayerNorm(attn, ln.weight)."""
    nodes = [
        helper.make_node("MatMul", ["x", "q.weight"], ["q"]),
        helper.make_node("Gemm", ["x", "k.weight", "k.bias"], ["k"], transB=1),
        helper.make_node("Gemm", ["x", "v.weight"], ["v"], transB=0),
        helper.make_node("Reshape", ["x", "x4.shape"], ["x4"]),
        helper.make_node("Conv", ["x4", "o.weight"], ["o4"]),
        helper.make_node("Transpose", ["k"], ["kT"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kT"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["attn"]),
        helper.make_node("LayerNormalization", ["attn", "ln.weight", "ln.bias"], ["y"], axis=-1),
    ]
    inits = [
        _init("q.weight", (8, 4), 1), _init("k.weight", (4, 8), 2), _init("k.bias", (4,), 3),
        _init("v.weight", (8, 4), 4), _init("o.weight", (4, 8, 1, 1), 5),
        _init("ln.weight", (4,), 6), _init("ln.bias", (4,), 7),
        numpy_helper.from_array(np.array([2, 8, 1, 1], np.int64), "x4.shape"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("o4", TensorProto.FLOAT, [2, 4, 1, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)
