"""The opset-23 attention ops: Attention and RotaryEmbedding (ai.onnx domain).

Dimension legend as in refimpl.functional: B, H (q heads), KV, S, T (past + new), P, D.
"""

from __future__ import annotations

import math

import numpy as np

from refimpl import functional as F
from refimpl.ops.registry import op, optional


def _heads_first(x: np.ndarray, heads: int) -> np.ndarray:
    """[B, S, heads * D] -> [B, heads, S, D]."""
    b, s, hidden = x.shape
    if not heads or hidden % heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of the head count {heads}")
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def _heads_last(x: np.ndarray) -> np.ndarray:
    """[B, H, S, D] -> [B, S, H * D]."""
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


@op("RotaryEmbedding")
def _rotary_embedding(ctx, i, a):
    """x [B, H, S, D] or [B, S, H*D] (with num_heads); cos/sin [B, S, R/2], or caches
    [max_position, R/2] indexed by position_ids [B, S]. interleaved=1 pairs (2i, 2i+1),
    else (i, i + R/2); rotary_embedding_dim R (0: D) rotates the first R features."""
    x, cos, sin, positions = i[0], i[1], i[2], optional(i, 3)
    x4 = _heads_first(x, a.get("num_heads", 0)) if x.ndim == 3 else x
    if positions is not None:
        cos, sin = cos[positions], sin[positions]
    form = "interleaved" if a.get("interleaved", 0) else "half_split"
    rotary_dim = a.get("rotary_embedding_dim", 0) or x4.shape[-1]
    y = F.rotary_embedding(x4, cos[:, None], sin[:, None], form=form, rotary_dim=rotary_dim)
    return [_heads_last(y) if x.ndim == 3 else y]


def _attention_bias(mask, *, s: int, t: int, past: int, nonpad, is_causal: bool, dtype) -> np.ndarray:
    """The additive bias (0 or -inf, plus a float mask) that Attention adds to the scores,
    broadcastable to [B, H, S, T]."""
    zero, neg_inf = np.zeros((), dtype), np.asarray(-np.inf, dtype)
    bias = np.zeros((s, t), dtype)
    if mask is not None:
        if mask.shape[-1] < t:  # a mask over fewer keys: the missing (last) keys are masked
            width = [(0, 0)] * (mask.ndim - 1) + [(0, t - mask.shape[-1])]
            mask = np.pad(mask, width, constant_values=False if mask.dtype == np.bool_ else -np.inf)
        bias = bias + (np.where(mask, zero, neg_inf) if mask.dtype == np.bool_ else mask.astype(dtype, copy=False))
    if is_causal:
        # Bottom-right alignment: query i sees keys j <= i + offset, offset = the past
        # length, or per batch nonpad_kv_seqlen - S for an external (static) cache.
        offset = (np.asarray(nonpad).reshape(-1, 1, 1, 1) - s) if nonpad is not None and not past else past
        allowed = np.arange(t)[None, :] <= np.arange(s)[:, None] + offset
        bias = bias + np.where(allowed, zero, neg_inf)
    if nonpad is not None:  # keys at or after nonpad_kv_seqlen[b] are padding
        valid = np.arange(t)[None, :] < np.asarray(nonpad).reshape(-1, 1)
        bias = bias + np.where(valid, zero, neg_inf).reshape(-1, 1, 1, t)
    return bias


@op("Attention")
def _attention(ctx, i, a):
    """Opset 23/24 Attention: 3-D ([B, S, heads*D], q_num_heads / kv_num_heads) or 4-D
    inputs; GQA (query head h reads kv head h // (H / KV)); past_key / past_value
    concatenated before the new keys (present outputs); q and k each scaled by
    sqrt(scale) (default scale 1/sqrt(D)); softcap before the mask; bool mask True =
    attend, float mask added; is_causal bottom-right aligned; a fully masked row (the
    bias all -inf) gives a zero output row. qk_matmul_output by qk_matmul_output_mode:
    0 the scaled product, 1 after softcap, 2 after the mask, 3 the probabilities."""
    q, k, v = i[0], i[1], i[2]
    mask, past_k, past_v, nonpad = optional(i, 3), optional(i, 4), optional(i, 5), optional(i, 6)
    three_d = q.ndim == 3
    if three_d:
        q = _heads_first(q, a.get("q_num_heads", 0))
        k = _heads_first(k, a.get("kv_num_heads", 0))
        v = _heads_first(v, a.get("kv_num_heads", 0))
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)
        v = np.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    b, h, s, d = q.shape
    kv, t = k.shape[1], k.shape[2]
    if h % kv:
        raise ValueError(f"{h} query heads are not a multiple of {kv} kv heads")
    dt = q.dtype
    scale = a.get("scale")
    root = np.asarray(math.sqrt(1.0 / math.sqrt(d) if scale is None else scale), dt)
    # Query heads grouped by the kv head they read: [B, KV, G, S, D] x [B, KV, 1, D, T].
    qk = np.matmul((q * root).reshape(b, kv, h // kv, s, d), (np.swapaxes(k, -1, -2) * root)[:, :, None]).reshape(b, h, s, t)
    softcap = a.get("softcap", 0.0)
    capped = np.asarray(softcap, dt) * np.tanh(qk / np.asarray(softcap, dt)) if softcap and softcap > 0 else qk
    bias = _attention_bias(
        mask, s=s, t=t, past=0 if past_k is None else past_k.shape[2], nonpad=nonpad,
        is_causal=bool(a.get("is_causal", 0)), dtype=dt,
    )
    scores = capped + bias
    probs = F.softmax(scores, axis=-1)
    # The spec decides "fully masked" on the bias, not on the (possibly NaN) scores.
    fully_masked = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    probs = np.where(fully_masked, np.zeros((), dt), probs)
    y = np.matmul(probs.reshape(b, kv, h // kv, s, t), v[:, :, None]).reshape(b, h, s, v.shape[3])
    mode = a.get("qk_matmul_output_mode", 0)
    qk_out = {0: qk, 1: capped, 2: scores, 3: probs}.get(mode)
    if qk_out is None:
        raise ValueError(f"qk_matmul_output_mode {mode} is not 0..3")
    return [_heads_last(y) if three_d else y, present_k, present_v, qk_out]
