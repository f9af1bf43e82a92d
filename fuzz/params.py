"""The parameters of a built model, by role, drawn so that attention is peaked.

Random-initialised attention is nearly uniform, and a wrong head then barely moves the
output (see DESIGN.md testing notes): q/k weights are scaled so that scores have a
standard deviation of about 2, so that swapping two heads or dropping a mask is visible.
All parameters are float64 masters; the builder writes them in the model's dtype and the
closed-form reference reads the same (rounded) values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fuzz.config import AttentionConfig
from refimpl.functional import alibi_slopes


@dataclass
class LoraParams:
    a: np.ndarray  # [in, r]
    b: np.ndarray  # [r, out]


@dataclass
class LayerParams:
    norm1: np.ndarray
    norm2: np.ndarray
    wq: np.ndarray  # [E, H*D]
    wk: np.ndarray  # [E, KV*D]
    wv: np.ndarray  # [E, KV*D]
    wo: np.ndarray  # [H*D, E]
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    bo: np.ndarray | None = None
    lora: dict[str, list[LoraParams]] = field(default_factory=dict)  # "q"/"k"/"v" -> adaptors
    lora_alpha: list[float] = field(default_factory=list)
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    per_head_mask: np.ndarray | None = None  # [H, S, T] additive
    alibi_slopes: np.ndarray | None = None  # [H]
    rel_table: np.ndarray | None = None  # [buckets, H]
    w_gate: np.ndarray | None = None
    w_up: np.ndarray | None = None
    w_down: np.ndarray | None = None
    norm1_bias: np.ndarray | None = None  # LayerNorm only
    norm2_bias: np.ndarray | None = None
    txt_wq: np.ndarray | None = None  # joint attention: the text stream's projections ([E, H*D], [E, KV*D] x 2)
    txt_wk: np.ndarray | None = None
    txt_wv: np.ndarray | None = None
    txt_wo: np.ndarray | None = None  # [H*D, E]


@dataclass
class ModelParams:
    layers: list[LayerParams]
    inv_freq: np.ndarray | None = None  # [R/2] for in-graph RoPE
    rope_cache_positions: int = 0
    rel_buckets: np.ndarray | None = None  # [S, T] int64 bucket ids


NORM_EPS = 1e-6  # every norm's epsilon (the graph stores it in the model dtype, or float32 attributes)


def stored(value, dtype: str) -> float:
    """A constant as the graph holds it: rounded to the model dtype (float16 or float32)."""
    return float(np.asarray(value, dtype=np.float16 if dtype == "float16" else np.float32))


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    """Parameters as the model stores them (float16 models store rounded values)."""
    return x.astype(np.float16).astype(np.float64) if dtype == "float16" else x.astype(np.float32).astype(np.float64)


def draw_params(cfg: AttentionConfig, seed: int) -> ModelParams:
    rng = np.random.default_rng(seed)
    e, h, kv, d = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.d
    inter = 2 * e

    def w(shape, std):
        return _round(rng.standard_normal(shape) * std, cfg.dtype)

    qk_std = 1.4 / math.sqrt(e)
    layers = []
    for _ in range(cfg.layers):
        lp = LayerParams(
            norm1=_round(1.0 + 0.1 * rng.standard_normal(e), cfg.dtype),
            norm2=_round(1.0 + 0.1 * rng.standard_normal(e), cfg.dtype),
            wq=w((e, h * d), qk_std),
            wk=w((e, kv * d), qk_std),
            wv=w((e, kv * d), 1.0 / math.sqrt(e)),
            wo=w((h * d, e), 1.0 / math.sqrt(h * d)),
        )
        if cfg.projection in ("matmul_bias", "gemm", "gemm_transb") or cfg.layout == "nchw":
            lp.bq, lp.bk, lp.bv = w(h * d, 0.5), w(kv * d, 0.5), w(kv * d, 0.5)
            lp.bo = w(e, 0.1)
        if cfg.lora_rank:
            for role, out in (("q", h * d), ("k", kv * d), ("v", kv * d)):
                lp.lora[role] = [LoraParams(w((e, cfg.lora_rank), 1.0 / math.sqrt(e)), w((cfg.lora_rank, out), 0.5)) for _ in range(cfg.lora_adaptors)]
            lp.lora_alpha = [float(_round(np.array(0.5 + 0.5 * k), cfg.dtype)) for k in range(cfg.lora_adaptors)]
        if cfg.qk_norm:
            qn, kn = (h * d, kv * d) if cfg.qk_norm_full else (d, d)  # full width: one weight per channel
            lp.q_norm, lp.k_norm = _round(1.0 + 0.2 * rng.standard_normal(qn), cfg.dtype), _round(1.0 + 0.2 * rng.standard_normal(kn), cfg.dtype)
        if cfg.mask == "per_head":
            lp.per_head_mask = _round(2.0 * rng.standard_normal((h, cfg.seq, cfg.t)), cfg.dtype)
        if cfg.alibi:
            lp.alibi_slopes = _round(alibi_slopes(h), cfg.dtype)
        if cfg.relative_bias:
            lp.rel_table = w((8, h), 1.0)
        if cfg.mlp:
            lp.w_gate, lp.w_up, lp.w_down = w((e, inter), 1 / math.sqrt(e)), w((e, inter), 1 / math.sqrt(e)), w((inter, e), 1 / math.sqrt(inter))
        if cfg.norm == "layer":  # drawn last: RMSNorm models keep the weights of earlier versions
            lp.norm1_bias, lp.norm2_bias = w(e, 0.1), w(e, 0.1)
        if cfg.joint_attention:  # drawn after everything else: other models keep their weights
            lp.txt_wq, lp.txt_wk, lp.txt_wv = (w((e, n * d), 2.0 / math.sqrt(e)) for n in (h, kv, kv))
            lp.txt_wo = w((h * d, e), 1.0 / math.sqrt(h * d))
        layers.append(lp)
    mp = ModelParams(layers)
    if cfg.rope in ("rotate_half", "rotary_op"):
        r = cfg.rotary_dim
        mp.inv_freq = _round(1.0 / (10000.0 ** (np.arange(0, r, 2) / r)), cfg.dtype)  # stored as a constant
        mp.rope_cache_positions = cfg.past + cfg.seq + 4
    if cfg.relative_bias:
        i = np.arange(cfg.seq)[:, None] + (cfg.t - cfg.seq)
        j = np.arange(cfg.t)[None, :]
        mp.rel_buckets = np.clip(j - i + 4, 0, 7).astype(np.int64)
    return mp
