"""Elementwise ops: arithmetic, math functions, comparisons and logic, Where, Clip, Cast.

numpy broadcasting is ONNX multidirectional broadcasting. Math functions follow IEEE and
numpy (overflow to inf, NaN in gives NaN out); the interpreter silences numpy's floating
point warnings because they are ONNX semantics, not errors.
"""

from __future__ import annotations

import numpy as np
import onnx

from refimpl import functional as F
from refimpl.ops.registry import REGISTRY, Ctx, op, optional


def _unary(fn):
    return lambda ctx, i, a: [np.asarray(fn(i[0]))]


def _binary(fn):
    return lambda ctx, i, a: [np.asarray(fn(i[0], i[1]))]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return np.asarray(1, x.dtype) / x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    one = np.ones((), x.dtype)
    return one / (one + np.exp(-x))


for _name, _fn in {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Tanh": np.tanh, "Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Floor": np.floor, "Ceil": np.ceil,
    # np.round rounds half to even, as ONNX Round.
    "Round": np.round, "Sign": np.sign, "Relu": _relu, "Reciprocal": _reciprocal, "Sigmoid": _sigmoid,
    "Erf": F.erf, "Softsign": lambda x: x / (1 + np.abs(x)), "Not": np.logical_not,
    "IsNaN": np.isnan, "BitwiseNot": np.invert,
}.items():
    REGISTRY[("", _name)] = _unary(_fn)

for _name, _fn in {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
    "Xor": np.logical_xor, "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
}.items():
    REGISTRY[("", _name)] = _binary(_fn)


@op("Div")
def _div(ctx, i, a):
    x, y = i
    if np.issubdtype(x.dtype, np.integer):
        # Integer division truncates toward zero (C semantics), not numpy's floor.
        q = np.floor_divide(x, y)
        return [q + ((np.remainder(x, y) != 0) & ((x < 0) != (y < 0))).astype(q.dtype)]
    return [np.divide(x, y)]


@op("Pow")
def _pow(ctx, i, a):
    x, y = i
    # The result has the base's type whatever the exponent's type.
    if np.issubdtype(x.dtype, np.floating):
        return [np.power(x, y.astype(x.dtype, copy=False))]
    return [np.power(x, y).astype(x.dtype)]


@op("Mod")
def _mod(ctx, i, a):
    # fmod=0: the result takes the divisor's sign (Python/numpy mod); fmod=1: the dividend's.
    return [np.fmod(i[0], i[1]) if a.get("fmod", 0) else np.mod(i[0], i[1])]


@op("Gelu")
def _gelu(ctx, i, a):
    return [F.gelu(i[0], approximate=a.get("approximate", "none"))]


@op("Softplus")
def _softplus(ctx, i, a):
    return [np.logaddexp(np.zeros((), i[0].dtype), i[0])]


@op("LeakyRelu")
def _leaky_relu(ctx, i, a):
    x = i[0]
    return [np.where(x >= 0, x, x * np.asarray(a.get("alpha", 0.01), x.dtype))]


@op("Elu")
def _elu(ctx, i, a):
    x = i[0]
    return [np.where(x >= 0, x, np.asarray(a.get("alpha", 1.0), x.dtype) * np.expm1(x))]


@op("HardSigmoid")
def _hard_sigmoid(ctx, i, a):
    x = i[0]
    y = np.asarray(a.get("alpha", 0.2), x.dtype) * x + np.asarray(a.get("beta", 0.5), x.dtype)
    return [np.clip(y, np.zeros((), x.dtype), np.ones((), x.dtype))]


@op("PRelu")
def _prelu(ctx, i, a):
    x, slope = i
    return [np.where(x >= 0, x, x * slope)]


@op("IsInf")
def _isinf(ctx, i, a):
    x = i[0]
    positive = np.isposinf(x) if a.get("detect_positive", 1) else np.zeros(x.shape, bool)
    negative = np.isneginf(x) if a.get("detect_negative", 1) else np.zeros(x.shape, bool)
    return [positive | negative]


def _variadic(fn, *, mean: bool = False):
    def adapter(ctx, i, a):
        present = [x for x in i if x is not None]
        out = present[0]
        for x in present[1:]:
            out = fn(out, x)
        if mean:
            out = out / np.asarray(len(present), out.dtype)
        return [np.asarray(out)]

    return adapter


REGISTRY[("", "Max")] = _variadic(np.maximum)
REGISTRY[("", "Min")] = _variadic(np.minimum)
REGISTRY[("", "Sum")] = _variadic(np.add)
REGISTRY[("", "Mean")] = _variadic(np.add, mean=True)


@op("Where")
def _where(ctx, i, a):
    return [np.where(i[0], i[1], i[2])]


@op("Clip")
def _clip(ctx, i, a):
    x = i[0]
    if ctx.opset < 11:  # bounds were attributes
        lo, hi = a.get("min"), a.get("max")
    else:
        lo, hi = optional(i, 1), optional(i, 2)
    if lo is not None:
        x = np.maximum(x, np.asarray(lo, x.dtype))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi, x.dtype))
    return [x]


def target_dtype(ctx: Ctx, onnx_type: int) -> np.dtype:
    """The numpy dtype a tensor of ONNX type ``onnx_type`` is computed in: every float
    type (float16, bfloat16, float32, float64) maps to the compute dtype."""
    np_type = onnx.helper.tensor_dtype_to_np_dtype(onnx_type)
    if np.issubdtype(np_type, np.floating) or onnx_type == onnx.TensorProto.BFLOAT16:
        return np.dtype(ctx.float_dtype)
    return np.dtype(np_type)


@op("Cast")
def _cast(ctx, i, a):
    # Casting to float16 does not round to float16: the interpreter computes every float
    # type in its compute dtype (see the interpreter's docstring). Float to integer
    # truncates toward zero, as C casts and numpy do.
    return [i[0].astype(target_dtype(ctx, a["to"]), copy=False)]


@op("CastLike")
def _cast_like(ctx, i, a):
    return [i[0].astype(i[1].dtype, copy=False)]
