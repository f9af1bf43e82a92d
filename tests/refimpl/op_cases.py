"""Hypothesis strategies for single-op ONNX graphs, one per op family.

Each strategy draws shapes and attributes first, then values from a drawn seed, and returns
an ``OpCase``: the node(s), the feeds, constant inputs (initializers), the outputs to
compare, the opset and the tolerance (float32 ulps, scaled by ``magnitude``; see
ort_helpers.assert_close). Constant inputs (axes, shapes, indices) are initializers, as
exporters write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
shapes_or_scalar = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5)


@dataclass
class OpCase:
    nodes: list
    feeds: dict[str, np.ndarray]
    outputs: list[str]
    opset: int = 17
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    ulps: float = 8.0
    magnitude: float | None = None  # None: the largest |expected|
    extra_opsets: dict[str, int] = field(default_factory=dict)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(rng: np.random.Generator, shape, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale + shift, dtype=np.float32)


def _i64(*values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# -- elementwise --------------------------------------------------------------------------

# op -> (value transform, ulps, magnitude); magnitude 0 = purely relative
_UNARY = {
    "Neg": (None, 0, 0.0), "Abs": (None, 0, 0.0), "Relu": (None, 0, 0.0), "Floor": (None, 0, 0.0),
    "Ceil": (None, 0, 0.0), "Sign": (None, 0, 0.0), "Identity": (None, 0, 0.0),
    "Round": ("halves", 0, 0.0), "Exp": ("clip10", 4, 0.0), "Tanh": (None, 4, 1.0),
    "Sigmoid": (None, 4, 1.0), "Erf": (None, 4, 1.0), "Sin": (None, 4, 1.0), "Cos": (None, 4, 1.0),
    "Softplus": (None, 4, 1.0), "Softsign": (None, 4, 1.0), "Log": ("positive", 4, 1.0),
    "Sqrt": ("positive", 2, 0.0), "Reciprocal": ("nonzero", 2, 0.0),
}


@st.composite
def unary_cases(draw):
    op_type = draw(st.sampled_from(sorted(_UNARY)), label="op")
    transform, ulps, magnitude = _UNARY[op_type]
    rng = _rng(draw(seeds))
    x = _f32(rng, draw(shapes_or_scalar), scale=3.0)
    if transform == "halves":  # exact ties: Round is half to even
        x = (np.round(x * 2) / 2).astype(np.float32)
    elif transform == "clip10":
        x = np.clip(x, -10, 10)
    elif transform == "positive":
        x = np.abs(x) + np.float32(1e-3)
    elif transform == "nonzero":
        x = np.where(np.abs(x) < 1e-2, np.float32(0.5), x)
    return OpCase([helper.make_node(op_type, ["x"], ["y"])], {"x": x}, ["y"], ulps=ulps, magnitude=magnitude)


@st.composite
def activation_cases(draw):
    """Activations with attributes: LeakyRelu, Elu, HardSigmoid, Gelu (opset 20), PRelu."""
    op_type = draw(st.sampled_from(["LeakyRelu", "Elu", "HardSigmoid", "Gelu", "PRelu"]), label="op")
    rng = _rng(draw(seeds))
    shape = draw(shapes)
    x = _f32(rng, shape, scale=3.0)
    feeds, attrs, opset = {"x": x}, {}, 17
    if op_type == "LeakyRelu":
        attrs["alpha"] = draw(st.sampled_from([0.01, 0.2]))
    elif op_type == "Elu":
        attrs["alpha"] = draw(st.sampled_from([1.0, 0.5]))
    elif op_type == "HardSigmoid":
        attrs.update(alpha=draw(st.sampled_from([0.2, 0.5])), beta=draw(st.sampled_from([0.5, 0.1])))
    elif op_type == "Gelu":
        attrs["approximate"], opset = draw(st.sampled_from(["none", "tanh"])), 20
    else:
        feeds["slope"] = _f32(rng, shape[-1:])
    return OpCase([helper.make_node(op_type, list(feeds), ["y"], **attrs)], feeds, ["y"], opset=opset, ulps=8, magnitude=1.0)


_FLOAT_BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod"]
_COMPARE = ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"]


@st.composite
def binary_cases(draw):
    """Float arithmetic and comparisons with multidirectional broadcasting."""
    op_type = draw(st.sampled_from(_FLOAT_BINARY + _COMPARE), label="op")
    a_shape, b_shape = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4)).input_shapes
    rng = _rng(draw(seeds))
    a, b = _f32(rng, a_shape, 2.0), _f32(rng, b_shape, 2.0)
    attrs = {}
    if op_type == "Div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b)
    elif op_type == "Pow":
        a = np.abs(a) + np.float32(0.1)
    elif op_type == "Mod":
        attrs["fmod"] = 1  # required for floats
        b = np.where(np.abs(b) < 0.1, np.float32(0.7), b)
    elif op_type in _COMPARE:
        b = np.where(rng.random(b.shape) < 0.3, np.round(b), b).astype(np.float32)
        a = np.round(a).astype(np.float32)  # equal values happen
    return OpCase([helper.make_node(op_type, ["a", "b"], ["y"], **attrs)], {"a": a, "b": b}, ["y"], ulps=4, magnitude=0.0)


@st.composite
def integer_cases(draw):
    """Integer arithmetic (Div truncates toward zero; Mod fmod=0 takes the divisor's sign)."""
    op_type = draw(st.sampled_from(["Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Equal", "Less", "Greater"]), label="op")
    dtype = draw(st.sampled_from([np.int64, np.int32]))
    a_shape, b_shape = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    rng = _rng(draw(seeds))
    a = rng.integers(-20, 20, a_shape).astype(dtype)
    b = rng.integers(-7, 7, b_shape).astype(dtype)
    if op_type in ("Div", "Mod"):
        b = np.where(b == 0, dtype(3), b).astype(dtype)
    return OpCase([helper.make_node(op_type, ["a", "b"], ["y"])], {"a": a, "b": b}, ["y"])


@st.composite
def logic_cases(draw):
    """And / Or / Xor / Not, Where with three-way broadcasting, variadic Sum/Mean/Max/Min."""
    kind = draw(st.sampled_from(["And", "Or", "Xor", "Not", "Where", "Sum", "Mean", "Max", "Min"]), label="op")
    rng = _rng(draw(seeds))
    in_shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4)).input_shapes
    if kind in ("And", "Or", "Xor"):
        feeds = {"a": rng.random(in_shapes[0]) < 0.5, "b": rng.random(in_shapes[1]) < 0.5}
    elif kind == "Not":
        feeds = {"a": rng.random(in_shapes[0]) < 0.5}
    elif kind == "Where":
        feeds = {"c": rng.random(in_shapes[0]) < 0.5, "a": _f32(rng, in_shapes[1]), "b": _f32(rng, in_shapes[2])}
    else:
        feeds = {n: _f32(rng, s) for n, s in zip("abc", in_shapes)}
    return OpCase([helper.make_node(kind, list(feeds), ["y"])], feeds, ["y"], ulps=4)


@st.composite
def cast_and_clip_cases(draw):
    kind = draw(st.sampled_from(["Cast", "CastLike", "Clip11", "Clip6", "IsNaN", "IsInf"]), label="op")
    rng = _rng(draw(seeds))
    shape = draw(shapes)
    x = _f32(rng, shape, 5.0)
    if kind == "Cast":
        source = draw(st.sampled_from(["float", "int", "bool"]))
        target = draw(st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL]))
        value = {"float": x, "int": rng.integers(-5, 5, shape), "bool": rng.random(shape) < 0.5}[source]
        if source == "float":
            value = np.where(rng.random(shape) < 0.2, np.float32(0.0), value).astype(np.float32)
        return OpCase([helper.make_node("Cast", ["x"], ["y"], to=target)], {"x": value}, ["y"], opset=13)
    if kind == "CastLike":
        like = draw(st.sampled_from([np.array([1], np.int64), np.array([1.0], np.float32), np.array([True])]))
        return OpCase([helper.make_node("CastLike", ["x", "like"], ["y"])], {"x": x, "like": like}, ["y"], opset=15)
    if kind == "Clip11":
        present = draw(st.sampled_from([("lo", "hi"), ("lo", ""), ("", "hi"), ("", "")]))
        inits = {n: np.array(v, np.float32) for n, v in (("lo", -1.5), ("hi", 2.0)) if n in present}
        inputs = ["x", *present]
        while inputs[-1] == "":
            inputs.pop()
        return OpCase([helper.make_node("Clip", inputs, ["y"])], {"x": x}, ["y"], opset=13, initializers=inits)
    if kind == "Clip6":
        return OpCase([helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=0.5)], {"x": x}, ["y"], opset=6)
    special = x.copy()
    special.reshape(-1)[:: 3] = np.nan
    special.reshape(-1)[1:: 4] = np.inf
    special.reshape(-1)[2:: 5] = -np.inf
    if kind == "IsNaN":
        return OpCase([helper.make_node("IsNaN", ["x"], ["y"])], {"x": special}, ["y"])
    attrs = {"detect_positive": draw(st.integers(0, 1)), "detect_negative": draw(st.integers(0, 1))}
    return OpCase([helper.make_node("IsInf", ["x"], ["y"], **attrs)], {"x": special}, ["y"])


# -- softmax, reductions --------------------------------------------------------------------


@st.composite
def softmax_cases(draw):
    """Softmax / LogSoftmax; opset 11 flattens from ``axis`` (default 1) into rows."""
    op_type = draw(st.sampled_from(["Softmax", "LogSoftmax"]), label="op")
    opset = draw(st.sampled_from([11, 13]), label="opset")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    x = _f32(rng, shape, 3.0)
    # Masked entries (-inf), never a whole row: keep the first element of the last axis.
    masked = rng.random(shape) < 0.2
    masked[..., 0] = False
    x = np.where(masked, np.float32(-np.inf), x)
    attrs = {}
    if draw(st.booleans(), label="explicit axis"):
        attrs["axis"] = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    if opset == 11 and len(shape) == 1:
        attrs["axis"] = 0  # the default axis 1 needs rank 2
    if opset == 11 and attrs.get("axis", 1) % len(shape) != len(shape) - 1:
        x = np.where(np.isinf(x), np.float32(-30.0), x)  # flattened rows: keep them unmasked
    return OpCase([helper.make_node(op_type, ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=opset, ulps=8, magnitude=8.0 if op_type == "LogSoftmax" else None)


_REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp"]


@st.composite
def reduce_cases(draw):
    """Reductions with axes as an attribute (opset 13, except ReduceSum) or an input (18),
    keepdims, and noop_with_empty_axes."""
    op_type = draw(st.sampled_from(_REDUCE), label="op")
    opset = draw(st.sampled_from([13, 18]), label="opset")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    x = _f32(rng, shape, 1.0, 0.5)
    axes = draw(st.lists(st.integers(-len(shape), len(shape) - 1), unique_by=lambda a: a % len(shape), max_size=len(shape)), label="axes")
    attrs = {"keepdims": draw(st.integers(0, 1), label="keepdims")}
    inputs, inits = ["x"], {}
    axes_as_input = opset >= 18 or op_type == "ReduceSum"
    if axes_as_input:
        attrs["noop_with_empty_axes"] = draw(st.integers(0, 1), label="noop")
        if axes or draw(st.booleans()):
            inits["axes"] = np.array(axes, np.int64)
            inputs.append("axes")
    elif axes:
        attrs["axes"] = axes
    count = int(np.prod(shape))
    return OpCase([helper.make_node(op_type, inputs, ["y"], **attrs)], {"x": x}, ["y"], opset=opset, initializers=inits, ulps=4 + count)


@st.composite
def arg_and_cumsum_cases(draw):
    op_type = draw(st.sampled_from(["ArgMax", "ArgMin", "CumSum"]), label="op")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    axis = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    if op_type == "CumSum":
        attrs = {"exclusive": draw(st.integers(0, 1)), "reverse": draw(st.integers(0, 1))}
        x = _f32(rng, shape) if draw(st.booleans()) else rng.integers(-9, 9, shape).astype(np.int64)
        return OpCase([helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)], {"x": x}, ["y"], initializers={"axis": _i64(axis)}, ulps=4 + shape[axis])
    x = rng.integers(-2, 3, shape).astype(np.float32)  # many ties
    attrs = {"axis": axis, "keepdims": draw(st.integers(0, 1)), "select_last_index": draw(st.integers(0, 1))}
    return OpCase([helper.make_node(op_type, ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=13)


@st.composite
def top_k_cases(draw):
    """TopK (sorted output; MoE routers): largest or smallest, any axis, with ties (equal
    values keep the lower index first), float or integer input."""
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    axis = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    k = draw(st.integers(0, shape[axis]), label="k")
    ties = draw(st.booleans(), label="ties")
    x = rng.integers(-2, 3, shape).astype(np.float32) if ties else _f32(rng, shape)
    if draw(st.booleans(), label="int64"):
        x = rng.integers(-3, 4, shape).astype(np.int64)
    attrs = {"axis": axis, "largest": draw(st.integers(0, 1)), "sorted": 1}
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], **attrs)
    return OpCase([node], {"x": x}, ["values", "indices"], initializers={"k": _i64(k)}, opset=draw(st.sampled_from([11, 17])), ulps=0)


# -- layout ---------------------------------------------------------------------------------


def _factorizations(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def reshape_cases(draw):
    """Reshape to a drawn factorisation, with 0 (copy the dim) and -1 (infer) entries;
    Flatten; Transpose; Squeeze / Unsqueeze (axes attr at opset 11, input at 13)."""
    kind = draw(st.sampled_from(["Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"]), label="op")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    x = _f32(rng, shape)
    if kind == "Reshape":
        target, left = [], int(np.prod(shape))
        for _ in range(draw(st.integers(0, 3))):
            d = draw(st.sampled_from(_factorizations(left)))
            target.append(d)
            left //= d
        target.append(left)
        if draw(st.booleans()) and len(target) > 1:
            target[draw(st.integers(0, len(target) - 1))] = -1
        k = draw(st.integers(0, min(len(target), len(shape)) - 1))
        if target[k] == shape[k] and draw(st.booleans()):
            target[k] = 0  # allowzero=0: copy the input's dimension
        return OpCase([helper.make_node("Reshape", ["x", "shape"], ["y"])], {"x": x}, ["y"], opset=14, initializers={"shape": np.array(target, np.int64)})
    if kind == "Flatten":
        axis = draw(st.integers(-len(shape), len(shape)))
        return OpCase([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], {"x": x}, ["y"], opset=13)
    if kind == "Transpose":
        attrs = {"perm": list(draw(st.permutations(range(len(shape)))))} if draw(st.booleans()) else {}
        return OpCase([helper.make_node("Transpose", ["x"], ["y"], **attrs)], {"x": x}, ["y"])
    opset = draw(st.sampled_from([11, 13]), label="opset")
    if kind == "Squeeze":
        ones = [k for k, d in enumerate(shape) if d == 1]
        axes = draw(st.lists(st.sampled_from(ones), unique=True)) if ones else []
        axes = [a - len(shape) if draw(st.booleans()) else a for a in axes]
    else:
        rank = len(shape) + draw(st.integers(1, 2))
        axes = draw(st.lists(st.integers(-rank, rank - 1), min_size=rank - len(shape), max_size=rank - len(shape), unique_by=lambda a: a % rank))
    if opset == 11:
        attrs = {"axes": axes} if axes else {}
        return OpCase([helper.make_node(kind, ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=11)
    inputs, inits = (["x", "axes"], {"axes": np.array(axes, np.int64)}) if axes else (["x"], {})
    return OpCase([helper.make_node(kind, inputs, ["y"])], {"x": x}, ["y"], opset=13, initializers=inits)


@st.composite
def concat_split_cases(draw):
    kind = draw(st.sampled_from(["Concat", "Split"]), label="op")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    axis = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    if kind == "Concat":
        n = draw(st.integers(1, 3))
        feeds = {}
        for k in range(n):
            part = list(shape)
            part[axis] = draw(st.integers(1, 3))
            feeds[f"x{k}"] = _f32(rng, part)
        return OpCase([helper.make_node("Concat", list(feeds), ["y"], axis=axis)], feeds, ["y"])
    x = _f32(rng, shape)
    dim = shape[axis]
    form = draw(st.sampled_from(["attr", "input", "num_outputs", "equal"]), label="form")
    if form in ("attr", "input"):
        cuts = sorted(draw(st.lists(st.integers(0, dim), max_size=2)))
        sizes = np.diff([0, *cuts, dim]).tolist()
        outs = [f"y{k}" for k in range(len(sizes))]
        if form == "attr":
            return OpCase([helper.make_node("Split", ["x"], outs, axis=axis, split=sizes)], {"x": x}, outs, opset=11)
        return OpCase([helper.make_node("Split", ["x", "split"], outs, axis=axis)], {"x": x}, outs, opset=13, initializers={"split": np.array(sizes, np.int64)})
    if form == "num_outputs":  # opset 18: the last chunk may be smaller
        n = draw(st.integers(1, dim))
        if -(-dim // n) * (n - 1) >= dim:  # ORT rejects a count that leaves the last chunk empty
            n = 1
        outs = [f"y{k}" for k in range(n)]
        return OpCase([helper.make_node("Split", ["x"], outs, axis=axis, num_outputs=n)], {"x": x}, outs, opset=18)
    n = draw(st.sampled_from(_factorizations(dim)))
    outs = [f"y{k}" for k in range(n)]
    return OpCase([helper.make_node("Split", ["x"], outs, axis=axis)], {"x": x}, outs, opset=13)


@st.composite
def slice_cases(draw):
    """Slice with inputs (opset 13: starts, ends, optional axes and steps, negative steps,
    out-of-range bounds) or attributes (opset 9)."""
    shape = draw(shapes)
    x = _f32(_rng(draw(seeds)), shape)
    axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True), label="axes")
    bound = st.one_of(st.integers(-6, 6), st.sampled_from([2**63 - 1, -(2**63), 2**31]))
    starts = [draw(bound) for _ in axes]
    ends = [draw(bound) for _ in axes]
    if draw(st.booleans(), label="opset 9"):
        return OpCase([helper.make_node("Slice", ["x"], ["y"], starts=starts, ends=ends, axes=axes)], {"x": x}, ["y"], opset=9)
    steps = [draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in axes]
    # onnxruntime departs from the specification (and from onnx.reference) for an INT64_MAX end
    # with a negative step: it takes elements where the spec clamps the end to dim - 1.
    ends = [e if not (e == 2**63 - 1 and k < 0) else 2**31 for e, k in zip(ends, steps)]
    inits = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64)}
    inputs = ["x", "starts", "ends"]
    if draw(st.booleans()) or steps != [1] * len(axes) or axes != list(range(len(axes))):
        inits["axes"] = np.array([a - len(shape) if draw(st.booleans()) else a for a in axes], np.int64)
        inputs.append("axes")
        if steps != [1] * len(axes):
            inits["steps"] = np.array(steps, np.int64)
            inputs.append("steps")
    return OpCase([helper.make_node("Slice", inputs, ["y"])], {"x": x}, ["y"], opset=13, initializers=inits)


@st.composite
def broadcast_cases(draw):
    """Expand, Tile, Trilu, Pad (constant / reflect / edge, axes at opset 18), Shape, Size."""
    kind = draw(st.sampled_from(["Expand", "Tile", "Trilu", "Pad", "Shape", "Size"]), label="op")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    x = _f32(rng, shape)
    if kind == "Expand":
        # Per axis: a size-1 axis may grow; any axis may be given as 1 (broadcast keeps it).
        target = [draw(st.integers(1, 3)) if d == 1 else draw(st.sampled_from([d, 1])) for d in shape]
        target = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))] + target
        return OpCase([helper.make_node("Expand", ["x", "shape"], ["y"])], {"x": x}, ["y"], initializers={"shape": np.array(target, np.int64)})
    if kind == "Tile":
        reps = [draw(st.integers(1, 3)) for _ in shape]
        return OpCase([helper.make_node("Tile", ["x", "reps"], ["y"])], {"x": x}, ["y"], initializers={"reps": np.array(reps, np.int64)})
    if kind == "Trilu":
        if len(shape) < 2:
            x = _f32(rng, (3, 4))
        attrs = {"upper": draw(st.integers(0, 1))}
        if draw(st.booleans()):
            return OpCase([helper.make_node("Trilu", ["x", "k"], ["y"], **attrs)], {"x": x}, ["y"], opset=14, initializers={"k": _i64(draw(st.integers(-3, 3)))})
        return OpCase([helper.make_node("Trilu", ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=14)
    if kind == "Pad":
        mode = draw(st.sampled_from(["constant", "reflect", "edge"]), label="mode")
        rank = len(shape)
        axes = sorted(draw(st.lists(st.integers(0, rank - 1), min_size=1, unique=True)))
        limit = lambda a: shape[a] - 1 if mode == "reflect" else 2  # noqa: E731 - reflect pads < dim
        pads = [draw(st.integers(0, limit(a))) for a in axes] + [draw(st.integers(0, limit(a))) for a in axes]
        inits = {"pads": np.array(pads, np.int64), "value": np.array(1.5, np.float32)}
        inputs = ["x", "pads", "value" if mode == "constant" else "", "axes"]
        inits["axes"] = np.array(axes, np.int64)
        return OpCase([helper.make_node("Pad", inputs, ["y"], mode=mode)], {"x": x}, ["y"], opset=18, initializers={k: v for k, v in inits.items() if k in inputs})
    if kind == "Shape":
        attrs = {}
        if draw(st.booleans()):
            attrs["start"] = draw(st.integers(-5, 5))
        if draw(st.booleans()):
            attrs["end"] = draw(st.integers(-5, 5))
        return OpCase([helper.make_node("Shape", ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=15)
    return OpCase([helper.make_node("Size", ["x"], ["y"])], {"x": x}, ["y"])


# -- indexing ---------------------------------------------------------------------------------


@st.composite
def gather_cases(draw):
    kind = draw(st.sampled_from(["Gather", "GatherElements", "GatherND"]), label="op")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    x = _f32(rng, shape)
    axis = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    dim = shape[axis]
    if kind == "Gather":
        idx_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
        idx = rng.integers(-dim, dim, idx_shape).astype(np.int64)
        return OpCase([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], {"x": x}, ["y"], initializers={"i": idx})
    if kind == "GatherElements":
        idx_shape = [draw(st.integers(1, d)) for d in shape]
        idx_shape[axis] = draw(st.integers(1, 4))
        idx = rng.integers(-dim, dim, idx_shape).astype(np.int64)
        return OpCase([helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)], {"x": x}, ["y"], initializers={"i": idx})
    batch_dims = draw(st.integers(0, min(1, len(shape) - 1)), label="batch_dims")
    k = draw(st.integers(1, len(shape) - batch_dims), label="index depth")
    rows = draw(st.integers(1, 3))
    coords = [rng.integers(0, shape[batch_dims + n], (*shape[:batch_dims], rows)) for n in range(k)]
    idx = np.stack(coords, axis=-1).astype(np.int64)
    return OpCase([helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)], {"x": x}, ["y"], opset=13, initializers={"i": idx})


@st.composite
def scatter_cases(draw):
    kind = draw(st.sampled_from(["ScatterElements", "ScatterND"]), label="op")
    reduction = draw(st.sampled_from(["none", "add", "mul", "max", "min"]), label="reduction")
    shape = draw(shapes)
    rng = _rng(draw(seeds))
    x = _f32(rng, shape)
    if kind == "ScatterElements":
        axis = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
        # Unique targets along the axis (duplicates are undefined for reduction "none"):
        # a permutation prefix per position.
        n = draw(st.integers(1, shape[axis]))
        upd_shape = list(shape)
        upd_shape[axis] = n
        perm = np.argsort(rng.random(upd_shape[:axis % len(shape)] + [shape[axis]] + upd_shape[axis % len(shape) + 1 :]), axis=axis)
        idx = np.take(perm, np.arange(n), axis=axis).astype(np.int64)
        idx = np.where(rng.random(idx.shape) < 0.3, idx - shape[axis], idx)  # negative indices
        upd = _f32(rng, upd_shape)
        return OpCase([helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=axis, reduction=reduction)], {"x": x, "u": upd}, ["y"], opset=18, initializers={"i": idx})
    k = draw(st.integers(1, len(shape)), label="index depth")
    cells = np.array(list(np.ndindex(*shape[:k])))
    rows = draw(st.integers(1, len(cells)))
    idx = cells[rng.permutation(len(cells))[:rows]].astype(np.int64)
    upd = _f32(rng, (rows, *shape[k:]))
    return OpCase([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction=reduction)], {"x": x, "u": upd}, ["y"], opset=18, initializers={"i": idx})


@st.composite
def generator_cases(draw):
    """Range (int and float) and ConstantOfShape (float, int and default values)."""
    kind = draw(st.sampled_from(["Range", "ConstantOfShape"]), label="op")
    if kind == "Range":
        if draw(st.booleans(), label="float"):
            start, limit, delta = (np.array(draw(st.sampled_from(v)), np.float32) for v in ([0.0, -1.5, 2.25], [5.0, -3.0, 7.5], [0.5, -0.75, 1.0]))
        else:
            start, limit, delta = (np.array(draw(st.integers(*r)), np.int64) for r in ((-5, 5), (-8, 8), (1, 3)))
            if draw(st.booleans()):
                delta = -delta
        return OpCase([helper.make_node("Range", ["a", "b", "c"], ["y"])], {"a": start, "b": limit, "c": delta}, ["y"], opset=13)
    dims = np.array(draw(st.lists(st.integers(0, 3), max_size=3)), np.int64)
    value = draw(st.sampled_from([None, np.array([1.5], np.float32), np.array([7], np.int64), np.array([2.0], np.float64)]))
    attrs = {} if value is None else {"value": numpy_helper.from_array(value)}
    return OpCase([helper.make_node("ConstantOfShape", ["s"], ["y"], **attrs)], {"s": dims}, ["y"])


@st.composite
def one_hot_cases(draw):
    """OneHot (MoE expert masks): any axis, negative and out-of-range indices, int or float
    values (onnxruntime: int64 indices of rank >= 1)."""
    shape = draw(shapes)
    depth = draw(st.integers(1, 5), label="depth")
    rng = _rng(draw(seeds))
    idx = rng.integers(-depth - 1, depth + 1, shape).astype(np.int64)
    axis = draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    values = np.array([0, 1], np.int64) if draw(st.booleans(), label="int values") else np.array([-0.5, 2.0], np.float32)
    node = helper.make_node("OneHot", ["i", "depth", "values"], ["y"], axis=axis)
    return OpCase([node], {"i": idx}, ["y"], initializers={"depth": _i64(depth), "values": values}, opset=11, ulps=0)


# -- linear algebra, convolution --------------------------------------------------------------


@st.composite
def matmul_cases(draw):
    kind = draw(st.sampled_from(["MatMul", "Gemm", "Einsum"]), label="op")
    rng = _rng(draw(seeds))
    if kind == "MatMul":
        m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
        batch_a, batch_b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
        a_shape = (*batch_a, m, k) if draw(st.integers(0, 4)) else (k,)
        b_shape = (*batch_b, k, n) if draw(st.integers(0, 4)) else (k,)
        return OpCase([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": _f32(rng, a_shape), "b": _f32(rng, b_shape)}, ["y"], ulps=8 + 2 * k)
    if kind == "Gemm":
        m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
        ta, tb = draw(st.integers(0, 1)), draw(st.integers(0, 1))
        feeds = {"a": _f32(rng, (k, m) if ta else (m, k)), "b": _f32(rng, (n, k) if tb else (k, n))}
        c_shape = draw(st.sampled_from([None, (), (1,), (n,), (m, 1), (1, n), (m, n)]))
        if c_shape is not None:
            feeds["c"] = _f32(rng, c_shape)
        attrs = dict(transA=ta, transB=tb, alpha=draw(st.sampled_from([1.0, 0.5, -2.0])), beta=draw(st.sampled_from([1.0, 0.25])))
        return OpCase([helper.make_node("Gemm", list(feeds), ["y"], **attrs)], feeds, ["y"], opset=13, ulps=8 + 2 * k)
    equation, shapes_ = draw(st.sampled_from([
        ("bhsd,bhtd->bhst", [(1, 2, 3, 4), (1, 2, 5, 4)]),
        ("ij,jk->ik", [(3, 4), (4, 2)]),
        ("bij->bji", [(2, 3, 4)]),
        ("i,i->", [(5,), (5,)]),
        ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 5, 4, 2)]),
    ]))
    feeds = {f"x{k}": _f32(rng, s) for k, s in enumerate(shapes_)}
    return OpCase([helper.make_node("Einsum", list(feeds), ["y"], equation=equation)], feeds, ["y"], opset=12, ulps=16)


@st.composite
def conv_cases(draw):
    """Conv in 1-D and 2-D: groups, strides, dilations, explicit or auto pads, bias."""
    nd = draw(st.integers(1, 2), label="spatial dims")
    group = draw(st.sampled_from([1, 2]), label="group")
    c, m = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    strides = [draw(st.integers(1, 2)) for _ in range(nd)]
    dilations = [draw(st.integers(1, 2)) for _ in range(nd)]
    size = [draw(st.integers(d * (k - 1) + 1, 7)) for d, k in zip(dilations, kernel)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), label="auto_pad")
    attrs = dict(group=group, strides=strides, dilations=dilations)
    if auto_pad == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad.startswith("SAME"):
            attrs["dilations"] = [1] * nd  # ORT computes SAME pads without dilation
    rng = _rng(draw(seeds))
    feeds = {"x": _f32(rng, (draw(st.integers(1, 2)), c, *size)), "w": _f32(rng, (m, c // group, *kernel))}
    if draw(st.booleans()):
        feeds["b"] = _f32(rng, (m,))
    taps = c // group * int(np.prod(kernel))
    return OpCase([helper.make_node("Conv", list(feeds), ["y"], **attrs)], feeds, ["y"], ulps=8 + 2 * taps)


# -- normalisation ------------------------------------------------------------------------------


@st.composite
def norm_cases(draw):
    kind = draw(st.sampled_from(["LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization"]), label="op")
    rng = _rng(draw(seeds))
    eps = draw(st.sampled_from([1e-5, 1e-2]))
    if kind in ("GroupNormalization", "InstanceNormalization"):
        groups = draw(st.integers(1, 3))
        c = groups * draw(st.integers(1, 2)) if kind == "GroupNormalization" else draw(st.integers(1, 4))
        spatial = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
        if kind == "InstanceNormalization" and int(np.prod(spatial)) == 1:
            # One element per instance: the exact result is the bias, but onnxruntime's variance
            # (E[x^2] - E[x]^2 in float32) cancels to a small non-zero value; not an oracle here.
            spatial = (2,)
        shape = (draw(st.integers(1, 2)), c, *spatial)
        feeds = {"x": _f32(rng, shape, 2.0, 1.0), "scale": _f32(rng, (c,)), "bias": _f32(rng, (c,))}
        attrs = {"epsilon": eps}
        opset = 17
        if kind == "GroupNormalization":
            attrs["num_groups"], opset = groups, 21
        return OpCase([helper.make_node(kind, list(feeds), ["y"], **attrs)], feeds, ["y"], opset=opset, ulps=32 + int(np.prod(shape[2:])) * c)
    shape = draw(shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = _f32(rng, shape, 2.0, 1.0)
    scale = _f32(rng, shape[axis % len(shape):])
    count = int(np.prod(scale.shape))
    if kind == "LayerNormalization":
        feeds = {"x": x, "scale": scale}
        if draw(st.booleans()):
            feeds["bias"] = _f32(rng, scale.shape)
        outs = ["y", "mean", "inv_std"]
        return OpCase([helper.make_node(kind, list(feeds), outs, axis=axis, epsilon=eps)], feeds, outs, ulps=16 + count)
    if kind == "RMSNormalization":
        return OpCase([helper.make_node(kind, ["x", "scale"], ["y"], axis=axis, epsilon=eps)], {"x": x, "scale": scale}, ["y"], opset=23, ulps=16 + count)
    # onnxruntime registers SimplifiedLayerNormalization (RMSNorm before opset 23) in the
    # ONNX domain; refimpl accepts it there and in com.microsoft.
    node = helper.make_node(kind, ["x", "scale"], ["y"], axis=axis, epsilon=eps)
    return OpCase([node], {"x": x, "scale": scale}, ["y"], ulps=16 + count)


# -- resampling ----------------------------------------------------------------------------------

_COORD_MODES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize"]


@st.composite
def resize_cases(draw):
    """Resize: nearest (every nearest_mode) / linear / cubic, every coordinate transformation
    mode, scales or sizes (opset 18-19: on chosen axes, with an aspect-ratio policy), with empty
    tensors for the omitted inputs, as TorchScript writes them, or with omitted names, as dynamo
    does.

    onnxruntime resamples linear and cubic on the last two axes of a 4-D tensor only (and
    linear also 2-D/3-D); nearest on any axis."""
    mode = draw(st.sampled_from(["nearest", "linear", "cubic"]), label="mode")
    opset = draw(st.sampled_from([11, 13, 18, 19]), label="opset")
    coord = draw(st.sampled_from(_COORD_MODES[1:] if opset < 19 else _COORD_MODES), label="coordinate mode")
    if opset < 19 and coord == "half_pixel_symmetric":
        coord = "half_pixel"
    rng = _rng(draw(seeds))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    spatial = [draw(st.integers(1, 6)) for _ in range(2)]
    if mode == "nearest" and draw(st.booleans(), label="3-D"):
        spatial = spatial[:1]
    shape = [n, c, *spatial]
    x = _f32(rng, shape)
    resized = list(range(2, len(shape)))
    if mode == "nearest" and len(shape) == 3 and draw(st.booleans(), label="resize C too"):
        resized = [1, 2]
    use_sizes = coord != "tf_crop_and_resize" and draw(st.booleans(), label="sizes")
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]), label="nearest mode")
    if mode == "cubic":
        attrs["cubic_coeff_a"] = draw(st.sampled_from([-0.75, -0.5]))
        attrs["exclude_outside"] = int(draw(st.booleans(), label="exclude outside"))
    axes = list(range(len(shape)))
    if opset >= 18 and draw(st.booleans(), label="axes"):
        axes = resized
    inits: dict[str, np.ndarray] = {}
    if use_sizes:
        sizes = [shape[ax] if ax not in resized else draw(st.integers(1, 9), label=f"size {ax}") for ax in axes]
        inits["sizes"] = np.array(sizes, np.int64)
        if opset >= 18 and axes == resized and draw(st.booleans(), label="aspect policy"):
            attrs["keep_aspect_ratio_policy"] = draw(st.sampled_from(["not_larger", "not_smaller"]))
    else:
        # Scales of exact binary fractions (onnxruntime computes coordinates in float32).
        inits["scales"] = np.array([1.0 if ax not in resized else draw(st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0]), label=f"scale {ax}") for ax in axes], np.float32)
    if coord == "tf_crop_and_resize":
        lo = [0.0 if ax not in resized else draw(st.sampled_from([0.0, 0.25, -0.25])) for ax in axes]
        hi = [1.0 if ax not in resized else draw(st.sampled_from([1.0, 0.75, 1.25])) for ax in axes]
        inits["roi"] = np.array(lo + hi, np.float32)
        attrs["extrapolation_value"] = draw(st.sampled_from([0.0, -2.0]))
    if opset >= 18 and axes != list(range(len(shape))):
        attrs["axes"] = axes
    empty = np.zeros((0,), np.float32)
    if opset == 11 or draw(st.booleans(), label="empty tensors for omitted inputs"):  # required inputs in Resize-11
        inits.setdefault("roi", empty)
        if use_sizes:
            inits["scales"] = empty
        inputs = ["x", "roi", "scales"] + (["sizes"] if use_sizes else [])
    else:
        inputs = ["x", "roi" if "roi" in inits else "", "" if use_sizes else "scales"] + (["sizes"] if use_sizes else [])
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    return OpCase([node], {"x": x}, ["y"], opset=opset, initializers=inits, ulps=64)


# -- opset-23 attention ops -----------------------------------------------------------------------


@st.composite
def attention_op_cases(draw):
    """Attention (opset 23): 3-D or 4-D, GQA, masks, is_causal, past KV with present
    outputs, scale, softcap, qk_matmul_output_mode."""
    kv = draw(st.integers(1, 3), label="kv_heads")
    h = kv * draw(st.integers(1, 3), label="group")
    b, s, past = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(0, 3))
    d, dv = draw(st.sampled_from([2, 4, 8])), draw(st.sampled_from([2, 4]))
    t = s + past
    three_d = draw(st.booleans(), label="3-D")
    rng = _rng(draw(seeds))
    if three_d:
        dv = d  # the 3-D form infers the value head size from kv_num_heads; keep it simple
        feeds = {"q": _f32(rng, (b, s, h * d), 1.5), "k": _f32(rng, (b, s, kv * d)), "v": _f32(rng, (b, s, kv * dv))}
        attrs = {"q_num_heads": h, "kv_num_heads": kv}
    else:
        feeds = {"q": _f32(rng, (b, h, s, d), 1.5), "k": _f32(rng, (b, kv, s, d)), "v": _f32(rng, (b, kv, s, dv))}
        attrs = {}
    inputs = ["q", "k", "v", "", "", ""]
    mask = draw(st.sampled_from(["none", "bool", "float", "float_inf"]), label="mask")
    if mask != "none":
        mshape = draw(st.sampled_from([(s, t), (1, 1, s, t), (b, 1, s, t), (b, h, s, t), (h, s, t)]))
        if mask == "bool":
            m = rng.random(mshape) < 0.7
        else:
            m = _f32(rng, mshape, 2.0)
            if mask == "float_inf":
                m = np.where(rng.random(mshape) < 0.3, np.float32(-np.inf), m)
        feeds["m"], inputs[3] = m, "m"
    if draw(st.booleans(), label="causal"):
        attrs["is_causal"] = 1
    if draw(st.booleans(), label="explicit scale"):
        attrs["scale"] = draw(st.sampled_from([0.1, 0.5, 1.0]))
    softcap = draw(st.sampled_from([0.0, 0.0, 3.0]))
    if softcap:
        attrs["softcap"] = softcap
    outputs = ["y"]
    if past:
        feeds["pk"], feeds["pv"] = _f32(rng, (b, kv, past, d)), _f32(rng, (b, kv, past, dv))
        inputs[4:6] = ["pk", "pv"]
        outputs += ["present_k", "present_v"]
    mode = draw(st.sampled_from([None, 0, 1, 2, 3]), label="qk_matmul_output_mode")
    if mode is not None:
        attrs["qk_matmul_output_mode"] = mode
        outputs = (outputs + ["", ""])[:3] + ["qk"]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("Attention", inputs, outputs, **attrs)
    return OpCase([node], feeds, [o for o in outputs if o], opset=23, ulps=32, magnitude=None)


@st.composite
def rotary_op_cases(draw):
    """RotaryEmbedding (opset 23): 3-D (num_heads) or 4-D input, interleaved or not,
    partial rotary_embedding_dim, position_ids into a cache or per-token cos/sin."""
    b, s, h = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    d = draw(st.sampled_from([2, 4, 8]))
    rot = draw(st.sampled_from(sorted({d, max(2, d // 2)})), label="rotary dim")
    three_d = draw(st.booleans(), label="3-D")
    rng = _rng(draw(seeds))
    x = _f32(rng, (b, s, h * d) if three_d else (b, h, s, d))
    attrs = {"interleaved": draw(st.integers(0, 1))}
    if three_d:
        attrs["num_heads"] = h
    if rot != d:
        attrs["rotary_embedding_dim"] = rot
    if draw(st.booleans(), label="position ids"):
        angles = rng.random((12, rot // 2)) * 6
        feeds = {"x": x, "cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32), "pos": rng.integers(0, 12, (b, s)).astype(np.int64)}
    else:
        angles = rng.random((b, s, rot // 2)) * 6
        feeds = {"x": x, "cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32)}
    return OpCase([helper.make_node("RotaryEmbedding", list(feeds), ["y"], **attrs)], feeds, ["y"], opset=23, ulps=4, magnitude=None)
