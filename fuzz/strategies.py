"""hypothesis strategies over attention models and their encodings.

Sizes are drawn first and the rest derived from them (query heads = kv heads x group);
then every axis of variation is drawn, and combinations that do not describe a model are
resolved by explicit rules (fuzz.repair), never filtered away. Tests pin any field by
passing a value or a strategy: ``attention_configs(rope="rotate_half")``,
``attention_configs(mask=st.sampled_from(["causal", "bool_input"]))``; pinned fields are
never changed by the rules.

One strategy per graph family (LLM decoders, encoders, diffusion NCHW blocks, opset-23
graphs) narrows the draws to what that family's exporters write. Sizes stay small (heads
1-8, head dim 4-16, sequence 1-8) so that property suites are fast. Tests should
``note(repr(config))``: the dataclass repr is the complete configuration.
"""

from __future__ import annotations

from hypothesis import strategies as st

from fuzz.config import (
    FUSED,
    GQA_REPEATS,
    HEAD_SPLITS,
    MASKS,
    NORMS,
    PAST_KV,
    PROJECTIONS,
    ROPES,
    SCALINGS,
    AttentionConfig,
)
from fuzz.encodings import WEIGHT_KINDS, EncodingScheme
from fuzz.repair import reconcile

__all__ = [
    "attention_configs",
    "decoder_configs",
    "encoder_configs",
    "diffusion_configs",
    "opset23_configs",
    "encoding_schemes",
    "encoding_versions",
]


def _rare(draw) -> bool:
    """True about a quarter of the time: features that would otherwise crowd the draws."""
    return draw(st.booleans()) and draw(st.booleans())


def _resolve(draw, value):
    return draw(value) if isinstance(value, st.SearchStrategy) else value


def attention_configs(**fixed) -> st.SearchStrategy[AttentionConfig]:
    """Valid AttentionConfigs of every family; keyword arguments pin fields (values or strategies)."""
    return _configs(fixed, {})


@st.composite
def _configs(draw, fixed: dict, preferred: dict) -> AttentionConfig:
    """Draw every field; ``fixed`` fields are pinned, ``preferred`` ones replace the free draw
    but may still be changed by the consistency rules (a family's usual, not its definition)."""
    pins = {k: _resolve(draw, v) for k, v in fixed.items()}
    if "heads" in pins:
        heads = pins["heads"]
        kv = pins.get("kv_heads", draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0])))
    else:
        kv = pins.get("kv_heads", draw(st.integers(1, 4)))
        heads = kv * draw(st.sampled_from([g for g in (1, 2, 3, 4) if kv * g <= 8] or [1]))
    # Half the time head_dim is given explicitly and hidden drawn apart from heads x head_dim.
    if "head_dim" in pins:
        custom_head_dim = pins["head_dim"] is not None
        d = pins["head_dim"]
    else:
        uneven = "hidden" in pins and (pins["hidden"] % heads or (pins["hidden"] // heads) % 2)
        custom_head_dim = draw(st.booleans()) or bool(uneven)
        d = draw(st.sampled_from([4, 6, 8, 12, 16]))
    if "hidden" in pins:
        hidden = pins["hidden"]
    else:
        hidden = draw(st.sampled_from([8, 12, 16, 24, 32])) if custom_head_dim else heads * d
    c = dict(
        batch=draw(st.integers(1, 2)),
        seq=draw(st.integers(1, 8)),
        past=draw(st.integers(1, 4)),
        hidden=hidden,
        heads=heads,
        kv_heads=kv,
        head_dim=d if custom_head_dim else None,
        layers=draw(st.integers(1, 2)),
        dtype="float16" if draw(st.integers(0, 9)) == 0 else "float32",
        dynamic=draw(st.booleans()),
        layout=draw(st.sampled_from(["linear", "linear", "linear", "nchw", "mha_conv"])),
        projection=draw(st.sampled_from(PROJECTIONS)),
        fused_qkv=draw(st.sampled_from(FUSED)),
        cross_attention=_rare(draw),
        joint_attention=_rare(draw) and _rare(draw),
        head_split=draw(st.sampled_from(HEAD_SPLITS)),
        folded_view=draw(st.booleans()),
        probs_view=_rare(draw),
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
        alibi=_rare(draw),
        qk_norm=_rare(draw),
        qk_norm_full=_rare(draw),
        relative_bias=_rare(draw),
        attention_op=_rare(draw),
        norm=draw(st.sampled_from(NORMS)),
        target_opset=draw(st.sampled_from([None, None, None, 18, 21, 23])),
        names=draw(st.sampled_from(["readable", "opaque"])),
        shuffle=_rare(draw),
    )
    if c["cross_attention"] or pins.get("cross_attention") or c.get("joint_attention") or pins.get("joint_attention"):
        c["kv_seq"] = draw(st.integers(1, 8))
    if c["mask"] == "sliding_window" or pins.get("mask") == "sliding_window":
        c["window"] = draw(st.integers(1, 4))
    c.update({k: _resolve(draw, v) for k, v in preferred.items() if k not in pins})
    c.update(pins)
    return AttentionConfig(**reconcile(c, set(pins))).validate()


def decoder_configs(**fixed) -> st.SearchStrategy[AttentionConfig]:
    """LLM decoders (Llama, Qwen, Mistral, Phi, Gemma exports): causal, RoPE, KV cache, GQA."""
    family = dict(
        cross_attention=False,
        rope=st.sampled_from(["rotate_half", "rotate_half", "half_split", "interleaved", "rotary_op"]),
        mask=st.sampled_from(["causal", "additive_input", "bool_input", "sliding_window", "causal_padding_input"]),
    )
    usual = dict(
        layout=st.sampled_from(["linear", "linear", "mha_conv"]),
        past_kv=st.sampled_from(PAST_KV),
        head_split=st.sampled_from(["reshape_transpose", "reshape_transpose", "folded"]),
        norm="rms",
    )
    return _configs({**family, **fixed}, usual)


def encoder_configs(**fixed) -> st.SearchStrategy[AttentionConfig]:
    """Encoders (BERT, ViT, T5 encoder exports): bidirectional, LayerNorm, biased projections."""
    family = dict(layout="linear", rope="none", past_kv="none", past=0, attention_op=False, cross_attention=False)
    usual = dict(
        mask=st.sampled_from(["none", "additive_input", "bool_input", "padding_input"]),
        projection=st.sampled_from(["matmul_bias", "gemm", "gemm_transb"]),
        norm="layer",
    )
    return _configs({**family, **fixed}, usual)


def diffusion_configs(**fixed) -> st.SearchStrategy[AttentionConfig]:
    """Stable-Diffusion-style blocks: NCHW [B, C, 1, L] with 1x1 Conv projections, self or cross."""
    usual = dict(mask="none", cross_attention=st.booleans(), norm="layer")
    return _configs({"layout": "nchw", **fixed}, usual)


def opset23_configs(**fixed) -> st.SearchStrategy[AttentionConfig]:
    """Graphs using the opset-23 RotaryEmbedding and/or Attention ops."""

    @st.composite
    def draw_config(draw):
        use_attention = draw(st.booleans())
        rope = "rotary_op" if not use_attention or draw(st.booleans()) else draw(st.sampled_from(["none", "rotate_half"]))
        family = dict(layout="linear", target_opset=23, attention_op=use_attention, rope=rope, cross_attention=False)
        return draw(_configs({**family, **fixed}, {}))

    return draw_config()


def encoding_versions() -> st.SearchStrategy[str]:
    return st.sampled_from(["0.6.1", "1.0.0", "2.0.0"])


@st.composite
def encoding_schemes(draw, version: str | None = None, **fixed) -> EncodingScheme:
    """How a drawn model is quantized (for fuzz.make_encodings); valid for ``version``."""
    blocked = version != "0.6.1"
    weights = draw(st.sampled_from([*WEIGHT_KINDS, "mixed"] if blocked else ["per_tensor", "per_channel", "mixed"]))
    symmetric = weights in ("per_block", "lpbq") or draw(st.integers(0, 3)) > 0
    values = dict(
        activation_bitwidth=draw(st.sampled_from([8, 16, "mixed"])),
        activation_symmetric=draw(st.integers(0, 4)) == 0,
        weights=weights,
        weight_bitwidth=draw(st.sampled_from([8, 8, 4])) if weights == "per_channel" else 8,  # 4-bit per-tensor: unrealistic
        weight_symmetric=symmetric,
        block_size=draw(st.sampled_from([2, 4, 8])),
        other_params=draw(st.booleans()),
        bias=draw(st.booleans()),
        float16_fraction=draw(st.sampled_from([0.0, 0.0, 0.2])),
        data_movement_outputs=draw(st.sampled_from([None, True, False])),
        group_matmul_add=draw(st.booleans()),
        exclude_nodes=draw(st.sampled_from([0, 0, 2])),
    )
    values.update({k: _resolve(draw, v) for k, v in fixed.items()})
    scheme = EncodingScheme(**values)
    return scheme.validate(version) if version else scheme
