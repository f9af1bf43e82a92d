"""Shape, layout and indexing ops: no arithmetic on values (except CumSum and Range).

Results may be views of their inputs (Slice, Transpose, Reshape): adapters never write
into inputs, so sharing is safe.
"""

from __future__ import annotations

import numpy as np

from refimpl.ops.registry import REGISTRY, axes_of, floats, ints, op, optional


@op("Reshape")
def _reshape(ctx, i, a):
    x, shape = i[0], ints(i[1])
    if not a.get("allowzero", 0):
        # 0 copies the input's dimension at that index (unless allowzero=1: a real 0).
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def _flatten(ctx, i, a):
    x = i[0]
    axis = a.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))]


@op("Transpose")
def _transpose(ctx, i, a):
    return [np.transpose(i[0], a.get("perm"))]  # no perm: reverse the axes


@op("Squeeze")
def _squeeze(ctx, i, a):
    x, axes = i[0], axes_of(i, a)
    if axes is None:
        return [np.squeeze(x)]  # every axis of size 1
    return [np.squeeze(x, axis=tuple(ax % x.ndim for ax in axes))]


@op("Unsqueeze")
def _unsqueeze(ctx, i, a):
    x, axes = i[0], axes_of(i, a)
    rank = x.ndim + len(axes)
    # Negative axes count in the output's rank; inserting in increasing order keeps each
    # later index valid.
    for ax in sorted(ax % rank for ax in axes):
        x = np.expand_dims(x, ax)
    return [x]


@op("Concat")
def _concat(ctx, i, a):
    return [np.concatenate([x for x in i if x is not None], axis=a["axis"])]


@op("Split")
def _split(ctx, i, a):
    x = i[0]
    axis = a.get("axis", 0) % x.ndim
    sizes = a.get("split")  # opset < 13
    if sizes is None and optional(i, 1) is not None:
        sizes = ints(i[1])
    if sizes is None:
        # num_outputs (opset 18) or the node's output count; a last smaller chunk when the
        # axis does not divide evenly (ceil-sized chunks).
        n = a.get("num_outputs") or ctx.n_outputs
        chunk = -(-x.shape[axis] // n)
        sizes = [max(0, min(chunk, x.shape[axis] - k * chunk)) for k in range(n)]
    bounds = np.cumsum(sizes)[:-1]
    return list(np.split(x, bounds, axis=axis))


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping for one axis, as a Python slice."""
    if step == 0:
        raise ValueError("Slice step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    # Negative steps: start clamps to [0, dim-1], end to [-1, dim-1] where -1 means
    # "through index 0", which a Python slice spells as None.
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@op("Slice")
def _slice(ctx, i, a):
    x = i[0]
    if ctx.opset < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(i[1]), ints(i[2])
        axes = ints(i[3]) if optional(i, 3) is not None else list(range(len(starts)))
        steps = ints(i[4]) if optional(i, 4) is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis % x.ndim
        index[axis] = _slice_bounds(start, end, step, x.shape[axis])
    return [x[tuple(index)]]


def _wrapped(indices: np.ndarray, dim: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    return np.where(indices < 0, indices + dim, indices)


@op("Gather")
def _gather(ctx, i, a):
    x, idx = i
    axis = a.get("axis", 0) % x.ndim
    return [np.take(x, _wrapped(idx, x.shape[axis]), axis=axis)]


@op("GatherElements")
def _gather_elements(ctx, i, a):
    x, idx = i
    axis = a.get("axis", 0) % x.ndim
    # The output has the indices' shape, which may be smaller than x on the other axes.
    x = x[tuple(slice(None) if k == axis else slice(0, n) for k, n in enumerate(idx.shape))]
    return [np.take_along_axis(x, _wrapped(idx, x.shape[axis]), axis=axis)]


def _nd_index(x_shape: tuple, idx: np.ndarray, batch_dims: int) -> tuple:
    """Advanced index into x (batch dims flattened to one) selecting the slices that the
    last axis of ``idx`` addresses (GatherND / ScatterND)."""
    k = idx.shape[-1]
    batch = int(np.prod(x_shape[:batch_dims], dtype=np.int64))
    rows = idx.reshape(batch, -1, k)
    dims = x_shape[batch_dims : batch_dims + k]
    coords = tuple(_wrapped(rows[..., n], dims[n]) for n in range(k))
    return (np.arange(batch)[:, None],) + coords


@op("GatherND")
def _gather_nd(ctx, i, a):
    x, idx = i
    b = a.get("batch_dims", 0)
    flat = x.reshape((-1,) + x.shape[b:])
    picked = flat[_nd_index(x.shape, idx, b)]
    return [picked.reshape(idx.shape[:-1] + x.shape[b + idx.shape[-1] :])]


_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        out[index] = updates  # ONNX leaves duplicate indices undefined; the last one wins here
    else:
        _REDUCTIONS[reduction].at(out, index, updates)
    return out


@op("ScatterElements", "Scatter")
def _scatter_elements(ctx, i, a):
    x, idx, updates = i
    axis = a.get("axis", 0) % x.ndim
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = _wrapped(idx, x.shape[axis])
    return [_scatter(x.copy(), tuple(grid), updates, a.get("reduction", "none"))]


@op("ScatterND")
def _scatter_nd(ctx, i, a):
    x, idx, updates = i
    k = idx.shape[-1]
    out = x.copy()
    flat_idx = idx.reshape(-1, k)
    coords = tuple(_wrapped(flat_idx[:, n], x.shape[n]) for n in range(k))
    rows = updates.reshape((flat_idx.shape[0],) + x.shape[k:])
    return [_scatter(out, coords, rows, a.get("reduction", "none"))]


@op("Expand")
def _expand(ctx, i, a):
    x = i[0]
    target = np.broadcast_shapes(x.shape, tuple(ints(i[1])))
    return [np.array(np.broadcast_to(x, target))]  # a real array, not a read-only view


@op("Tile")
def _tile(ctx, i, a):
    return [np.tile(i[0], ints(i[1]))]


@op("Shape")
def _shape(ctx, i, a):
    dims = i[0].shape
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [np.array(dims[start:end], dtype=np.int64)]  # Python slicing clamps as ONNX does


@op("Size")
def _size(ctx, i, a):
    return [np.array(i[0].size, dtype=np.int64)]


@op("ConstantOfShape")
def _constant_of_shape(ctx, i, a):
    value = a.get("value")
    value = floats(ctx, np.zeros(1, np.float32) if value is None else value)
    return [np.full(ints(i[0]), value.reshape(-1)[0], dtype=value.dtype)]


@op("Range")
def _range(ctx, i, a):
    start, limit, delta = (np.asarray(v).reshape(()) for v in i)
    dtype = np.result_type(start, limit, delta)
    # ONNX: max(ceil((limit - start) / delta), 0) elements start + k * delta.
    count = max(int(np.ceil((limit.astype(np.float64) - start) / delta)), 0)
    return [(start + np.arange(count, dtype=dtype) * delta).astype(dtype, copy=False)]


@op("OneHot")
def _one_hot(ctx, i, a):
    """values[1] where the new ``axis`` equals the index, values[0] elsewhere. Negative
    indices count from the end (in [-depth, depth)); indices outside give off everywhere."""
    indices, values = np.asarray(i[0]), i[2]
    depth = int(np.asarray(i[1]).reshape(-1)[0])
    idx = indices.astype(np.int64)  # float indices are truncated (the spec casts them)
    idx = np.where(idx < 0, idx + depth, idx)
    axis = a.get("axis", -1) % (indices.ndim + 1)
    shape = [1] * (indices.ndim + 1)
    shape[axis] = depth
    classes = np.arange(depth).reshape(shape)
    hot = np.expand_dims(idx, axis) == classes
    off, on = np.asarray(values).reshape(-1)[:2]
    return [np.where(hot, on, off).astype(np.asarray(values).dtype)]


@op("Trilu")
def _trilu(ctx, i, a):
    k = ints(i[1])[0] if optional(i, 1) is not None else 0
    keep = np.triu if a.get("upper", 1) else np.tril
    return [keep(i[0], k)]


@op("Pad")
def _pad(ctx, i, a):
    x = i[0]
    pads = ints(i[1]) if ctx.opset >= 11 else list(a["pads"])
    axes = [ax % x.ndim for ax in ints(i[3])] if optional(i, 3) is not None else list(range(x.ndim))
    width = [(0, 0)] * x.ndim
    for n, ax in enumerate(axes):
        width[ax] = (pads[n], pads[n + len(axes)])
    if any(lo < 0 or hi < 0 for lo, hi in width):
        raise NotImplementedError("Pad with negative pads (cropping)")
    mode = a.get("mode", "constant")
    if mode == "constant":
        value = optional(i, 2) if ctx.opset >= 11 else a.get("value", 0.0)
        fill = np.asarray(0 if value is None else value).reshape(-1)
        return [np.pad(x, width, constant_values=fill[0] if fill.size else 0)]
    return [np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


@op("CumSum")
def _cumsum(ctx, i, a):
    x = i[0]
    axis = ints(i[1])[0] % x.ndim
    if a.get("reverse", 0):
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis, dtype=x.dtype)
    if a.get("exclusive", 0):
        # Shift by one (a leading zero) rather than subtract x: the sums keep their order.
        lead = [(0, 0)] * x.ndim
        lead[axis] = (1, 0)
        y = np.pad(np.delete(y, -1, axis=axis), lead)
    if a.get("reverse", 0):
        y = np.flip(y, axis)
    return [y]


@op("Dropout")
def _dropout(ctx, i, a):
    # Inference: the identity, and an all-True mask for the optional second output.
    return [i[0], np.ones(i[0].shape, dtype=np.bool_)]


REGISTRY[("", "Identity")] = lambda ctx, i, a: [i[0]]
