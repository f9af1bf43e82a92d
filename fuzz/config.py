"""AttentionConfig: one attention model, every axis of variation an exporter produces.

Sizes first (batch, sequence, past, hidden, heads, kv heads, head dim, layers), then
independent choices of how each part is expressed in ONNX. ``validate()`` rejects
combinations that do not describe a real model, with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

LAYOUTS = ("linear", "nchw", "mha_conv")
PROJECTIONS = ("matmul", "matmul_bias", "gemm", "gemm_transb")
FUSED = ("none", "split", "slice", "gather", "gather_mid", "grouped")
# gather_mid: [B, S, H, 3, D] then Gather on axis 3 (Bloom); grouped: [B, S, KV, H/KV + 2, D] then
# Slices on axis 3 (Falcon's new decoder architecture).
HEAD_SPLITS = ("reshape_transpose", "fused_kt", "folded")
SCALINGS = ("div_scores", "mul_scores", "mul_q", "mul_qk", "none", "shape")
MASKS = ("none", "causal", "additive_input", "bool_input", "per_head", "sliding_window", "padding_input", "causal_padding_input")
# padding_input: an int64 [B, T] padding mask (1 = attend) turned into the additive [B, 1, S, T]
# mask in the graph, as HF TorchScript exports do (encoders; causal_padding_input adds the
# causal constant, decoders).
PADDING_MASKS = ("padding_input", "causal_padding_input")
ROPES = ("none", "rotate_half", "half_split", "interleaved", "rotary_op")
GQA_REPEATS = ("expand", "tile", "broadcast", "mqa_broadcast")
# mqa_broadcast: one kv head that exists only as a broadcast axis of MatMul (Falcon / BigCode MQA).
PAST_KV = ("none", "full", "new_only", "full_transposed_key")
NORMS = ("rms", "layer")  # between layers: RMSNorm (Llama) or LayerNorm with bias (GPT-2, BERT)
OPSETS = tuple(range(17, 24))


class ConfigError(ValueError):
    """The configuration does not describe a consistent model."""


@dataclass(frozen=True)
class AttentionConfig:
    # sizes
    batch: int = 1
    seq: int = 4
    past: int = 0
    hidden: int = 32
    heads: int = 4
    kv_heads: int = 4
    head_dim: int | None = None  # default hidden // heads
    layers: int = 1
    dtype: str = "float32"  # or "float16" (weights and activations)
    dynamic: bool = False  # symbolic batch / sequence dimensions
    # how it is expressed
    layout: str = "linear"
    projection: str = "matmul"
    fused_qkv: str = "none"
    cross_attention: bool = False
    # Joint attention (SD3 MMDiT): a text stream (encoder_hidden_states, kv_seq tokens) with its
    # own q/k/v projections, concatenated with the image stream on the sequence axis after the
    # head split; the text rows of the result are pooled into the image rows' output.
    joint_attention: bool = False
    kv_seq: int | None = None  # cross-attention source length (default seq)
    head_split: str = "reshape_transpose"
    folded_view: bool = False  # folded heads: masks and biases added in a [B, H, S, T] view (BART)
    probs_view: bool = False  # softmax over [B, H, S, T], then probabilities and V folded to [B*H, ...] (Bloom TorchScript)
    reshape_minus_one: bool = False
    scaling: str = "div_scores"
    mask: str = "causal"
    window: int = 2  # sliding window size
    mask_fill: float = -1.0e4
    softmax_cast: bool = False
    nan_guard: bool = False
    rope: str = "none"
    rotary_fraction: float = 1.0  # partial rotary: fraction of the head dim rotated
    gqa_repeat: str = "expand"
    past_kv: str = "none"
    lora_rank: int = 0
    lora_adaptors: int = 1
    lora_alpha_input: bool = False
    alibi: bool = False
    qk_norm: bool = False
    qk_norm_full: bool = False  # the q/k norm spans the full projection width H*D, before the head split (OLMo-2)
    relative_bias: bool = False
    attention_op: bool = False  # the opset-23 Attention op as the core
    mlp: bool = True
    norm: str = "rms"
    target_opset: int | None = None  # None: 17 (TorchScript-like), 23 when an opset-23 op is used
    # naming and order
    names: str = "readable"  # or "opaque" (onnx::MatMul_597, val_39)
    shuffle: bool = False

    # -- derived sizes -------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def rotary_dim(self) -> int:
        r = int(round(self.d * self.rotary_fraction))
        return r - r % 2

    @property
    def t(self) -> int:
        """Key length: cross-attention source, else past + new."""
        if self.cross_attention:
            return self.kv_seq if self.kv_seq is not None else self.seq
        if self.joint_attention:
            return self.seq + self.text_len
        return self.past + self.seq

    @property
    def text_len(self) -> int:
        """Joint attention: tokens of the text stream (encoder_hidden_states)."""
        return self.kv_seq if self.kv_seq is not None else self.seq

    @property
    def has_past(self) -> bool:
        return self.past_kv != "none"

    @property
    def needs_opset_23(self) -> bool:
        return self.rope == "rotary_op" or self.attention_op

    @property
    def opset(self) -> int:
        if self.target_opset is not None:
            return self.target_opset
        return 23 if self.needs_opset_23 else 17

    def with_(self, **changes) -> AttentionConfig:
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> AttentionConfig:
        def need(cond: bool, why: str) -> None:
            if not cond:
                raise ConfigError(why)

        for name, allowed in (
            ("layout", LAYOUTS), ("projection", PROJECTIONS), ("fused_qkv", FUSED), ("head_split", HEAD_SPLITS),
            ("scaling", SCALINGS), ("mask", MASKS), ("rope", ROPES), ("gqa_repeat", GQA_REPEATS), ("past_kv", PAST_KV),
            ("norm", NORMS),
        ):
            need(getattr(self, name) in allowed, f"{name} must be one of {allowed}")
        need(self.heads % self.kv_heads == 0, "heads must be a multiple of kv heads")
        need(self.batch >= 1 and self.seq >= 1 and self.layers >= 1, "sizes must be positive")
        need(self.d >= 2 and self.d % 2 == 0, "head dim must be even (RoPE pairs)")
        need(self.dtype in ("float32", "float16"), "dtype is float32 or float16")
        need(self.names in ("readable", "opaque"), "names is readable or opaque")
        need(self.target_opset is None or self.target_opset in OPSETS, f"target_opset must be one of {OPSETS}")
        need(self.opset >= 23 or not self.needs_opset_23, "the RotaryEmbedding and Attention ops need opset 23")
        if self.head_dim is None:
            need(self.hidden % self.heads == 0, "hidden must be a multiple of heads when head_dim is not given")
        if self.rope != "none":
            need(self.rotary_dim >= 2, "rotary dim must be at least 2")
            need(not self.cross_attention, "RoPE is not used with cross-attention")
        need(self.past == 0 or self.has_past, "past length needs a past_kv form")
        if self.has_past:
            need(not self.cross_attention, "past KV is for self-attention")
        if self.cross_attention:
            need(self.mask in ("none", "additive_input", "bool_input", "padding_input"), "cross-attention takes no causal mask")
        if self.fused_qkv != "none":
            need(not self.cross_attention, "fused QKV reads one input")
            need(self.layout == "linear", "fused QKV is built for the linear layout")
            need(self.projection in ("matmul", "matmul_bias", "gemm", "gemm_transb"), "fused QKV needs a linear projection")
        if self.fused_qkv in ("gather", "gather_mid"):
            need(self.kv_heads == self.heads, "the [B, S, 3, H, D] Gather form needs kv heads == heads")
        if self.joint_attention:
            need(not self.cross_attention and not self.has_past and self.mask == "none", "joint attention is bidirectional over both streams, without a cache")
            need(self.layout == "linear" and self.fused_qkv == "none" and self.head_split == "reshape_transpose", "joint attention is built with plain linear projections and head splits")
            need(self.rope == "none" and not self.qk_norm and not self.lora_rank and not self.attention_op and not self.probs_view,
                 "joint attention is built without RoPE, q/k norm, LoRA, the Attention op or a probabilities view")
            need(not (self.alibi or self.relative_bias), "joint attention takes no per-head bias")
        if self.fused_qkv == "grouped":
            need(self.gqa_repeat != "tile" or self.group == 1, "the grouped fused layout holds kv group h // n: not a Tile repeat (h % KV)")
        if self.gqa_repeat == "mqa_broadcast":
            need(self.kv_heads == 1, "the broadcast multi-query form has one kv head")
        if self.probs_view:
            need(self.head_split == "reshape_transpose" and self.layout == "linear", "the probabilities view folds plain [B, H, S, T] heads")
            need(not self.attention_op, "the probabilities view needs a Softmax core")
            need(self.gqa_repeat in ("expand", "tile") or self.group == 1, "the probabilities view folds V with every query head: kv heads repeated, not broadcast")
        if self.qk_norm_full:
            need(self.qk_norm, "qk_norm_full is a form of qk_norm")
            need(self.layout == "linear", "the full-width q/k norm is built for the linear layout")
        if self.layout == "nchw":
            need(self.projection == "matmul", "the NCHW layout uses 1x1 Conv projections (projection=matmul)")
            need(self.head_split == "reshape_transpose", "the NCHW layout has its own head split")
            need(self.rope == "none" and not self.qk_norm and not self.has_past, "the NCHW layout is built like SD attention: no RoPE, q/k norm or cache")
            need(self.gqa_repeat != "broadcast" or self.group == 1, "the NCHW layout repeats kv heads with Expand or Tile")
        if self.layout == "mha_conv":
            need(self.projection == "matmul" and self.fused_qkv == "none", "mha-conv replaces MatMul projections")
        if self.head_split == "folded":
            need(self.kv_heads == self.heads, "heads folded into batch are built without GQA")
            need(not self.attention_op, "folded heads use a Softmax core")
            if not self.folded_view:
                need(self.mask in ("none", "causal", "sliding_window"),
                     "folded heads take constant [S, T] masks (folded_view=True adds any mask in a [B, H, S, T] view)")
                need((self.batch == 1 and not self.dynamic) or not (self.alibi or self.relative_bias),
                     "per-head biases on folded scores need a static batch of 1 (or folded_view=True)")
        else:
            need(not self.folded_view, "folded_view is for folded heads")
        if self.gqa_repeat == "broadcast" and self.group > 1:
            need(self.head_split == "reshape_transpose", "the 5-D broadcast GQA form uses plain head splits")
        if self.attention_op:
            need(self.scaling in ("div_scores", "none"), "the Attention op has one scale attribute")
            need(self.mask in ("none", "causal", "additive_input", "bool_input", *PADDING_MASKS), "Attention op masks: causal flag or an input")
            need(not (self.alibi or self.relative_bias), "biases go through attn_mask; not built with the Attention op")
            need(not self.softmax_cast and not self.nan_guard, "the Attention op has no visible softmax")
            need(self.past_kv in ("none", "full"), "the Attention op returns the full cache")
            need(self.head_split == "reshape_transpose", "the Attention op reads [B, H, S, D]")
            need(self.layout == "linear", "the Attention op is built for the linear layout")
        if self.head_split == "fused_kt":
            need(self.rope == "none" and (not self.qk_norm or self.qk_norm_full), "a fused K transpose leaves no [.., S, D] key for RoPE or q/k norm")
        if self.past_kv == "full_transposed_key":
            need(self.head_split in ("reshape_transpose", "fused_kt"), "the transposed key cache needs K^T from a plain split")
            need(self.gqa_repeat != "broadcast" or self.group == 1, "transposed key cache with broadcast GQA is not built")
        if self.lora_rank:
            need(self.fused_qkv == "none", "LoRA is built on separate q/k/v projections")
            need(self.projection in ("matmul", "matmul_bias"), "LoRA is built on MatMul (or 1x1 Conv) projections")
        if self.mask == "sliding_window":
            need(not self.cross_attention, "sliding window is causal")
        return self
