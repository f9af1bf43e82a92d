"""Closed-form reference functions in numpy: the ground truth for attention models.

Every function is pure, typed, with keyword-only attributes, and computes in the dtype of
its inputs (pass float64 arrays for a float64 truth). Numeric conventions are stated where
they matter; they match the ONNX operator specifications unless said otherwise.

Shapes: B batch, H query heads, KV key/value heads, S query length, T key length
(past + new), D head dim, Dv value head dim, E hidden.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "softmax",
    "scaled_dot_product_attention",
    "causal_mask",
    "rotary_embedding",
    "alibi_slopes",
    "alibi_bias",
    "lora_delta",
    "linear",
    "conv2d",
    "rms_norm",
    "layer_norm",
]


def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (max subtracted first).

    A row whose entries are all ``-inf`` has no finite maximum: like ONNX Runtime, the
    result is NaN for that row (0/0). Callers that need zeros must guard it, as the SDPA
    export does with IsNaN -> Where.
    """
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def causal_mask(q_len: int, k_len: int, *, offset: int | None = None) -> np.ndarray:
    """Boolean [S, T] mask, True = attend. Query i sees keys j <= i + offset.

    ``offset`` defaults to ``k_len - q_len`` (bottom-right alignment: the new tokens are the
    last ones, as with a KV cache). ``offset=0`` is the upper-left alignment of ONNX
    Attention's ``is_causal``.
    """
    if offset is None:
        offset = k_len - q_len
    i = np.arange(q_len)[:, None]
    j = np.arange(k_len)[None, :]
    return j <= i + offset


def scaled_dot_product_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    is_causal: bool = False,
    causal_offset: int | None = None,
    scale: float | None = None,
    softcap: float = 0.0,
) -> np.ndarray:
    """softmax(q k^T * scale + mask) v, per head.

    q [B, H, S, D], k [B, KV, T, D], v [B, KV, T, Dv] -> [B, H, S, Dv]. GQA: query head h
    reads kv head ``h // (H // KV)``. ``scale`` defaults to 1/sqrt(D). ``mask``: a float
    mask is added to the scores; a boolean mask keeps True positions and sets the others
    to -inf; both broadcast to [B, H, S, T]. ``is_causal`` masks future keys (see
    causal_mask for the alignment; ``causal_offset`` None = bottom-right). ``softcap`` > 0
    applies softcap * tanh(scores / softcap) before the mask. A query row with every key
    masked gives NaN (see softmax).
    """
    b, h, s, d = q.shape
    kv = k.shape[1]
    if h % kv:
        raise ValueError(f"{h} query heads are not a multiple of {kv} kv heads")
    if kv != h:
        k = np.repeat(k, h // kv, axis=1)
        v = np.repeat(v, h // kv, axis=1)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(scale, dtype=q.dtype)
    if softcap and softcap > 0:
        scores = softcap * np.tanh(scores / softcap)
    neg_inf = np.asarray(-np.inf, dtype=scores.dtype)
    if is_causal:
        scores = np.where(causal_mask(s, k.shape[2], offset=causal_offset), scores, neg_inf)
    if mask is not None:
        if mask.dtype == np.bool_:
            scores = np.where(mask, scores, neg_inf)
        else:
            scores = scores + mask.astype(scores.dtype)
    return np.matmul(softmax(scores, axis=-1), v)


def rotary_embedding(
    x: np.ndarray, cos: np.ndarray, sin: np.ndarray, *, form: str = "rotate_half", rotary_dim: int | None = None
) -> np.ndarray:
    """Rotate the first ``rotary_dim`` features of x [..., S, D] by angles given as cos/sin.

    Forms (all rotate pairs (a, b) to (a cos - b sin, a sin + b cos)):
      ``rotate_half``  HF: pairs (i, i + R/2); cos/sin have R features, the halves equal:
                       x * cos + concat(-x2, x1) * sin.
      ``half_split``   the same pairs with cos/sin of R/2 features ("golden" form):
                       concat(x1 cos - x2 sin, x1 sin + x2 cos).
      ``interleaved``  pairs (2i, 2i + 1); cos/sin of R/2 features.
    cos/sin broadcast against x[..., :R] (rotate_half) or x[..., :R/2] (other forms).
    Features beyond ``rotary_dim`` (partial rotary) pass through unchanged.
    """
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    if form == "rotate_half":
        x1, x2 = rot[..., :half], rot[..., half:]
        out = rot * cos + np.concatenate([-x2, x1], axis=-1) * sin
    elif form == "half_split":
        x1, x2 = rot[..., :half], rot[..., half:]
        out = np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    elif form == "interleaved":
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        a, b = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        out = np.stack([a, b], axis=-1).reshape(rot.shape)
    else:
        raise ValueError(f"unknown rotary form {form!r}")
    return np.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al.): 2^(-8 i / n) for a power of two n; otherwise the
    slopes of the closest lower power of two followed by every other slope of the next."""

    def powers(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = powers(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = powers(closest) + powers(2 * closest)[0::2][: num_heads - closest]
    return np.array(slopes, dtype=np.float64)


def alibi_bias(slopes: np.ndarray, *, q_len: int, k_len: int) -> np.ndarray:
    """[H, S, T] bias slope_h * (j - i - (T - S)): zero on the diagonal, negative to the left."""
    i = np.arange(q_len)[:, None] + (k_len - q_len)
    j = np.arange(k_len)[None, :]
    return slopes[:, None, None] * (j - i)[None].astype(slopes.dtype)


def lora_delta(x: np.ndarray, a: np.ndarray, b: np.ndarray, *, alpha: float | np.ndarray) -> np.ndarray:
    """The LoRA update alpha * (x @ A) @ B; x [..., in], A [in, r], B [r, out]."""
    return np.asarray(alpha, dtype=x.dtype) * ((x @ a) @ b)


def linear(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> np.ndarray:
    """alpha * op(x) @ op(w) + beta * bias, op = transpose of the last two axes when asked
    (Gemm semantics; with the defaults this is MatMul plus an optional bias)."""
    a = np.swapaxes(x, -1, -2) if trans_a else x
    b = np.swapaxes(w, -1, -2) if trans_b else w
    y = np.matmul(a, b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=y.dtype)
    if bias is not None:
        y = y + np.asarray(beta, dtype=y.dtype) * bias
    return y


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """NCHW convolution (cross-correlation, as ONNX Conv). x [N, C, H, W], w [M, C/group,
    kH, kW], pads (top, left, bottom, right). Computed as one matmul per kernel tap."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, m, oh, ow), dtype=np.result_type(x, w))
    mg = m // group
    for g in range(group):
        xs = xp[:, g * cg : (g + 1) * cg]
        ws = w[g * mg : (g + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
                out[:, g * mg : (g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, ws[:, :, i, j])
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


def _norm_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    axis = axis % x.ndim
    return tuple(range(axis, x.ndim))


def rms_norm(x: np.ndarray, weight: np.ndarray | None = None, *, eps: float = 1e-5, axis: int = -1) -> np.ndarray:
    """x / sqrt(mean(x^2 over axis..last) + eps) * weight."""
    axes = _norm_axes(x, axis)
    y = x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + np.asarray(eps, dtype=x.dtype))
    return y if weight is None else y * weight


def layer_norm(
    x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None, *, eps: float = 1e-5, axis: int = -1
) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over axis..last (population variance)."""
    axes = _norm_axes(x, axis)
    mean = np.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.asarray(eps, dtype=x.dtype))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y
