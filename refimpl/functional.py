"""Closed-form reference functions in numpy: the ground truth for attention models.

Every function is pure and typed, takes its attributes keyword-only, and computes in the
dtype of its inputs (pass float64 arrays for a float64 truth; results are not rounded
back to any narrower type). Numeric conventions are stated where they matter; they match
the ONNX operator specifications unless said otherwise.

Dimension legend: B batch, H query heads, KV key/value heads, G = H // KV query heads per
kv head, S query length, T key length (past + new), P past length, D head dim, Dv value
head dim, R rotary dim, E hidden.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from refimpl.special import erf

__all__ = [
    "softmax",
    "log_softmax",
    "causal_mask",
    "scaled_dot_product_attention",
    "rotary_embedding",
    "alibi_slopes",
    "alibi_bias",
    "lora_delta",
    "linear",
    "conv2d",
    "rms_norm",
    "layer_norm",
    "gelu",
    "erf",
]

RotaryForm = Literal["rotate_half", "half_split", "interleaved"]


def softmax(x: np.ndarray, *, axis: int = -1, nan_to_zero: bool = False) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (the max is subtracted for range).

    A row whose entries are all ``-inf`` (a fully masked row) has no finite maximum and
    gives NaN, as ONNX Softmax and onnxruntime do; ``nan_to_zero=True`` gives zeros there
    instead (the convention of the ONNX ``Attention`` op). A row holding ``+inf`` or NaN
    gives NaN either way.
    """
    m = np.max(x, axis=axis, keepdims=True)
    if nan_to_zero:
        masked_rows = np.isneginf(m)
        m = np.where(masked_rows, np.zeros((), x.dtype), m)
    with np.errstate(invalid="ignore"):  # -inf - -inf: the documented NaN row
        e = np.exp(x - m)
    total = np.sum(e, axis=axis, keepdims=True)
    if nan_to_zero:
        # exp(-inf - 0) is 0 everywhere in such a row: divide by 1 to keep the zeros.
        total = np.where(masked_rows, np.ones((), x.dtype), total)
    return e / total


def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """x - max - log(sum(exp(x - max))): exact for large negative inputs, unlike log(softmax)."""
    m = np.max(x, axis=axis, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def causal_mask(q_len: int, k_len: int, *, offset: int | None = None) -> np.ndarray:
    """Boolean [S, T] mask, True = attend: query i sees keys j <= i + offset.

    ``offset`` None means ``k_len - q_len``: bottom-right alignment, the queries are the
    last ``q_len`` positions of the key sequence (a KV cache of P = T - S past tokens; HF
    and ONNX ``Attention`` with past_key). ``offset=0`` is top-left alignment (PyTorch
    ``is_causal`` when S != T). With S == T both are the lower triangle. A negative offset
    leaves the first rows fully masked.
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
    nan_to_zero: bool = False,
) -> np.ndarray:
    """softmax(cap(q k^T * scale) + mask) v per head.

    Shapes: q [B, H, S, D], k [B, KV, T, D], v [B, KV, T, Dv] -> [B, H, S, Dv]. GQA: H must
    be a multiple of KV and query head h reads kv head ``h // (H // KV)`` (each kv head
    serves a run of consecutive query heads, as HF ``repeat_kv`` and ONNX Attention).

    - ``scale`` defaults to 1/sqrt(D) and multiplies the product q k^T (onnxruntime may
      instead scale q and k by sqrt(scale) each: equal up to rounding).
    - ``softcap`` > 0 applies ``softcap * tanh(scores / softcap)`` before any mask, so
      masked scores stay -inf.
    - ``mask`` broadcasts to [B, H, S, T]: a float mask is added to the scores; a boolean
      mask keeps True positions and sets the others to -inf.
    - ``is_causal`` masks future keys with ``causal_mask(S, T, offset=causal_offset)``:
      None is bottom-right alignment (offset T - S, the KV-cache convention), 0 top-left.
      It combines with ``mask``.
    - A query row with every key masked gives NaN (softmax of all -inf), or a zero row
      with ``nan_to_zero=True`` (ONNX Attention's convention).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be 4-D [B, heads, seq, dim]; got {q.shape}, {k.shape}, {v.shape}")
    b, h, s, d = q.shape
    kv, t = k.shape[1], k.shape[2]
    if h % kv or v.shape[1] != kv or v.shape[2] != t or k.shape[3] != d:
        raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}: H must be a multiple of KV")
    # Group the query heads by the kv head they read: [B, KV, G, S, D] against [B, KV, 1, T, D]
    # (no copy of K and V per query head).
    qg = q.reshape(b, kv, h // kv, s, d)
    dt = q.dtype
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    scores = np.matmul(qg, np.swapaxes(k, -1, -2)[:, :, None]) * np.asarray(scale, dtype=dt)
    if softcap and softcap > 0:
        cap = np.asarray(softcap, dtype=dt)
        scores = cap * np.tanh(scores / cap)
    scores = scores.reshape(b, h, s, t)
    neg_inf = np.asarray(-np.inf, dtype=dt)
    if is_causal:
        scores = np.where(causal_mask(s, t, offset=causal_offset), scores, neg_inf)
    if mask is not None:
        if mask.dtype == np.bool_:
            scores = np.where(mask, scores, neg_inf)
        else:
            scores = scores + mask.astype(dt, copy=False)
    probs = softmax(scores, axis=-1, nan_to_zero=nan_to_zero)
    out = np.matmul(probs.reshape(b, kv, h // kv, s, t), v[:, :, None])
    return out.reshape(b, h, s, v.shape[3])


def rotary_embedding(
    x: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    *,
    form: RotaryForm = "rotate_half",
    rotary_dim: int | None = None,
) -> np.ndarray:
    """Rotate the first R = ``rotary_dim`` (default D) features of x [..., S, D].

    Every form turns a pair (a, b) into (a cos - b sin, a sin + b cos); they differ in
    which features pair up and in the width of cos/sin:

    - ``rotate_half`` (HF): pairs (i, i + R/2); cos/sin have R features whose halves are
      equal; computed as x * cos + concat(-x2, x1) * sin.
    - ``half_split`` ("golden" form, ONNX RotaryEmbedding interleaved=0): the same pairs
      with cos/sin of R/2 features: concat(x1 cos - x2 sin, x1 sin + x2 cos).
    - ``interleaved`` (GPT-J, ONNX interleaved=1): pairs (2i, 2i + 1), cos/sin of R/2.

    cos/sin broadcast against x[..., :R] (rotate_half) or x[..., :R/2]; pass [S, w] or
    [B, 1, S, w] for x [B, H, S, D]. Features from R on (partial rotary) pass through.
    """
    d = x.shape[-1]
    r = d if rotary_dim is None else int(rotary_dim)
    if r % 2 or not 0 < r <= d:
        raise ValueError(f"rotary_dim must be even and in (0, {d}], got {r}")
    width = r if form == "rotate_half" else r // 2
    if cos.shape[-1] != width or sin.shape[-1] != width:
        raise ValueError(f"{form}: cos/sin need {width} features, got {cos.shape[-1]} and {sin.shape[-1]}")
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
        pairs = np.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
        out = pairs.reshape(pairs.shape[:-2] + (r,))
    else:
        raise ValueError(f"unknown rotary form {form!r}")
    return np.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al.), float64 [H].

    For a power of two n: 2^(-8 (i + 1) / n), i = 0..n-1. Otherwise, with m the largest
    power of two below n: the m slopes of m, followed by every other slope of 2m (its
    1st, 3rd, ...) until there are n (the BLOOM / HF construction).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(closest)
    if closest != num_heads:
        slopes += geometric(2 * closest)[0::2][: num_heads - closest]
    return np.array(slopes, dtype=np.float64)


def alibi_bias(slopes: np.ndarray, *, q_len: int, k_len: int) -> np.ndarray:
    """[H, S, T] bias slope_h * (j - i') with i' = i + T - S the query's key position.

    Zero on the (bottom-right aligned) diagonal, negative for earlier keys, positive for
    later ones (which a causal mask removes). BLOOM adds slope_h * j instead: the two differ
    by a per-row constant, which softmax cancels. Computed in the dtype of ``slopes``.
    """
    i = np.arange(q_len)[:, None] + (k_len - q_len)
    j = np.arange(k_len)[None, :]
    return slopes[:, None, None] * (j - i)[None].astype(slopes.dtype)


def lora_delta(x: np.ndarray, a: np.ndarray, b: np.ndarray, *, alpha: float | np.ndarray) -> np.ndarray:
    """The LoRA update alpha * ((x @ A) @ B); x [..., in], A [in, r], B [r, out].

    ``alpha`` is the whole multiplier (a PEFT export's alpha / r), scalar or broadcastable;
    it multiplies the product last, as exporters do (Mul after the second MatMul).
    """
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
    """alpha * op(x) @ op(w) + beta * bias, op = swap of the last two axes when asked.

    With the defaults this is MatMul (numpy matmul broadcasting, x [..., in] @ w [in, out])
    plus an optional bias; with the attributes it is ONNX Gemm (bias broadcast to the
    product, alpha applied to the product before the bias is added).
    """
    a = np.swapaxes(x, -1, -2) if trans_a else x
    b = np.swapaxes(w, -1, -2) if trans_b else w
    y = np.matmul(a, b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=y.dtype)
    if bias is not None:
        y = y + (bias if beta == 1.0 else np.asarray(beta, dtype=y.dtype) * bias)
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
    """NCHW convolution as ONNX Conv (cross-correlation, not flipped).

    x [N, C, H, W], w [M, C/group, kH, kW], bias [M]; ``pads`` = (top, left, bottom,
    right), zero padding; output [N, M, oH, oW] with oH = (H + top + bottom - dH (kH - 1)
    - 1) // sH + 1. Computed as one matmul per group over gathered patches (im2col), so
    the sum over C/group x kH x kW runs in one BLAS call.
    """
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if c != cg * group or m % group:
        raise ValueError(f"conv2d: x has {c} channels, w {w.shape} with group={group}")
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"conv2d: kernel {kh}x{kw} (dilation {dilations}) larger than padded input {xp.shape[2:]}")
    if kh == kw == 1 and sh == sw == 1:
        patches = xp.reshape(n, group, cg, oh * ow)  # a 1x1 convolution is a matmul as is
    else:
        taps = [
            xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ]
        # [N, C, kH*kW, oH, oW] -> [N, G, C/G * kH*kW, oH*oW], channel-major like w's layout.
        patches = np.stack(taps, axis=2).reshape(n, group, cg * kh * kw, oh * ow)
    wg = w.reshape(group, m // group, cg * kh * kw)
    out = np.matmul(wg, patches).reshape(n, m, oh, ow)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


def _trailing_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(range(axis % x.ndim, x.ndim))


def rms_norm(x: np.ndarray, weight: np.ndarray | None = None, *, eps: float = 1e-5, axis: int = -1) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, the mean over ``axis`` and every later axis
    (ONNX RMSNormalization, HF LlamaRMSNorm). ``eps`` is cast to x's dtype first."""
    axes = _trailing_axes(x, axis)
    y = x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + np.asarray(eps, dtype=x.dtype))
    return y if weight is None else y * weight


def layer_norm(
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    eps: float = 1e-5,
    axis: int = -1,
) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over ``axis`` and every later axis;
    population variance (divide by the count, not count - 1), as ONNX LayerNormalization."""
    axes = _trailing_axes(x, axis)
    mean = np.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    y = centered / np.sqrt(var + np.asarray(eps, dtype=x.dtype))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def gelu(x: np.ndarray, *, approximate: Literal["none", "tanh"] = "none") -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt(2))), or with ``approximate="tanh"`` the tanh form
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (ONNX Gelu-20)."""
    half = np.asarray(0.5, x.dtype)
    if approximate == "tanh":
        c = np.asarray(math.sqrt(2.0 / math.pi), x.dtype)
        return half * x * (1 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x * x * x)))
    return half * x * (1 + erf(x / np.asarray(math.sqrt(2.0), x.dtype)))
