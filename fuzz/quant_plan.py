"""Which tensors of a model AIMET would quantize, and how each is laid out.

Read from the graph structure only (never from names), the way aimet-onnx places its
quantizers: one per weight of MatMul / Gemm / Conv (with its output-channel axis and
input-channel block axis), one per bias (Gemm / Conv input C, or the constant of an Add
right after a weighted MatMul / Conv), one per other float constant that an op reads
(norm weights, per-head biases, RoPE tables: per-tensor), and one per float activation
(graph inputs and node outputs).

Axes (AIMET_ENCODINGS.md, "Per-channel axes of weights"): MatMul weight [in, out]:
channel 1, block 0; Gemm transB=1 [out, in]: 0 / 1, transB=0: 1 / 0; Conv [O, I, kh, kw]:
0 / 1. Axes are stored non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

# Ops that only move data: AIMET 0.6.1 / 1.0.0 exports usually leave their outputs without
# an encoding (they inherit their input's), 2.0.0 exports carry one.
DATA_MOVEMENT = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather", "Expand", "Tile", "Flatten", "Identity"}
)


@dataclass(frozen=True)
class Weight:
    name: str
    values: np.ndarray
    channel_axis: int
    block_axis: int
    layer_input: str  # the activation the layer multiplies with this weight
    node: str


@dataclass(frozen=True)
class Bias:
    name: str
    values: np.ndarray
    weight: str  # the Weight.name it is added to


@dataclass(frozen=True)
class OtherParam:
    name: str
    values: np.ndarray
    node: str


@dataclass(frozen=True)
class Activation:
    name: str
    producer_op: str | None  # None for a graph input
    node: str | None
    feeds_bias_add: bool  # a MatMul / Conv output consumed only by its bias Add


@dataclass(frozen=True)
class QuantPlan:
    weights: tuple[Weight, ...]
    biases: tuple[Bias, ...]
    others: tuple[OtherParam, ...]
    activations: tuple[Activation, ...]


def _float_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {}
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if np.issubdtype(arr.dtype, np.floating):
            out[t.name] = arr
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def plan(model: onnx.ModelProto, activation_names: list[str]) -> QuantPlan:
    """The quantizers of ``model``; ``activation_names`` are its float activations in order."""
    consts = _float_initializers(model)
    nodes = list(model.graph.node)
    weights: dict[str, Weight] = {}
    weight_of_output: dict[str, Weight] = {}
    biases: dict[str, Bias] = {}
    for node in nodes:
        ins = list(node.input)
        if node.op_type == "MatMul" and len(ins) == 2 and ins[1] in consts and consts[ins[1]].ndim == 2:
            w = Weight(ins[1], consts[ins[1]], 1, 0, ins[0], node.name)
        elif node.op_type == "Gemm" and len(ins) >= 2 and ins[1] in consts and consts[ins[1]].ndim == 2:
            trans_b = _attr(node, "transB", 0)
            w = Weight(ins[1], consts[ins[1]], 0 if trans_b else 1, 1 if trans_b else 0, ins[0], node.name)
            if len(ins) == 3 and ins[2] in consts:
                biases[ins[2]] = Bias(ins[2], consts[ins[2]], w.name)
        elif node.op_type == "Conv" and len(ins) >= 2 and ins[1] in consts:
            w = Weight(ins[1], consts[ins[1]], 0, 1, ins[0], node.name)
            if len(ins) == 3 and ins[2] in consts:
                biases[ins[2]] = Bias(ins[2], consts[ins[2]], w.name)
        else:
            continue
        if w.name in weights:  # a weight shared by two layers keeps its first reading
            continue
        weights[w.name] = w
        weight_of_output[node.output[0]] = w

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    bias_adds = set()
    for node in nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for k in (0, 1):
            out, const = node.input[k], node.input[1 - k]
            w = weight_of_output.get(out)
            if w is None or const not in consts or const in weights:
                continue
            channels = w.values.shape[w.channel_axis]
            if consts[const].size == channels and consts[const].ndim == 1:
                biases.setdefault(const, Bias(const, consts[const], w.name))
                if len(consumers.get(out, [])) == 1:
                    bias_adds.add(out)

    others: dict[str, OtherParam] = {}
    for node in nodes:
        for name in node.input:
            if name in consts and name not in weights and name not in biases and name not in others:
                if consts[name].size > 1:  # scalars (eps, scale, exponents) stay float
                    others[name] = OtherParam(name, consts[name], node.name)

    producer = {o: n for n in nodes for o in n.output}
    activations = tuple(
        Activation(
            name,
            producer[name].op_type if name in producer else None,
            producer[name].name if name in producer else None,
            name in bias_adds,
        )
        for name in activation_names
    )
    return QuantPlan(tuple(weights.values()), tuple(biases.values()), tuple(others.values()), activations)
