"""Named example models: tiny stand-ins for the architectures users bring, with encodings.

Each example is an AttentionConfig shaped like its namesake's export (sizes are tiny, the
graph forms are the real ones) and a description. ``write_example(name, outdir)`` writes
``<name>.onnx`` and ``<name>.encodings`` (AIMET 1.0.0 unless asked otherwise) and returns
their paths; the weights and encodings are fixed by the seed, so the files are the same
on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from fuzz.builder import build
from fuzz.config import AttentionConfig
from fuzz.encodings import make_encodings, write_encodings


@dataclass(frozen=True)
class Example:
    config: AttentionConfig
    description: str


_DECODER = dict(batch=1, seq=4, layers=2, mask="causal")

EXAMPLES: dict[str, Example] = {
    "llama2-tiny": Example(
        AttentionConfig(**{**_DECODER, "mask": "causal_padding_input"}, hidden=64, heads=4, kv_heads=4, rope="rotate_half",
                        past=4, past_kv="full"),
        "Llama-2 style: MHA, rotate-half RoPE from position ids, KV cache in and out, int64 padding mask "
        "turned into the causal additive mask in the graph",
    ),
    "llama3-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=8, kv_heads=2, rope="rotate_half", past=4, past_kv="full", gqa_repeat="expand"),
        "Llama-3 style: GQA (8 query / 2 kv heads, repeat_kv), RoPE, KV cache",
    ),
    "qwen3-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=4, kv_heads=2, head_dim=32, rope="rotate_half", qk_norm=True),
        "Qwen3 style: per-head RMSNorm on q and k, GQA, head dim 32 != hidden / heads",
    ),
    "phi3-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=4, kv_heads=4, fused_qkv="slice", rope="half_split", rotary_fraction=0.5),
        "Phi style: one fused qkv projection sliced into q, k, v; partial rotary (half the head dim)",
    ),
    "gpt2-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=4, kv_heads=4, projection="gemm", fused_qkv="split", scaling="div_scores",
                        norm="layer"),
        "GPT-2 style: Gemm projections on 2-D input, fused c_attn split into q, k, v, LayerNorm, no RoPE",
    ),
    "sd21-attn": Example(
        AttentionConfig(batch=1, seq=8, hidden=64, heads=4, kv_heads=4, layers=1, layout="nchw", cross_attention=True,
                        kv_seq=6, mask="none", mlp=False, norm="layer"),
        "Stable Diffusion 2.1 style: NCHW [B, C, 1, L] activations, 1x1 Conv projections, cross-attention",
    ),
    "mistral-tiny": Example(
        AttentionConfig(**{**_DECODER, "mask": "sliding_window"}, window=3, hidden=64, heads=4, kv_heads=2, rope="rotate_half"),
        "Mistral style: sliding-window causal mask, GQA, RoPE",
    ),
    "llama2-lora-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=4, kv_heads=4, rope="rotate_half", layout="mha_conv", lora_rank=4,
                        lora_adaptors=2, lora_alpha_input=True),
        "Llama-2 LoRA as the reference preset sees it: Reshape/Transpose/1x1-Conv projections, two LoRA adaptors "
        "on q, k, v, alpha fed as a graph input",
    ),
    "sd21-lora": Example(
        AttentionConfig(batch=1, seq=8, hidden=64, heads=4, kv_heads=4, layers=1, layout="nchw", cross_attention=True,
                        kv_seq=6, mask="none", mlp=False, norm="layer", lora_rank=4, lora_alpha_input=True),
        "Stable Diffusion 2.1 cross-attention with a LoRA adaptor as 1x1 Convs, alpha fed as a graph input",
    ),
    "bert-tiny": Example(
        AttentionConfig(batch=2, seq=8, hidden=64, heads=4, kv_heads=4, layers=2, mask="padding_input",
                        projection="matmul_bias", norm="layer"),
        "BERT style encoder: int64 padding mask input made additive in the graph, biased projections, LayerNorm",
    ),
    "t5-tiny": Example(
        AttentionConfig(batch=1, seq=8, hidden=64, heads=4, kv_heads=4, layers=2, mask="none", relative_bias=True,
                        scaling="none"),
        "T5 style encoder: relative position bias per head (a Gather from a table), no score scaling",
    ),
    "bloom-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=4, kv_heads=4, alibi=True, projection="matmul_bias", norm="layer"),
        "BLOOM style decoder: ALiBi per-head position bias, biased projections, LayerNorm",
    ),
    "opset23-tiny": Example(
        AttentionConfig(**_DECODER, hidden=64, heads=4, kv_heads=2, rope="rotary_op", attention_op=True, past=4, past_kv="full"),
        "ONNX opset 23: RotaryEmbedding and Attention ops, GQA, KV cache",
    ),
}


def write_example(name: str, outdir, *, version: str = "1.0.0", seed: int = 0) -> dict[str, Path]:
    """Write ``<name>.onnx`` and ``<name>.encodings`` into ``outdir``; return their paths."""
    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; one of {', '.join(EXAMPLES)}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    built = build(EXAMPLES[name].config, seed=seed)
    model_path = out / f"{name}.onnx"
    onnx.save_model(built.model, model_path)
    encodings_path = write_encodings(make_encodings(built, version=version, seed=seed), out / f"{name}.encodings")
    return {"model": model_path, "encodings": encodings_path}
