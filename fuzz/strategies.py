"""hypothesis strategies over attention models.

Sizes are drawn first and the rest derived from them (query heads = kv heads x group);
then every axis of variation is drawn, and choices that cannot go together are resolved
by explicit rules (``_reconcile``), so every drawn configuration is valid and nothing is
filtered away silently. Tests pin any field by passing it: ``attention_configs(rope="none")``.
"""

from __future__ import annotations

from hypothesis import strategies as st

from fuzz.config import FUSED, GQA_REPEATS, HEAD_SPLITS, MASKS, PAST_KV, PROJECTIONS, ROPES, SCALINGS, AttentionConfig


def _reconcile(c: dict) -> dict:
    """Resolve combinations the builder does not describe, in a fixed order."""
    if c["layout"] == "nchw":
        c.update(projection="matmul", head_split="reshape_transpose", lora_rank=0, rope="none", qk_norm=False, past_kv="none", past=0, fused_qkv="none", attention_op=False)
        if c["gqa_repeat"] == "broadcast":
            c["gqa_repeat"] = "expand"
    if c["layout"] == "mha_conv":
        c.update(projection="matmul", fused_qkv="none", attention_op=False)
    if c["attention_op"]:
        c.update(head_split="reshape_transpose", alibi=False, relative_bias=False, softmax_cast=False, nan_guard=False, layout="linear", cross_attention=False)
        if c["scaling"] not in ("div_scores", "none"):
            c["scaling"] = "div_scores"
        if c["mask"] not in ("none", "causal", "additive_input", "bool_input"):
            c["mask"] = "causal"
        if c["past_kv"] not in ("none", "full"):
            c["past_kv"] = "full"
    if c["cross_attention"]:
        c.update(rope="none", past_kv="none", past=0, fused_qkv="none")
        if c["mask"] not in ("none", "additive_input", "bool_input"):
            c["mask"] = "none"
    if c["fused_qkv"] != "none":
        c["lora_rank"] = 0
        if c["layout"] != "linear":
            c["fused_qkv"] = "none"
    if c["fused_qkv"] == "gather" and c["kv_heads"] != c["heads"]:
        c["fused_qkv"] = "split"
    if c["lora_rank"] and c["projection"] not in ("matmul", "matmul_bias"):
        c["projection"] = "matmul"
    if c["lora_rank"] and c["layout"] != "linear":
        c["lora_rank"] = 0
    if c["head_split"] == "folded":
        if c["kv_heads"] != c["heads"] or c["attention_op"] or c["mask"] not in ("none", "causal", "sliding_window"):
            c["head_split"] = "reshape_transpose"
        elif c["batch"] > 1:
            c.update(alibi=False, relative_bias=False)
            if c["mask"] == "per_head":
                c["mask"] = "causal"
    if c["head_split"] == "fused_kt" and (c["rope"] != "none" or c["qk_norm"]):
        c["head_split"] = "reshape_transpose"
    if c["gqa_repeat"] == "broadcast" and c["heads"] > c["kv_heads"] and c["head_split"] != "reshape_transpose":
        c["gqa_repeat"] = "expand"
    if c["past_kv"] == "none":
        c["past"] = 0
    elif c["past_kv"] == "full_transposed_key":
        if c["head_split"] not in ("reshape_transpose", "fused_kt"):
            c["head_split"] = "reshape_transpose"
        if c["gqa_repeat"] == "broadcast" and c["heads"] > c["kv_heads"]:
            c["gqa_repeat"] = "expand"
    return c


@st.composite
def attention_configs(draw, **fixed) -> AttentionConfig:
    """Valid AttentionConfigs; keyword arguments pin fields (applied before reconciling)."""
    kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    heads = kv * group
    d = draw(st.sampled_from([4, 6, 8]))
    custom_head_dim = draw(st.booleans())
    hidden = heads * d if not custom_head_dim else draw(st.sampled_from([8, 12, 16, 24]))
    c = dict(
        batch=draw(st.integers(1, 2)),
        seq=draw(st.integers(1, 5)),
        past=draw(st.integers(1, 3)),
        hidden=hidden,
        heads=heads,
        kv_heads=kv,
        head_dim=d if custom_head_dim else None,
        layers=draw(st.integers(1, 2)),
        dynamic=draw(st.booleans()),
        layout=draw(st.sampled_from(["linear", "linear", "linear", "nchw", "mha_conv"])),
        projection=draw(st.sampled_from(PROJECTIONS)),
        fused_qkv=draw(st.sampled_from(FUSED)),
        cross_attention=draw(st.booleans()) and draw(st.booleans()),
        head_split=draw(st.sampled_from(HEAD_SPLITS)),
        reshape_minus_one=draw(st.booleans()),
        scaling=draw(st.sampled_from(SCALINGS)),
        mask=draw(st.sampled_from(MASKS)),
        softmax_cast=draw(st.booleans()),
        nan_guard=draw(st.booleans()),
        rope=draw(st.sampled_from(ROPES)),
        rotary_fraction=draw(st.sampled_from([1.0, 1.0, 0.5])),
        gqa_repeat=draw(st.sampled_from(GQA_REPEATS)),
        past_kv=draw(st.sampled_from(PAST_KV)),
        lora_rank=draw(st.sampled_from([0, 0, 0, 2])),
        lora_adaptors=draw(st.integers(1, 2)),
        lora_alpha_input=draw(st.booleans()),
        alibi=draw(st.booleans()) and draw(st.booleans()),
        qk_norm=draw(st.booleans()) and draw(st.booleans()),
        relative_bias=draw(st.booleans()) and draw(st.booleans()),
        attention_op=draw(st.booleans()) and draw(st.booleans()),
        names=draw(st.sampled_from(["readable", "opaque"])),
        shuffle=draw(st.booleans()) and draw(st.booleans()),
    )
    if c["cross_attention"]:
        c["kv_seq"] = draw(st.integers(1, 5))
    if c["mask"] == "sliding_window":
        c["window"] = draw(st.integers(1, 3))
    c.update(fixed)
    c = _reconcile(c)
    c.update(fixed)  # what the caller pinned wins over reconciliation
    return AttentionConfig(**c).validate()
