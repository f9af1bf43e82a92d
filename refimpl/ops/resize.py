"""Resize (opset 11-19): nearest, linear and cubic resampling, separably axis by axis.

The ONNX definition is separable: every output coordinate along one axis maps back to a
source coordinate (``coordinate_transformation_mode``), and the output is a weighted sum of
source samples near it. The weights depend on the mode: nearest picks one sample (rounded
by ``nearest_mode``), linear two, cubic four (Keys kernel with ``cubic_coeff_a``). Samples
outside the input repeat the edge (as the spec's reference pads), except with
``exclude_outside`` (their weight is dropped and the rest renormalised) and
``tf_crop_and_resize`` (a coordinate outside the input gives ``extrapolation_value``).

Coordinates are computed in float64 from the exact scale (the given scale, or out/in when
sizes are given): the truth, where float32 implementations may round a coordinate that
lands exactly on a sample to its neighbour. Antialiasing (opset 18) is not implemented.
"""

from __future__ import annotations

import numpy as np

from refimpl.ops.registry import floats, ints, op, optional


def _present(value) -> np.ndarray | None:
    """An optional input: exporters write an empty tensor for an omitted roi/scales/sizes."""
    if value is None or np.asarray(value).size == 0:
        return None
    return np.asarray(value)


def _out_sizes_and_scales(x: np.ndarray, scales, sizes, axes: list[int], policy: str) -> tuple[list[int], list[float]]:
    """Output size and scale per input axis (axes not in ``axes``: unchanged, scale 1)."""
    out = list(x.shape)
    scale = [1.0] * x.ndim
    if scales is not None:
        given = [float(s) for s in np.asarray(scales, np.float64).reshape(-1)]
        if len(given) != len(axes):
            raise ValueError(f"Resize: {len(given)} scales for {len(axes)} axes")
        for ax, s in zip(axes, given):
            if s <= 0:
                raise ValueError(f"Resize: scale {s} must be positive")
            scale[ax] = s
            out[ax] = int(np.floor(x.shape[ax] * s))
        return out, scale
    if sizes is None:
        raise ValueError("Resize needs scales or sizes")
    wanted = ints(sizes)
    if len(wanted) != len(axes):
        raise ValueError(f"Resize: {len(wanted)} sizes for {len(axes)} axes")
    if policy == "stretch":
        for ax, n in zip(axes, wanted):
            out[ax], scale[ax] = n, n / x.shape[ax]
        return out, scale
    # not_larger / not_smaller: one scale for every resized axis, keeping the aspect ratio.
    ratios = [n / x.shape[ax] for ax, n in zip(axes, wanted)]
    common = min(ratios) if policy == "not_larger" else max(ratios)
    for ax in axes:
        scale[ax] = common
        out[ax] = int(np.floor(x.shape[ax] * common + 0.5))
    return out, scale


def _source_coords(mode: str, n_in: int, n_out: int, scale: float, roi: tuple[float, float] | None) -> np.ndarray:
    """The input coordinate of every output index along one axis."""
    r = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (r + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        offset = n_in / 2 * (1 - adjustment)
        return offset + (r + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (r + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return r * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return r / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if n_out > 1:
            return start * (n_in - 1) + r * (end - start) * (n_in - 1) / (n_out - 1)
        return np.full(n_out, 0.5 * (start + end) * (n_in - 1))
    raise NotImplementedError(f"Resize coordinate_transformation_mode {mode!r}")


def _nearest_index(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if nearest_mode == "floor":
        return np.floor(x)
    if nearest_mode == "ceil":
        return np.ceil(x)
    raise NotImplementedError(f"Resize nearest_mode {nearest_mode!r}")


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys kernel weights of the samples at floor(x) - 1 .. floor(x) + 2, t = x - floor(x)."""
    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=-1)  # distances to the four samples
    near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
    return np.where(d <= 1, near, far)


def _taps(coords: np.ndarray, n_in: int, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices [n_out, taps] (clamped to the input: edge repeat) and their weights."""
    mode = attrs.get("mode", "nearest")
    if mode == "nearest":
        index = _nearest_index(coords, attrs.get("nearest_mode", "round_prefer_floor"))
        return np.clip(index, 0, n_in - 1).astype(np.int64)[:, None], np.ones((len(coords), 1))
    base = np.floor(coords)
    t = coords - base
    if mode == "linear":
        offsets, weights = np.array([0, 1]), np.stack([1 - t, t], axis=-1)
    elif mode == "cubic":
        offsets, weights = np.array([-1, 0, 1, 2]), _cubic_weights(t, float(attrs.get("cubic_coeff_a", -0.75)))
    else:
        raise NotImplementedError(f"Resize mode {mode!r}")
    index = base[:, None].astype(np.int64) + offsets[None, :]
    if attrs.get("exclude_outside", 0):
        inside = (index >= 0) & (index < n_in)
        weights = np.where(inside, weights, 0.0)
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return np.clip(index, 0, n_in - 1), weights


def _resample_axis(x: np.ndarray, axis: int, n_out: int, scale: float, roi, attrs: dict) -> np.ndarray:
    n_in = x.shape[axis]
    coord_mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    coords = _source_coords(coord_mode, n_in, n_out, scale, roi)
    index, weights = _taps(coords, n_in, attrs)
    moved = np.moveaxis(x, axis, -1)
    taps = moved[..., index]  # [..., n_out, taps]
    if np.issubdtype(x.dtype, np.floating):
        out = (taps * weights.astype(x.dtype)).sum(axis=-1)
    else:  # nearest on an integer tensor: the one tap, exact
        out = taps[..., 0]
    if coord_mode == "tf_crop_and_resize":
        outside = (coords < 0) | (coords > n_in - 1)
        out = np.where(outside, np.asarray(attrs.get("extrapolation_value", 0.0), out.dtype), out)
    return np.moveaxis(out, -1, axis)


@op("Resize")
def _resize(ctx, i, a):
    x = i[0]
    if a.get("antialias", 0):
        raise NotImplementedError("Resize with antialias=1")
    if ctx.opset < 11:
        # Resize-10 leaves the rounding of nearest open (implementations differ).
        raise NotImplementedError("Resize before opset 11")
    roi, scales, sizes = _present(optional(i, 1)), _present(optional(i, 2)), _present(optional(i, 3))
    axes = [int(ax) % x.ndim for ax in a.get("axes", range(x.ndim))]
    out_sizes, scale = _out_sizes_and_scales(x, scales, sizes, axes, a.get("keep_aspect_ratio_policy", "stretch"))
    rois: dict[int, tuple[float, float]] = {}
    if roi is not None:
        flat = [float(v) for v in np.asarray(roi, np.float64).reshape(-1)]
        k = len(flat) // 2
        on = axes if k == len(axes) else list(range(x.ndim))
        rois = {ax: (flat[j], flat[k + j]) for j, ax in enumerate(on)}
    y = x
    for ax in range(x.ndim):
        cropping = a.get("coordinate_transformation_mode") == "tf_crop_and_resize"
        if out_sizes[ax] == x.shape[ax] and scale[ax] == 1.0 and not cropping:
            continue  # identity along this axis (every mode maps r -> r)
        y = _resample_axis(y, ax, out_sizes[ax], scale[ax], rois.get(ax, (0.0, 1.0)), a)
    return [floats(ctx, y)]
