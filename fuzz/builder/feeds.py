"""Valid inputs for a built model: positions in range, masks that leave every row a key,
caches of the right layout."""

from __future__ import annotations

import numpy as np

from fuzz.config import AttentionConfig


def make_feeds(cfg: AttentionConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dt = np.float16 if cfg.dtype == "float16" else np.float32
    b, s, e, t = cfg.batch, cfg.seq, cfg.hidden, cfg.t
    feeds = {}
    if cfg.layout == "nchw":
        feeds["hidden_states"] = rng.standard_normal((b, e, 1, s)).astype(dt)
    else:
        feeds["hidden_states"] = rng.standard_normal((b, s, e)).astype(dt)
    if cfg.cross_attention or cfg.joint_attention:
        n = cfg.text_len if cfg.joint_attention else t
        shape = (b, e, 1, n) if cfg.layout == "nchw" else (b, n, e)
        feeds["encoder_hidden_states"] = rng.standard_normal(shape).astype(dt)
    if cfg.rope in ("rotate_half", "rotary_op"):
        feeds["position_ids"] = np.tile(np.arange(cfg.past, cfg.past + s, dtype=np.int64), (b, 1))
    if cfg.rope in ("half_split", "interleaved"):
        angles = np.arange(cfg.past, cfg.past + s)[:, None] * (1.0 / 10000 ** (np.arange(0, cfg.rotary_dim, 2) / cfg.rotary_dim))
        angles = np.broadcast_to(angles, (b, s, cfg.rotary_dim // 2))
        feeds["cos"], feeds["sin"] = np.cos(angles).astype(dt), np.sin(angles).astype(dt)
    if cfg.mask == "additive_input":
        m = np.where(rng.random((b, 1, s, t)) < 0.8, 0.0, cfg.mask_fill)
        m[..., -1] = 0.0
        feeds["attention_mask"] = m.astype(dt)
    elif cfg.mask == "bool_input":
        m = rng.random((b, 1, s, t)) < 0.8
        m[..., -1] = True
        feeds["attention_mask"] = m
    elif cfg.mask in ("padding_input", "causal_padding_input"):
        # Left padding that leaves every query row a key it may attend (the first query of a
        # causal self-attention sees keys 0..past).
        most = cfg.past if cfg.mask == "causal_padding_input" else t - 1
        pads = rng.integers(0, most + 1, size=b)
        feeds["attention_mask"] = (np.arange(t)[None, :] >= pads[:, None]).astype(np.int64)
    if cfg.has_past:
        for layer in range(cfg.layers):
            shape = (b, cfg.kv_heads, cfg.d, cfg.past) if cfg.past_kv == "full_transposed_key" else (b, cfg.kv_heads, cfg.past, cfg.d)
            feeds[f"past_key_{layer}"] = rng.standard_normal(shape).astype(dt)
            feeds[f"past_value_{layer}"] = rng.standard_normal((b, cfg.kv_heads, cfg.past, cfg.d)).astype(dt)
    if cfg.lora_alpha_input:
        feeds["lora_alpha"] = np.array([0.5], dtype=dt)
    return feeds
