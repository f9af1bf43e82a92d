"""Linear algebra, convolution, softmax, normalisations and reductions."""

from __future__ import annotations

import numpy as np

from refimpl import functional as F
from refimpl.ops.registry import REGISTRY, axes_of, op, optional


@op("MatMul")
def _matmul(ctx, i, a):
    x, w = i
    if ctx.float_dtype is np.float64 and x.ndim >= 2 and w.ndim >= 2 and np.issubdtype(x.dtype, np.floating):
        # One fixed summation order whatever the batch shape (BLAS picks kernels by shape):
        # a head computed alone then equals the same head computed in the batch, bit for
        # bit, so that simulated quantization of MHA and SHA can agree exactly.
        return [np.einsum("...ij,...jk->...ik", x, w, optimize=False)]
    return [np.matmul(x, w)]


@op("Gemm")
def _gemm(ctx, i, a):
    return [
        F.linear(
            i[0], i[1], optional(i, 2),
            trans_a=bool(a.get("transA", 0)), trans_b=bool(a.get("transB", 0)),
            alpha=a.get("alpha", 1.0), beta=a.get("beta", 1.0),
        )
    ]


def _same_pads(size: int, kernel: int, stride: int, dilation: int, mode: str) -> tuple[int, int]:
    """auto_pad SAME_*: output ceil(size / stride); the odd pixel goes last (UPPER) or first."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    first = total // 2 if mode == "SAME_UPPER" else total - total // 2
    return first, total - first


@op("Conv")
def _conv(ctx, i, a):
    x, w, b = i[0], i[1], optional(i, 2)
    nd = x.ndim - 2
    if nd not in (1, 2):
        raise NotImplementedError(f"Conv with {nd} spatial dimensions (1 and 2 are supported)")
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same_pads(x.shape[2 + k], w.shape[2 + k], strides[k], dilations[k], auto_pad) for k in range(nd)]
        pads = [p[0] for p in pairs] + [p[1] for p in pairs]
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    if nd == 1:  # as a 2-D convolution over a height of 1
        x, w = x[:, :, None, :], w[:, :, None, :]
        strides, dilations, pads = [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    y = F.conv2d(x, w, b, strides=tuple(strides), pads=tuple(pads), dilations=tuple(dilations), group=a.get("group", 1))
    return [y[:, :, 0, :] if nd == 1 else y]


@op("Einsum")
def _einsum(ctx, i, a):
    return [np.asarray(np.einsum(a["equation"], *i, optimize=True))]


def _flattened_2d(fn):
    """Softmax / LogSoftmax before opset 13: over all axes from ``axis`` on, as one row."""

    def adapter(ctx, i, a):
        x = i[0]
        if ctx.opset >= 13:
            return [fn(x, axis=a.get("axis", -1))]
        axis = a.get("axis", 1) % max(x.ndim, 1)
        rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return [fn(rows, axis=-1).reshape(x.shape)]

    return adapter


REGISTRY[("", "Softmax")] = _flattened_2d(F.softmax)
REGISTRY[("", "LogSoftmax")] = _flattened_2d(F.log_softmax)


def _moments(x: np.ndarray, axis: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 1/sqrt(var + eps) over ``axis`` and every later axis (kept as size 1)."""
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    return mean, 1 / np.sqrt(var + np.asarray(eps, x.dtype))


@op("LayerNormalization")
def _layer_norm(ctx, i, a):
    x, scale, bias = i[0], i[1], optional(i, 2)
    mean, inv_std = _moments(x, a.get("axis", -1), a.get("epsilon", 1e-5))
    y = (x - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std]


@op("RMSNormalization")
def _rms_norm(ctx, i, a):
    return [F.rms_norm(i[0], i[1], eps=a.get("epsilon", 1e-5), axis=a.get("axis", -1))]


@op("SimplifiedLayerNormalization")  # onnxruntime registers it in the ONNX domain
def _simplified_layer_norm(ctx, i, a):
    x = i[0]
    axes = tuple(range(a.get("axis", -1) % x.ndim, x.ndim))
    inv = 1 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + np.asarray(a.get("epsilon", 1e-5), x.dtype))
    return [x * inv * i[1], inv]


REGISTRY[("com.microsoft", "SimplifiedLayerNormalization")] = _simplified_layer_norm


@op("GroupNormalization")
def _group_norm(ctx, i, a):
    x, scale, bias = i
    groups = a["num_groups"]
    n, c = x.shape[:2]
    mean, inv_std = _moments(x.reshape(n, groups, -1), -1, a.get("epsilon", 1e-5))
    y = ((x.reshape(n, groups, -1) - mean) * inv_std).reshape(x.shape)
    if scale.shape[0] != c:  # opset 18: one scale and bias per group
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return [y * scale.reshape(shape) + bias.reshape(shape)]


@op("InstanceNormalization")
def _instance_norm(ctx, i, a):
    x, scale, bias = i
    n, c = x.shape[:2]
    mean, inv_std = _moments(x.reshape(n, c, -1), -1, a.get("epsilon", 1e-5))
    y = ((x.reshape(n, c, -1) - mean) * inv_std).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return [y * scale.reshape(shape) + bias.reshape(shape)]


def _reduce(fn):
    def adapter(ctx, i, a):
        x = i[0]
        axes = axes_of(i, a)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                # No axis is reduced, but the elementwise part still applies (SumSquare
                # squares, L1/L2 take magnitudes), as in onnx.reference and onnxruntime.
                return [np.asarray(fn(x, axis=(), keepdims=True))]
            axes = range(x.ndim)
        return [np.asarray(fn(x, axis=tuple(ax % x.ndim for ax in axes), keepdims=bool(a.get("keepdims", 1))))]

    return adapter


def _log_sum_exp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, np.zeros((), x.dtype))
    y = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axis)


for _name, _fn in {
    "ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min,
    "ReduceProd": np.prod,
    "ReduceSumSquare": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "ReduceL1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "ReduceL2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "ReduceLogSumExp": _log_sum_exp,
}.items():
    REGISTRY[("", _name)] = _reduce(_fn)


def _arg(fn):
    def adapter(ctx, i, a):
        x = i[0]
        axis = a.get("axis", 0) % x.ndim
        if a.get("select_last_index", 0):
            # The last occurrence: search the reversed axis and map the index back.
            y = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            y = fn(x, axis=axis)
        if a.get("keepdims", 1):
            y = np.expand_dims(y, axis)
        return [y.astype(np.int64)]

    return adapter


REGISTRY[("", "ArgMax")] = _arg(np.argmax)
REGISTRY[("", "ArgMin")] = _arg(np.argmin)


@op("TopK")
def _top_k(ctx, i, a):
    """The k largest (or smallest) along ``axis``, in order; equal values keep the lower
    index first, as the spec asks. sorted=0 allows any order: refimpl still sorts."""
    x, k = i[0], int(np.asarray(i[1]).reshape(-1)[0])
    axis = a.get("axis", -1) % x.ndim
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"TopK: k={k} outside [0, {x.shape[axis]}]")
    key = -x if a.get("largest", 1) else x
    order = np.argsort(key, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, indices, axis=axis), indices.astype(np.int64)]

