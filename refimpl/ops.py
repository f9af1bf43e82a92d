"""ONNX operators as small numpy adapters over refimpl.functional.

Each adapter takes the node context (opset, compute dtype), the input arrays (None for
omitted optional inputs) and the node's attributes, and returns the output arrays. The
registry maps (domain, op_type) to an adapter. Float tensors are computed in the
interpreter's dtype (float32 or float64); integer and boolean tensors keep their types.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from refimpl import functional as F


@dataclass(frozen=True)
class Ctx:
    opset: int
    float_dtype: type
    node_name: str
    n_outputs: int = 1


Adapter = Callable[[Ctx, list, dict], list]
REGISTRY: dict[tuple[str, str], Adapter] = {}


def op(*names: str, domain: str = ""):
    def register(fn: Adapter) -> Adapter:
        for n in names:
            REGISTRY[(domain, n)] = fn
        return fn

    return register


def _f(ctx: Ctx, x):
    """Float arrays in the compute dtype; others untouched."""
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) and x.dtype != ctx.float_dtype:
        return x.astype(ctx.float_dtype)
    return x


def _axes(inputs: list, attrs: dict, index: int = 1):
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return None


# -- elementwise ---------------------------------------------------------------------
def _binary(fn):
    return lambda ctx, i, a: [np.asarray(fn(i[0], i[1]))]


def _unary(fn):
    return lambda ctx, i, a: [np.asarray(fn(i[0]))]


for _name, _fn in {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Less": np.less,
    "LessOrEqual": np.less_equal, "Greater": np.greater, "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}.items():
    REGISTRY[("", _name)] = _binary(_fn)

for _name, _fn in {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Tanh": np.tanh,
    "Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)), "Sin": np.sin, "Cos": np.cos, "Floor": np.floor,
    "Ceil": np.ceil, "Round": np.round, "Sign": np.sign, "Not": np.logical_not, "IsNaN": np.isnan,
    "Reciprocal": lambda x: np.asarray(1, x.dtype) / x, "Identity": lambda x: x, "BitwiseNot": np.invert,
}.items():
    REGISTRY[("", _name)] = _unary(_fn)

_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    return _ERF(x).astype(x.dtype)


@op("Erf")
def _op_erf(ctx, i, a):
    return [_erf(i[0])]


@op("Div")
def _div(ctx, i, a):
    x, y = i
    if np.issubdtype(np.result_type(x, y), np.integer):
        return [np.trunc(np.true_divide(x, y)).astype(np.result_type(x, y))]
    return [np.divide(x, y)]


@op("Pow")
def _pow(ctx, i, a):
    x, y = i
    return [np.power(x, y.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else y).astype(x.dtype)]


@op("Mod")
def _mod(ctx, i, a):
    return [np.fmod(i[0], i[1]) if a.get("fmod", 0) else np.mod(i[0], i[1])]


@op("Sigmoid")
def _sigmoid(ctx, i, a):
    x = i[0]
    return [np.asarray(1, x.dtype) / (np.asarray(1, x.dtype) + np.exp(-x))]


@op("Gelu")
def _gelu(ctx, i, a):
    x = i[0]
    if a.get("approximate", "none") == "tanh":
        c = np.asarray(math.sqrt(2 / math.pi), x.dtype)
        return [np.asarray(0.5, x.dtype) * x * (1 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x**3)))]
    return [np.asarray(0.5, x.dtype) * x * (1 + _erf(x / np.asarray(math.sqrt(2), x.dtype)))]


@op("Softplus")
def _softplus(ctx, i, a):
    return [np.logaddexp(0, i[0]).astype(i[0].dtype)]


@op("LeakyRelu")
def _leaky(ctx, i, a):
    x = i[0]
    return [np.where(x >= 0, x, x * np.asarray(a.get("alpha", 0.01), x.dtype))]


@op("Elu")
def _elu(ctx, i, a):
    x = i[0]
    return [np.where(x >= 0, x, np.asarray(a.get("alpha", 1.0), x.dtype) * (np.exp(x) - 1))]


@op("HardSigmoid")
def _hard_sigmoid(ctx, i, a):
    x = i[0]
    return [np.clip(np.asarray(a.get("alpha", 0.2), x.dtype) * x + np.asarray(a.get("beta", 0.5), x.dtype), 0, 1).astype(x.dtype)]


@op("PRelu")
def _prelu(ctx, i, a):
    return [np.where(i[0] >= 0, i[0], i[0] * i[1])]


@op("IsInf")
def _isinf(ctx, i, a):
    x = i[0]
    pos, neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    return [(np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(neg))]


def _variadic_for(name: str) -> Adapter:
    fn = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[name]

    def adapter(ctx, i, a):
        out = i[0]
        for x in i[1:]:
            out = fn(out, x)
        if name == "Mean":
            out = out / np.asarray(len(i), out.dtype)
        return [np.asarray(out)]

    return adapter


for _name in ("Max", "Min", "Sum", "Mean"):
    REGISTRY[("", _name)] = _variadic_for(_name)


@op("Where")
def _where(ctx, i, a):
    return [np.where(i[0], i[1], i[2])]


@op("Clip")
def _clip(ctx, i, a):
    x = i[0]
    lo = a.get("min") if ctx.opset < 11 else (i[1] if len(i) > 1 else None)
    hi = a.get("max") if ctx.opset < 11 else (i[2] if len(i) > 2 else None)
    if lo is not None:
        x = np.maximum(x, np.asarray(lo, x.dtype))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi, x.dtype))
    return [x]


@op("Dropout")
def _dropout(ctx, i, a):
    return [i[0], np.ones(i[0].shape, dtype=np.bool_)]


def _target_dtype(ctx: Ctx, onnx_type: int):
    np_type = onnx.helper.tensor_dtype_to_np_dtype(onnx_type)
    return ctx.float_dtype if np.issubdtype(np_type, np.floating) else np_type


@op("Cast")
def _cast(ctx, i, a):
    x = i[0]
    target = _target_dtype(ctx, a["to"])
    if np.issubdtype(np.dtype(target), np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return [x.astype(target)]


@op("CastLike")
def _cast_like(ctx, i, a):
    target = i[1].dtype
    return [i[0].astype(ctx.float_dtype if np.issubdtype(target, np.floating) else target)]


# -- linear algebra ------------------------------------------------------------------
@op("MatMul")
def _matmul(ctx, i, a):
    return [np.matmul(i[0], i[1])]


@op("Gemm")
def _gemm(ctx, i, a):
    c = i[2] if len(i) > 2 else None
    return [F.linear(i[0], i[1], c, trans_a=bool(a.get("transA", 0)), trans_b=bool(a.get("transB", 0)), alpha=a.get("alpha", 1.0), beta=a.get("beta", 1.0))]


@op("Conv")
def _conv(ctx, i, a):
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    nd = x.ndim - 2
    if nd == 1:
        x, w = x[:, :, None, :], w[:, :, None, :]
    elif nd != 2:
        raise NotImplementedError("Conv with other than 1 or 2 spatial dimensions")
    kshape = w.shape[2:]
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    auto_pad = a.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if nd == 1:
        strides, dil, pads = [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for k in range(2):
            size = x.shape[2 + k]
            out = -(-size // strides[k])
            total = max(0, (out - 1) * strides[k] + (kshape[k] - 1) * dil[k] + 1 - size)
            first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads.append((first, total - first))
        pads = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    y = F.conv2d(x, w, b, strides=tuple(strides), pads=tuple(pads), dilations=tuple(dil), group=a.get("group", 1))
    return [y[:, :, 0, :] if nd == 1 else y]


@op("Einsum")
def _einsum(ctx, i, a):
    eq = a["equation"]
    return [np.einsum(eq.decode() if isinstance(eq, bytes) else eq, *i)]


# -- softmax and normalisation --------------------------------------------------------
def _softmax_for(log: bool) -> Adapter:
    def adapter(ctx, i, a):
        x = i[0]
        if ctx.opset < 13:
            axis = a.get("axis", 1) % x.ndim
            flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
            y = F.softmax(flat, axis=-1).reshape(x.shape)
        else:
            y = F.softmax(x, axis=a.get("axis", -1))
        return [np.log(y) if log else y]

    return adapter


REGISTRY[("", "Softmax")] = _softmax_for(False)
REGISTRY[("", "LogSoftmax")] = _softmax_for(True)


@op("LayerNormalization")
def _layer_norm(ctx, i, a):
    x = i[0]
    axis = a.get("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    eps = np.asarray(a.get("epsilon", 1e-5), x.dtype)
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    y = (x - mean) * inv * i[1]
    if len(i) > 2 and i[2] is not None:
        y = y + i[2]
    return [y, mean, inv]


@op("RMSNormalization")
def _rms_norm(ctx, i, a):
    return [F.rms_norm(i[0], i[1], eps=a.get("epsilon", 1e-5), axis=a.get("axis", -1))]


@op("SimplifiedLayerNormalization", domain="com.microsoft")
def _simplified_ln(ctx, i, a):
    return [F.rms_norm(i[0], i[1], eps=a.get("epsilon", 1e-5), axis=a.get("axis", -1))]


@op("GroupNormalization")
def _group_norm(ctx, i, a):
    x, scale, bias = i
    g = a["num_groups"]
    n, c = x.shape[:2]
    xg = x.reshape(n, g, -1)
    mean = xg.mean(axis=-1, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=-1, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + np.asarray(a.get("epsilon", 1e-5), x.dtype))).reshape(x.shape)
    shape = [1, c] + [1] * (x.ndim - 2)
    if scale.shape[0] == g and g != c:  # opset 18 per-group scale
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    return [y * scale.reshape(shape) + bias.reshape(shape)]


@op("InstanceNormalization")
def _instance_norm(ctx, i, a):
    x, scale, bias = i
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + np.asarray(a.get("epsilon", 1e-5), x.dtype))
    return [y * scale.reshape(shape) + bias.reshape(shape)]


# -- reductions ----------------------------------------------------------------------
def _reduce_for(fn):
    def adapter(ctx, i, a):
        x = i[0]
        axes = _axes(i, a)
        keep = bool(a.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        return [np.asarray(fn(x, axis=tuple(ax % x.ndim for ax in axes), keepdims=keep))]

    return adapter


for _name, _fn in {
    "ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min, "ReduceProd": np.prod,
    "ReduceSumSquare": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "ReduceL2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
}.items():
    REGISTRY[("", _name)] = _reduce_for(_fn)


@op("ArgMax")
def _argmax(ctx, i, a):
    axis = a.get("axis", 0)
    y = np.argmax(i[0], axis=axis)
    if a.get("keepdims", 1):
        y = np.expand_dims(y, axis)
    return [y.astype(np.int64)]


@op("CumSum")
def _cumsum(ctx, i, a):
    x = i[0]
    axis = int(np.asarray(i[1]).reshape(-1)[0])
    if a.get("reverse", 0):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    if a.get("exclusive", 0):
        y = y - x
    if a.get("reverse", 0):
        y = np.flip(y, axis)
    return [y]


# -- shapes and layout ---------------------------------------------------------------
@op("Reshape")
def _reshape(ctx, i, a):
    x, shape = i[0], [int(s) for s in np.asarray(i[1]).reshape(-1)]
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def _flatten(ctx, i, a):
    x = i[0]
    axis = a.get("axis", 1) % (x.ndim + 1) if x.ndim else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@op("Transpose")
def _transpose(ctx, i, a):
    perm = a.get("perm")
    return [np.transpose(i[0], perm)]


@op("Squeeze")
def _squeeze(ctx, i, a):
    axes = _axes(i, a)
    x = i[0]
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(ax % x.ndim for ax in axes))]


@op("Unsqueeze")
def _unsqueeze(ctx, i, a):
    x = i[0]
    axes = sorted(ax % (x.ndim + len(_axes(i, a))) for ax in _axes(i, a))
    for ax in axes:
        x = np.expand_dims(x, ax)
    return [x]


@op("Concat")
def _concat(ctx, i, a):
    return [np.concatenate([x for x in i if x is not None], axis=a["axis"])]


@op("Split")
def _split(ctx, i, a):
    x = i[0]
    axis = a.get("axis", 0) % x.ndim
    sizes = a.get("split")
    if sizes is None and len(i) > 1 and i[1] is not None:
        sizes = [int(s) for s in np.asarray(i[1]).reshape(-1)]
    if sizes is None:
        n = a.get("num_outputs") or ctx.n_outputs
        chunk = -(-x.shape[axis] // n)
        sizes = [min(chunk, x.shape[axis] - k * chunk) for k in range(n)]
    bounds = np.cumsum(sizes)[:-1]
    return list(np.split(x, bounds, axis=axis))


@op("Slice")
def _slice(ctx, i, a):
    x = i[0]
    if ctx.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in np.asarray(i[1]).reshape(-1)]
        ends = [int(v) for v in np.asarray(i[2]).reshape(-1)]
        axes = [int(v) for v in np.asarray(i[3]).reshape(-1)] if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = [int(v) for v in np.asarray(i[4]).reshape(-1)] if len(i) > 4 and i[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % x.ndim
        dim = x.shape[ax]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        x = np.take(x, np.arange(s, e, st, dtype=np.int64), axis=ax)
    return [x]


@op("Gather")
def _gather(ctx, i, a):
    x, idx = i
    axis = a.get("axis", 0) % x.ndim
    idx = np.asarray(idx, dtype=np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take(x, idx, axis=axis)]


@op("GatherElements")
def _gather_elements(ctx, i, a):
    x, idx = i
    axis = a.get("axis", 0) % x.ndim
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take_along_axis(x, idx, axis=axis)]


@op("GatherND")
def _gather_nd(ctx, i, a):
    x, idx = i
    b = a.get("batch_dims", 0)
    if b:
        out = np.stack([_gather_nd(ctx, [xx, ii], {})[0] for xx, ii in zip(x, idx)])
        return [out]
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    picked = np.stack([x[tuple(row)] for row in flat]) if flat.shape[0] else np.empty((0,) + x.shape[k:], x.dtype)
    return [picked.reshape(idx.shape[:-1] + x.shape[k:])]


@op("ScatterElements")
def _scatter_elements(ctx, i, a):
    x, idx, upd = i
    axis = a.get("axis", 0) % x.ndim
    out = x.copy()
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    reduction = a.get("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    if reduction == "add":
        np.add.at(out, tuple(grid), upd)
    elif reduction == "mul":
        np.multiply.at(out, tuple(grid), upd)
    else:
        out[tuple(grid)] = upd
    return [out]


@op("ScatterND")
def _scatter_nd(ctx, i, a):
    x, idx, upd = i
    out = x.copy()
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    u = upd.reshape((flat.shape[0],) + x.shape[k:])
    for row, val in zip(flat, u):
        out[tuple(row)] = val
    return [out]


@op("Expand")
def _expand(ctx, i, a):
    x, shape = i[0], [int(s) for s in np.asarray(i[1]).reshape(-1)]
    target = np.broadcast_shapes(x.shape, tuple(shape))
    return [np.broadcast_to(x, target).copy()]


@op("Tile")
def _tile(ctx, i, a):
    return [np.tile(i[0], [int(r) for r in np.asarray(i[1]).reshape(-1)])]


@op("Shape")
def _shape(ctx, i, a):
    dims = i[0].shape
    start, end = a.get("start", 0), a.get("end")
    return [np.array(dims[start:end] if end is not None else dims[start:], dtype=np.int64)]


@op("Size")
def _size(ctx, i, a):
    return [np.array(i[0].size, dtype=np.int64)]


@op("ConstantOfShape")
def _constant_of_shape(ctx, i, a):
    value = a.get("value")
    arr = np.zeros(1, np.float32) if value is None else value
    arr = _f(ctx, arr)
    return [np.full([int(s) for s in np.asarray(i[0]).reshape(-1)], arr.reshape(-1)[0], dtype=arr.dtype)]


@op("Range")
def _range(ctx, i, a):
    start, limit, delta = (np.asarray(v).reshape(()) for v in i)
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


@op("Trilu")
def _trilu(ctx, i, a):
    k = int(np.asarray(i[1]).reshape(-1)[0]) if len(i) > 1 and i[1] is not None else 0
    fn = np.triu if a.get("upper", 1) else np.tril
    return [fn(i[0], k)]


@op("Pad")
def _pad(ctx, i, a):
    x = i[0]
    pads = [int(p) for p in np.asarray(i[1]).reshape(-1)] if ctx.opset >= 11 else a["pads"]
    value = i[2] if len(i) > 2 and i[2] is not None else np.zeros((), x.dtype)
    n = x.ndim
    width = [(pads[k], pads[k + n]) for k in range(n)]
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        return [np.pad(x, width, constant_values=np.asarray(value).reshape(-1)[0] if np.size(value) else 0)]
    return [np.pad(x, width, mode={"reflect": "reflect", "edge": "edge"}[mode])]


# -- attention and rotary embeddings (opset 23) --------------------------------------
@op("RotaryEmbedding")
def _rotary(ctx, i, a):
    x, cos, sin = i[0], i[1], i[2]
    pos = i[3] if len(i) > 3 else None
    shape = x.shape
    if x.ndim == 3:
        heads = a["num_heads"]
        x4 = x.reshape(shape[0], shape[1], heads, -1).transpose(0, 2, 1, 3)
    else:
        x4 = x
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    rot = a.get("rotary_embedding_dim", 0) or x4.shape[-1]
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, R/2]
    form = "interleaved" if a.get("interleaved", 0) else "half_split"
    y = F.rotary_embedding(x4, cos, sin, form=form, rotary_dim=rot)
    if x.ndim == 3:
        y = y.transpose(0, 2, 1, 3).reshape(shape)
    return [y]


@op("Attention")
def _attention(ctx, i, a):
    q, k, v = i[0], i[1], i[2]
    mask = i[3] if len(i) > 3 else None
    past_k = i[4] if len(i) > 4 else None
    past_v = i[5] if len(i) > 5 else None
    nonpad = i[6] if len(i) > 6 else None
    three_d = q.ndim == 3
    if three_d:
        hq, hkv = a["q_num_heads"], a["kv_num_heads"]
        q = q.reshape(q.shape[0], q.shape[1], hq, -1).transpose(0, 2, 1, 3)
        k = k.reshape(k.shape[0], k.shape[1], hkv, -1).transpose(0, 2, 1, 3)
        v = v.reshape(v.shape[0], v.shape[1], hkv, -1).transpose(0, 2, 1, 3)
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)
        v = np.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    s, t = q.shape[2], k.shape[2]
    dt = q.dtype
    scale = a.get("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    root = np.asarray(math.sqrt(scale), dt)
    h = q.shape[1]
    if k.shape[1] != h:
        k = np.repeat(k, h // k.shape[1], axis=1)
        v = np.repeat(v, h // v.shape[1], axis=1)
    scores = np.matmul(q * root, np.swapaxes(k, -1, -2) * root)
    softcap = a.get("softcap", 0.0)
    if softcap:
        scores = np.asarray(softcap, dt) * np.tanh(scores / np.asarray(softcap, dt))
    capped = scores
    bias = np.zeros((s, t), dtype=dt)
    neg = np.asarray(-np.inf, dt)
    if mask is not None:
        if mask.shape[-1] < t:
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, t - mask.shape[-1])]
            mask = np.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else -np.inf)
        bias = bias + (np.where(mask, np.zeros((), dt), neg) if mask.dtype == np.bool_ else mask.astype(dt))
    if a.get("is_causal", 0):
        offset = past_k.shape[2] if past_k is not None else (nonpad.reshape(-1, 1, 1, 1) - s if nonpad is not None else 0)
        ii = np.arange(s)[:, None]
        jj = np.arange(t)[None, :]
        bias = bias + np.where(jj <= ii + offset, np.zeros((), dt), neg)
    if nonpad is not None:
        bias = bias + np.where(np.arange(t)[None, :] < nonpad.reshape(-1, 1), np.zeros((), dt), neg).reshape(-1, 1, 1, t)
    scores = scores + bias
    probs = F.softmax(scores, axis=-1)
    fully_masked = np.isneginf(np.max(np.broadcast_to(bias, scores.shape), axis=-1, keepdims=True))
    probs = np.where(fully_masked, np.zeros((), dt), probs)
    y = np.matmul(probs, v)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    mode = a.get("qk_matmul_output_mode", 0)
    qk_out = {0: capped, 1: capped, 2: scores, 3: probs}.get(mode, capped)
    return [y, present_k, present_v, qk_out]
