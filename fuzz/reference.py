"""The closed-form computation of a built model, from its parameters (never from its graph).

Everything here is refimpl.functional and numpy in float64 (or the requested dtype): it is
the oracle the built graphs are checked against. Constants the graph stores (the score
scale, norm epsilons, RoPE tables) are used as stored, rounded to the model dtype, so that
a float64 evaluation of the graph equals this to float64 rounding, not just to float32.
"""

from __future__ import annotations

import math

import numpy as np

import refimpl.functional as F
from fuzz.config import AttentionConfig
from fuzz.params import NORM_EPS, LayerParams, ModelParams, stored


def masks_for(cfg: AttentionConfig, feeds: dict, dtype) -> np.ndarray | None:
    """The additive mask (or None) the graph applies, as [B or 1, 1, S, T]."""
    s, t, fill = cfg.seq, cfg.t, cfg.mask_fill
    if cfg.mask in ("causal", "per_head"):
        allowed = F.causal_mask(s, t)
    elif cfg.mask == "sliding_window":
        i = np.arange(s)[:, None] + (t - s)
        j = np.arange(t)[None, :]
        allowed = (j <= i) & (j > i - cfg.window)
    elif cfg.mask == "additive_input":
        return feeds["attention_mask"].astype(dtype)
    elif cfg.mask == "bool_input":
        return np.where(feeds["attention_mask"], 0.0, fill).astype(dtype)
    elif cfg.mask in ("padding_input", "causal_padding_input"):
        padding = ((1.0 - feeds["attention_mask"]) * fill)[:, None, None, :]
        if cfg.mask == "padding_input":
            return padding.astype(dtype)
        return (padding + np.where(F.causal_mask(s, t), 0.0, fill)[None, None]).astype(dtype)
    else:
        return None
    return np.where(allowed, 0.0, fill).astype(dtype)[None, None]


def _project(cfg: AttentionConfig, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, lora=None, alphas=None) -> np.ndarray:
    y = F.linear(x, w, b)
    if lora:
        for adaptor, alpha in zip(lora, alphas):
            y = y + F.lora_delta(x, adaptor.a, adaptor.b, alpha=alpha)
    return y


def _score_scale(cfg: AttentionConfig) -> float:
    """The factor on q.k as the graph applies it (its constants rounded to the model dtype)."""
    d = cfg.d
    if cfg.scaling == "none":
        return 1.0
    if cfg.attention_op or cfg.scaling == "shape":  # computed at run time from the head dim
        return 1.0 / math.sqrt(d)
    if cfg.scaling == "div_scores":
        return 1.0 / stored(math.sqrt(d), cfg.dtype)
    if cfg.scaling == "mul_qk":
        return stored(d**-0.25, cfg.dtype) ** 2
    return stored(1.0 / math.sqrt(d), cfg.dtype)  # mul_scores, mul_q


def _heads(x: np.ndarray, n: int, d: int) -> np.ndarray:
    b, s, _ = x.shape
    return x.reshape(b, s, n, d).transpose(0, 2, 1, 3)


def _rope(cfg: AttentionConfig, params: ModelParams, feeds: dict, x: np.ndarray) -> np.ndarray:
    r = cfg.rotary_dim
    if cfg.rope in ("rotate_half", "rotary_op"):
        pos = feeds["position_ids"].astype(np.float64)
        freqs = pos[..., None] * params.inv_freq  # [B, S, R/2]
        if cfg.rope == "rotate_half":
            emb = np.concatenate([freqs, freqs], axis=-1)
            return F.rotary_embedding(x, np.cos(emb)[:, None].astype(x.dtype), np.sin(emb)[:, None].astype(x.dtype), form="rotate_half", rotary_dim=r)
        angles = np.arange(params.rope_cache_positions)[:, None] * params.inv_freq
        table_dtype = np.float16 if cfg.dtype == "float16" else np.float32  # stored tables
        cos_cache = np.cos(angles).astype(table_dtype).astype(np.float64)
        sin_cache = np.sin(angles).astype(table_dtype).astype(np.float64)
        p = feeds["position_ids"]
        return F.rotary_embedding(x, cos_cache[p][:, None].astype(x.dtype), sin_cache[p][:, None].astype(x.dtype), form="half_split", rotary_dim=r)
    cos, sin = feeds["cos"][:, None].astype(x.dtype), feeds["sin"][:, None].astype(x.dtype)
    return F.rotary_embedding(x, cos, sin, form="half_split" if cfg.rope == "half_split" else "interleaved", rotary_dim=r)


def _attention_layer(cfg: AttentionConfig, params: ModelParams, lp: LayerParams, layer: int, x: np.ndarray, feeds: dict, dtype) -> tuple[np.ndarray, dict]:
    h, kv, d = cfg.heads, cfg.kv_heads, cfg.d
    source = x
    if cfg.cross_attention:
        source = feeds["encoder_hidden_states"].astype(dtype)
        if cfg.layout == "nchw":
            source = source[:, :, 0, :].transpose(0, 2, 1)
    alphas = [feeds["lora_alpha"].reshape(-1)[0] * (k + 1) if cfg.lora_alpha_input else a for k, a in enumerate(lp.lora_alpha)]
    q = _project(cfg, x, lp.wq, lp.bq, lp.lora.get("q"), alphas)
    k = _project(cfg, source, lp.wk, lp.bk, lp.lora.get("k"), alphas)
    v = _project(cfg, source, lp.wv, lp.bv, lp.lora.get("v"), alphas)
    if cfg.qk_norm_full:  # over the whole projection width, before the head split (OLMo-2)
        eps = stored(NORM_EPS, cfg.dtype)
        q, k = F.rms_norm(q, lp.q_norm, eps=eps), F.rms_norm(k, lp.k_norm, eps=eps)
    q, k, v = _heads(q, h, d), _heads(k, kv, d), _heads(v, kv, d)
    if cfg.joint_attention:  # the text stream joins on the sequence axis (SD3 MMDiT)
        text = feeds["encoder_hidden_states"].astype(dtype)
        q, k, v = (np.concatenate([a, _heads(F.linear(text, wt), n, d)], axis=2) for a, wt, n in ((q, lp.txt_wq, h), (k, lp.txt_wk, kv), (v, lp.txt_wv, kv)))
    if cfg.qk_norm and not cfg.qk_norm_full:
        eps = stored(NORM_EPS, cfg.dtype)
        q = F.rms_norm(q, lp.q_norm, eps=eps)
        k = F.rms_norm(k, lp.k_norm, eps=eps)
    if cfg.rope != "none":
        q, k = _rope(cfg, params, feeds, q), _rope(cfg, params, feeds, k)
    presents = {}
    new_k, new_v = k, v
    if cfg.has_past:
        pk = feeds[f"past_key_{layer}"].astype(dtype)
        if cfg.past_kv == "full_transposed_key":
            pk = np.swapaxes(pk, -1, -2)
        k = np.concatenate([pk, k], axis=2)
        v = np.concatenate([feeds[f"past_value_{layer}"].astype(dtype), v], axis=2)
        if cfg.past_kv == "new_only":
            presents = {f"present_key_{layer}": new_k, f"present_value_{layer}": new_v}
        elif cfg.past_kv == "full_transposed_key":
            presents = {f"present_key_{layer}": np.swapaxes(k, -1, -2), f"present_value_{layer}": v}
        else:
            presents = {f"present_key_{layer}": k, f"present_value_{layer}": v}
    # Which kv head each query head reads: h // group, except Tile repeats the whole block.
    tiled = cfg.gqa_repeat == "tile" and not cfg.attention_op  # the Attention op groups h // group
    kv_index = (np.arange(h) % kv) if tiled else (np.arange(h) // cfg.group)
    k_rep, v_rep = k[:, kv_index], v[:, kv_index]
    scale = _score_scale(cfg)
    bias = masks_for(cfg, feeds, dtype)
    extra = np.zeros((1, h, q.shape[2], cfg.t), dtype)
    if lp.per_head_mask is not None:
        extra = extra + lp.per_head_mask[None]
    if lp.alibi_slopes is not None:
        i = np.arange(cfg.seq)[:, None] + (cfg.t - cfg.seq)
        j = np.arange(cfg.t)[None, :]
        extra = extra + lp.alibi_slopes[None, :, None, None] * (j - i)[None, None]
    if lp.rel_table is not None:
        extra = extra + lp.rel_table[params.rel_buckets].transpose(2, 0, 1)[None]
    mask = extra if bias is None else bias + extra
    out = F.scaled_dot_product_attention(q, k_rep, v_rep, mask=mask.astype(dtype), scale=scale)
    if cfg.nan_guard:
        out = np.nan_to_num(out, nan=0.0)
    b, _, s, _ = out.shape
    merged = out.transpose(0, 2, 1, 3).reshape(b, s, h * d)
    if cfg.joint_attention:
        pooled = F.linear(merged[:, cfg.seq:], lp.txt_wo).mean(axis=1, keepdims=True)
        return F.linear(merged[:, :cfg.seq], lp.wo, lp.bo) + pooled, presents
    return F.linear(merged, lp.wo, lp.bo), presents


def _norm(cfg: AttentionConfig, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    if cfg.norm == "layer":
        # The LayerNormalization op's epsilon is a float32 attribute; NCHW decomposes it.
        eps = stored(NORM_EPS, "float32" if cfg.layout != "nchw" else cfg.dtype)
        return F.layer_norm(x, weight, bias, eps=eps)
    return F.rms_norm(x, weight, eps=stored(NORM_EPS, cfg.dtype))


def reference(cfg: AttentionConfig, params: ModelParams, feeds: dict, *, dtype=np.float64) -> dict[str, np.ndarray]:
    """Outputs of the model described by ``cfg`` and ``params`` on ``feeds``."""
    x = feeds["hidden_states"].astype(dtype)
    if cfg.layout == "nchw":
        x = x[:, :, 0, :].transpose(0, 2, 1)  # [B, E, 1, S] -> [B, S, E]
    outputs: dict[str, np.ndarray] = {}
    for layer, lp in enumerate(params.layers):
        hn = _norm(cfg, x, lp.norm1, lp.norm1_bias)
        attn, presents = _attention_layer(cfg, params, lp, layer, hn, feeds, dtype)
        outputs.update(presents)
        x = x + attn
        if cfg.mlp:
            h2 = _norm(cfg, x, lp.norm2, lp.norm2_bias)
            gate = F.linear(h2, lp.w_gate)
            silu = gate / (1 + np.exp(-gate))
            x = x + F.linear(silu * F.linear(h2, lp.w_up), lp.w_down)
    if cfg.layout == "nchw":
        x = x.transpose(0, 2, 1)[:, :, None, :]
    outputs["output"] = x
    return outputs
