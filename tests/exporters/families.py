"""Tiny random-initialised models of every major transformer family, exported with torch.onnx.

One table (FAMILIES) says how each family is built from a config (no download); cases()
crosses it with the exporters (TorchScript opset 17, dynamo opset 18 and 23), the attention
implementations (eager, sdpa) and the modes (prefill; decode with a KV cache where the family
has one). ``evaluate`` applies the oracle to one case:

- converted: the conversion exits 0 (api.convert with its verification);
- equivalent: onnxruntime on the converted model equals onnxruntime on the export, and both
  equal the float64 reference interpreter's run of the export (refimpl, the truth);
- single-head: every attention core of the output computes one head, and the cores together
  compute as many heads as the export's (counted from the run-time score shapes, independently
  of the converter).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOCAB = 128
BATCH, SEQ, PAST = 2, 7, 5
EXPORTERS = {"ts17": (False, 17), "dynamo18": (True, 18), "dynamo23": (True, 23)}


def _llm(arch: str, **overrides) -> dict:
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=False)
    base.update(overrides)
    return {"arch": arch, "config": base}


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # causal | encoder | vision | whisper | unet | sd3 | flux
    build: dict = field(default_factory=dict, hash=False, compare=False)
    cache: bool = False
    attns: tuple[str, ...] = ("eager", "sdpa")
    note: str = ""
    load: dict = field(default_factory=dict, hash=False, compare=False)  # extra from_config arguments


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("gpt_bigcode", "causal", {"arch": "gpt_bigcode", "config": dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, multi_query=True)}, cache=True, note="fused QKV, multi-query"),
    Family("bloom", "causal", {"arch": "bloom", "config": dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4)}, cache=True, note="fused QKV [B,S,H,3,D], ALiBi"),
    Family("falcon_mqa", "causal", {"arch": "falcon", "config": dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False)}, cache=True, note="multi-query by broadcasting"),
    Family("falcon_grouped", "causal", {"arch": "falcon", "config": dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True, bias=False)}, cache=True, note="grouped fused QKV [B,S,KV,H/KV+2,D]"),
    Family("olmo2", "causal", _llm("olmo2", num_key_value_heads=2), cache=True, note="q/k RMSNorm over the full projection width"),
    Family("gemma2", "causal", _llm("gemma2", num_key_value_heads=2, head_dim=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4, query_pre_attn_scalar=16), cache=True, note="attention softcapping, sliding window"),
    Family("gemma3", "causal", _llm("gemma3_text", num_key_value_heads=2, head_dim=16, sliding_window=4, query_pre_attn_scalar=16), cache=True, note="q/k norm, sliding window"),
    Family("gpt_neox", "causal", {"arch": "gpt_neox", "config": dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5)}, cache=True, note="fused QKV per head, partial rotary"),
    Family("gptj", "causal", {"arch": "gptj", "config": dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, rotary_dim=8)}, cache=True, note="interleaved partial rotary"),
    Family("opt", "causal", {"arch": "opt", "config": dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64, pad_token_id=0)}, cache=True),
    Family("cohere", "causal", _llm("cohere", num_key_value_heads=2), cache=True),
    Family("starcoder2", "causal", _llm("starcoder2", num_key_value_heads=2), cache=True),
    Family("granite", "causal", _llm("granite", num_key_value_heads=2), cache=True),
    Family("smollm3", "causal", _llm("smollm3", num_key_value_heads=2), cache=True, note="NoPE layers"),
    # The default (grouped_mm) experts count tokens per expert with histc, which neither
    # exporter supports; batched_mm gathers each token's expert weights and exports.
    Family("mixtral", "causal", _llm("mixtral", num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2), cache=True,
           note="mixture of experts (batched_mm experts)", load={"experts_implementation": "batched_mm"}),
    Family("deepseek_v3", "causal", _llm("deepseek_v3", num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1, moe_intermediate_size=32, n_shared_experts=1), cache=True,
           note="multi-head latent attention; layer 1 MoE (batched_mm experts)", load={"experts_implementation": "batched_mm"}),
    Family("clip_text", "encoder", {"arch": "clip_text_model", "config": dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)}),
    Family("clip_vision", "vision", {"arch": "clip_vision_model", "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)}),
    Family("vit", "vision", {"arch": "vit", "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)}),
    Family("modernbert", "encoder", {"arch": "modernbert", "config": dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=4, pad_token_id=0)}),
    Family("whisper", "whisper", {"arch": "whisper", "config": dict(vocab_size=VOCAB, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=8, max_target_positions=32, pad_token_id=0, decoder_start_token_id=1)}, cache=True, note="self + cross attention, cross caches"),
    Family("unet2d", "unet"),
    Family("sd3", "sd3", attns=("sdpa",), note="joint attention (MMDiT)"),
    Family("flux", "flux", attns=("sdpa",), note="joint attention, interleaved RoPE"),
]}


@dataclass(frozen=True)
class Case:
    family: str
    exporter: str
    attn: str
    mode: str = "prefill"

    @property
    def id(self) -> str:
        return f"{self.family}-{self.exporter}-{self.attn}-{self.mode}"


def cases() -> list[Case]:
    out = []
    for fam in FAMILIES.values():
        for exporter in EXPORTERS:
            for attn in fam.attns:
                for mode in ("prefill", "decode") if fam.cache else ("prefill",):
                    out.append(Case(fam.name, exporter, attn, mode))
    return out


# A representative subset for the default run: every new pattern once, cheap exporters first.
DEFAULT = [
    Case("bloom", "ts17", "eager"), Case("bloom", "ts17", "eager", "decode"), Case("falcon_grouped", "dynamo18", "sdpa"),
    Case("falcon_mqa", "dynamo18", "eager"), Case("olmo2", "ts17", "eager"), Case("olmo2", "dynamo23", "eager"),
    Case("sd3", "ts17", "sdpa"), Case("flux", "dynamo18", "sdpa"), Case("whisper", "ts17", "eager", "decode"),
]


# -- building ---------------------------------------------------------------------------
_PEAKED = ("q_proj", "k_proj", "query", "key", "qkv", "c_attn", "to_q", "to_k", "add_q_proj", "add_k_proj", "Wqkv", "q_a_proj", "q_b_proj", "kv_b_proj", "kv_a_proj")


def _peaked(model) -> None:
    """Scale the query/key weights up so attention is far from uniform: a swapped head then
    moves the output well above float32 error."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2 and any(k in name for k in _PEAKED):
                p.mul_(3.0)


def _hf_model(fam: Family, attn: str):
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        CLIPTextModel,
        CLIPVisionModel,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(fam.build["arch"], **fam.build["config"])
    factory = {"causal": AutoModelForCausalLM, "whisper": WhisperForConditionalGeneration}.get(fam.kind, AutoModel)
    if fam.build["arch"] == "clip_text_model":
        factory = CLIPTextModel
    elif fam.build["arch"] == "clip_vision_model":
        factory = CLIPVisionModel
    make = getattr(factory, "from_config", None) or factory._from_config  # Auto* classes / concrete ones
    model = make(cfg, attn_implementation=attn, **fam.load).eval()
    _peaked(model)
    return model


def _rms_norm_symbolic(g, x, normalized_shape, weight, eps):
    """aten::rms_norm as ONNX ops (TorchScript has no symbolic for it before opset 23)."""
    import torch
    from torch.onnx import symbolic_helper as sh

    axes = list(range(-len(sh._get_const(normalized_shape, "is", "normalized_shape")), 0))
    eps = sh._maybe_get_const(eps, "f")
    eps = float(torch.finfo(torch.float32).eps) if eps is None or sh._is_value(eps) else float(eps)  # torch's default
    mean = g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1)
    y = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32)))))
    return y if sh._is_none(weight) else g.op("Mul", y, weight)


# TorchScript at opset 17/18 lacks these; exporting a real model (Flux) needs them registered.
# (aten::diff, which Whisper's mask code uses, is not enough: the TorchScript export of Whisper
# is then a graph onnxruntime rejects, a Not on a bool-typed value.)
_TORCHSCRIPT_SYMBOLICS = {"aten::rms_norm": _rms_norm_symbolic}


def _export(module, args, path: Path, in_names, out_names, case: Case, dynamic=None) -> None:
    import torch

    dynamo, opset = EXPORTERS[case.exporter]
    if not dynamo:
        for name, fn in _TORCHSCRIPT_SYMBOLICS.items():
            torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        _export_with(module, args, path, in_names, out_names, dynamo, opset, dynamic)
    finally:
        if not dynamo:
            for name in _TORCHSCRIPT_SYMBOLICS:
                torch.onnx.unregister_custom_op_symbolic(name, opset)


def _export_with(module, args, path: Path, in_names, out_names, dynamo: bool, opset: int, dynamic) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=list(in_names), output_names=list(out_names), opset_version=opset, dynamo=dynamo)
        if dynamo:
            kwargs["verbose"] = False
        elif dynamic:
            kwargs["dynamic_axes"] = dynamic
        torch.onnx.export(module, tuple(args), str(path), **kwargs)


def _outputs(out) -> list:
    if hasattr(out, "logits"):
        return [out.logits]
    if hasattr(out, "last_hidden_state"):
        return [out.last_hidden_state]
    if hasattr(out, "sample"):
        return [out.sample]
    return [out[0]]


def export(case: Case, path: Path) -> dict[str, np.ndarray]:
    """Export ``case`` to ``path``; returns the feeds it is checked with."""
    fam = FAMILIES[case.family]
    if fam.kind in ("unet", "sd3", "flux"):
        return _export_diffusers(case, fam, path)
    import torch

    model = _hf_model(fam, case.attn)
    rng = np.random.default_rng(0)
    if fam.kind == "whisper":
        return _export_whisper(case, model, path, rng)
    if fam.kind == "vision":
        pixels = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)

        class Vision(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).last_hidden_state

        _export(Vision(model), [torch.from_numpy(pixels)], path, ["pixel_values"], ["output"], case)
        return {"pixel_values": pixels}
    if case.mode == "decode":
        return _export_decode(case, model, path, rng)
    ids = rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int64)
    mask = padded_mask(fam.kind)

    class Prefill(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            extra = {"use_cache": False} if fam.kind == "causal" else {}
            return _outputs(self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra))[0]

    _export(Prefill(model), [torch.from_numpy(ids), torch.from_numpy(mask)], path, ["input_ids", "attention_mask"], ["output"], case,
            dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return {"input_ids": ids, "attention_mask": mask}


def padded_mask(kind: str, length: int = SEQ) -> np.ndarray:
    """The attention mask of the checks: padded, so that the checks see masked positions.

    Causal models: the second row is left-padded (its first query rows see no key at all:
    fully-masked rows), the first row right-padded. Encoders: the second row right-padded.
    The export is traced with the same mask, so a model that drops an all-ones mask at trace
    time (a fast path) keeps its masking in the graph."""
    mask = np.ones((BATCH, length), np.int64)
    if kind == "causal":
        mask[1, :2] = 0
        mask[0, -1:] = 0
    else:
        mask[1, -2:] = 0
    return mask


def _cache_tensors(cache) -> list:
    flat = []
    for layer in cache.layers:
        flat += [layer.keys, layer.values]
    return flat


def _export_decode(case: Case, model, path: Path, rng) -> dict[str, np.ndarray]:
    """One decoding step after a real prompt of PAST tokens (its cache is the step's input)."""
    import torch
    from transformers import DynamicCache

    prompt = torch.from_numpy(rng.integers(1, VOCAB, (BATCH, PAST)).astype(np.int64))
    # A partly masked past: the second row's prompt was left-padded by two tokens.
    mask = np.ones((BATCH, PAST + 1), np.int64)
    mask[1, :2] = 0
    with torch.no_grad():
        first = model(input_ids=prompt, attention_mask=torch.from_numpy(mask[:, :PAST]), use_cache=True, past_key_values=DynamicCache())
        past = [t.detach().clone() for t in _cache_tensors(first.past_key_values)]
    layers = len(past) // 2
    ids = rng.integers(1, VOCAB, (BATCH, 1)).astype(np.int64)

    class Decode(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
            return (out.logits, *_cache_tensors(out.past_key_values))

    names = ["input_ids", "attention_mask"] + [f"past_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    outputs = ["logits"] + [f"present_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    # Static shapes, as on-device decode graphs are.
    _export(Decode(model), [torch.from_numpy(ids), torch.from_numpy(mask), *past], path, names, outputs, case)
    feeds = {"input_ids": ids, "attention_mask": mask}
    feeds.update({n: t.numpy() for n, t in zip(names[2:], past)})
    return feeds


def _export_whisper(case: Case, model, path: Path, rng) -> dict[str, np.ndarray]:
    import torch
    from transformers import DynamicCache, EncoderDecoderCache

    cfg = model.config
    feats = rng.standard_normal((BATCH, cfg.num_mel_bins, 2 * cfg.max_source_positions)).astype(np.float32)
    if case.mode == "prefill":
        dec = rng.integers(1, VOCAB, (BATCH, 4)).astype(np.int64)

        class Prefill(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_features, decoder_input_ids):
                return self.inner(input_features=input_features, decoder_input_ids=decoder_input_ids, use_cache=False).logits

        _export(Prefill(model), [torch.from_numpy(feats), torch.from_numpy(dec)], path, ["input_features", "decoder_input_ids"], ["logits"], case)
        return {"input_features": feats, "decoder_input_ids": dec}
    # Decode: the encoder ran once; the step reads its self-attention cache and the cross
    # caches (K/V of the encoder output), which enter the graph without a projection.
    prompt = torch.from_numpy(rng.integers(1, VOCAB, (BATCH, PAST)).astype(np.int64))
    with torch.no_grad():
        out = model(input_features=torch.from_numpy(feats), decoder_input_ids=prompt, use_cache=True,
                    past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()))
    cache = out.past_key_values
    self_kv = [t.detach().clone() for t in _cache_tensors(cache.self_attention_cache)]
    cross_kv = [t.detach().clone() for t in _cache_tensors(cache.cross_attention_cache)]
    enc = out.encoder_last_hidden_state.detach().clone()
    layers = len(self_kv) // 2
    ids = rng.integers(1, VOCAB, (BATCH, 1)).astype(np.int64)

    class Decode(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, decoder_input_ids, encoder_hidden_states, *kv):
            self_c, cross_c = DynamicCache(), DynamicCache()
            for i in range(layers):
                self_c.update(kv[2 * i], kv[2 * i + 1], i)
                cross_c.update(kv[2 * layers + 2 * i], kv[2 * layers + 2 * i + 1], i)
            cache = EncoderDecoderCache(self_c, cross_c)
            cache.is_updated = {i: True for i in range(layers)}
            o = self.inner(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=decoder_input_ids, past_key_values=cache, use_cache=True)
            return (o.logits, *_cache_tensors(o.past_key_values.self_attention_cache))

    names = ["decoder_input_ids", "encoder_hidden_states"] + [f"past_{k}_{i}" for i in range(layers) for k in ("key", "value")] + [f"cross_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    outputs = ["logits"] + [f"present_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    _export(Decode(model), [torch.from_numpy(ids), enc, *self_kv, *cross_kv], path, names, outputs, case)
    feeds = {"decoder_input_ids": ids, "encoder_hidden_states": enc.numpy()}
    feeds.update({n: t.numpy() for n, t in zip(names[2:], self_kv + cross_kv)})
    return feeds


def _export_diffusers(case: Case, fam: Family, path: Path) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if fam.kind == "unet":
        from diffusers import UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                     cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()
        model.set_attn_processor(AttnProcessor() if case.attn == "eager" else AttnProcessor2_0())
        feeds = {"sample": rng.standard_normal((BATCH, 4, 8, 8)).astype(np.float32), "timestep": np.array([3.0, 7.0], np.float32),
                 "encoder_hidden_states": rng.standard_normal((BATCH, 5, 32)).astype(np.float32)}
    elif fam.kind == "sd3":
        from diffusers import SD3Transformer2DModel

        model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                                      joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16).eval()
        feeds = {"hidden_states": rng.standard_normal((BATCH, 4, 8, 8)).astype(np.float32), "encoder_hidden_states": rng.standard_normal((BATCH, 5, 32)).astype(np.float32),
                 "pooled_projections": rng.standard_normal((BATCH, 16)).astype(np.float32), "timestep": np.array([3.0, 7.0], np.float32)}
    else:
        from diffusers import FluxTransformer2DModel

        model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=4,
                                       joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=False, axes_dims_rope=(4, 6, 6)).eval()
        n, s = 16, 5
        img_ids = np.stack([np.zeros(n), np.arange(n) // 4, np.arange(n) % 4], axis=1).astype(np.float32)
        feeds = {"hidden_states": rng.standard_normal((BATCH, n, 16)).astype(np.float32), "encoder_hidden_states": rng.standard_normal((BATCH, s, 32)).astype(np.float32),
                 "pooled_projections": rng.standard_normal((BATCH, 16)).astype(np.float32), "timestep": np.array([0.3, 0.7], np.float32),
                 "img_ids": img_ids, "txt_ids": np.zeros((s, 3), np.float32)}
    _peaked(model)
    names = list(feeds)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args)), return_dict=False)[0]

    _export(Wrapper(model), [torch.from_numpy(feeds[n]) for n in names], path, names, ["output"], case)
    return feeds


# -- the oracle -------------------------------------------------------------------------
@dataclass
class Outcome:
    case: Case
    exported: bool = False
    converted: bool = False
    equivalent: bool = False
    single_head: bool = False
    inspected: bool = False  # `inspect` finds every block, with its head dim, and no LoRA (none of these has any)
    heads: str = ""  # "<cores> cores, <heads> heads -> <cores> cores" of the export / output
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.converted and self.equivalent and self.single_head and self.inspected


def _ort(path, feeds, extra_outputs=()):
    import onnx
    import onnxruntime as ort

    if extra_outputs:
        model = onnx.load(str(path), load_external_data=False)
        have = {o.name for o in model.graph.output}
        for name in extra_outputs:
            if name not in have:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        probe = Path(path).with_name(Path(path).stem + ".probe.onnx")
        onnx.save(model, str(probe))
        path = probe
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if extra_outputs else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _reaches_matmul(value, depth: int = 6) -> bool:
    """The probabilities feed MatMul(P, V) with a run-time V (through casts, reshapes, guards)."""
    frontier = [value]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            for use in v.uses():
                node = use.node
                if node.op_type == "MatMul" and use.idx == 0:
                    other = node.inputs[1]
                    if other is not None and other.const_value is None:
                        return True
                nxt.extend(node.outputs)
        frontier = nxt
    return False


def attention_heads(path: Path, feeds: dict) -> list[int]:
    """Heads computed by every attention core of a model, from its run-time shapes.

    A core is a Softmax whose probabilities reach MatMul(P, V) with a run-time V, or an
    opset-23 Attention op. Its heads are the product of the scores' batch axes divided by the
    batch size (an exporter may fold heads into the batch or query axis; folded query heads
    appear in the scores' row count, divided out by the query length below), or the
    Attention op's query heads.
    """
    import onnx_ir as ir

    model = ir.load(str(path))
    probes: list[tuple[str, str, object]] = []
    for node in model.graph:
        if node.op_type == "Softmax" and _reaches_matmul(node.outputs[0]):
            probes.append(("softmax", node.outputs[0].name, node))
        elif node.op_type == "Attention":
            probes.append(("attention", node.inputs[0].name, node))
    shapes = _ort(path, feeds, [name for _, name, _ in probes])
    batch = next(v.shape[0] for k, v in feeds.items() if v.ndim >= 1 and k not in ("img_ids", "txt_ids", "timestep")) if feeds else 1
    heads = []
    for kind, name, node in probes:
        shape = shapes[name].shape
        if kind == "attention":
            if len(shape) == 4:
                heads.append(int(shape[1]))
            else:
                heads.append(int(node.attributes["q_num_heads"].as_int()))
            continue
        if len(shape) < 3:
            continue  # a router or a gate, not attention
        heads.append(int(math.prod(shape[:-2]) // batch))
    return heads


def _close(got, want) -> float:
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max()) / scale


TOL = 1e-4


def evaluate(case: Case, tmp: Path) -> Outcome:
    import onnx
    import onnx_ir as ir

    import refimpl
    from mha2sha.api import ConvertOptions, convert
    from mha2sha.pipeline import split_model
    from tests.converter.conftest import merge_outputs, sha_feeds

    out = Outcome(case)
    path = tmp / "model.onnx"
    try:
        feeds = export(case, path)
    except Exception as exc:  # an exporter limitation, not ours
        out.detail = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return out
    out.exported = True
    original = onnx.load(str(path), load_external_data=False)
    in_names = {i.name for i in original.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in in_names}
    out_names = [o.name for o in original.graph.output]
    try:
        expected = _ort(path, feeds)
    except Exception as exc:  # the exporter wrote a graph onnxruntime cannot run
        out.exported = False
        out.detail = f"onnxruntime cannot run the export: {str(exc).splitlines()[0][:200]}"
        return out
    problems = []
    try:
        truth = refimpl.run(str(path), feeds, dtype=np.float64)
    except refimpl.RefimplError as exc:  # the truth cannot be computed: not equivalent by this oracle
        truth = None
        problems.append(f"no float64 truth: refimpl {type(exc).__name__}: {str(exc)[:120]}")
    before = attention_heads(path, feeds)
    for name in out_names if truth is not None else []:
        err = _close(expected[name], truth[name])
        if err > TOL:
            problems.append(f"the export itself: onnxruntime vs float64 refimpl {err:.1e} on {name}")

    # inspect: what the converter reports finding (analysis only)
    from mha2sha.api import inspect

    found = inspect(path)
    wrong = [(b.name, b.reason or f"head dim {b.head_dim}, lora {b.features.get('lora')}") for b in found
             if not b.converted or b.head_dim is None or b.features.get("lora") != "no"]
    out.inspected = bool(found) and not wrong
    inspect_problem = "" if out.inspected else f"inspect: {wrong[:2] or 'no block found'}"

    # converted: the tool's conversion with verification exits 0
    try:
        result = convert(path, tmp / "verified", ConvertOptions())
        code = result.exit_code
        out.converted = code == 0
        if not out.converted:
            failing = [b for b in (result.report or {}).get("blocks", []) if b.get("status") != "pass"]
            skipped = [(b.anchor, b.reason) for b in result.blocks if not b.converted]
            out.detail = f"exit {code}; skipped {skipped[:2]}; failing {[(b.get('name'), b.get('status'), b.get('reason', b.get('detail'))) for b in failing[:2]]}"
    except Exception as exc:
        out.detail = f"convert raised {type(exc).__name__}: {str(exc)[:300]}"
        return out

    # equivalent + single-head on the split model (per-head cache I/O fed from the records)
    model = ir.load(str(path))
    split = split_model(model)
    skipped = [(b.anchor, b.reason) for b in split.blocks if not b.converted]
    sha = tmp / "sha.onnx"
    ir.save(model, str(sha), external_data="sha.onnx.data")
    got = merge_outputs(_ort(sha, sha_feeds(feeds, split)), split)
    for name in out_names:
        e_ort = _close(got[name], expected[name])
        e_truth = _close(got[name], truth[name]) if truth is not None else 0.0
        if e_ort > TOL or e_truth > TOL:
            problems.append(f"{name}: vs onnxruntime {e_ort:.1e}, vs refimpl {e_truth:.1e}")
    out.equivalent = not problems
    after = attention_heads(sha, sha_feeds(feeds, split))
    out.heads = f"{len(before)} cores/{sum(before)} heads -> {len(after)} cores/{sum(after)} heads"
    # (Folded GQA exports count kv heads before the split: the output may count more.)
    out.single_head = bool(after) and all(h == 1 for h in after) and sum(after) >= sum(before)
    if not out.single_head:
        problems.append(f"multi-head cores remain ({out.heads}; skipped: {skipped[:2]})")
    if problems or inspect_problem:
        out.detail = "; ".join(filter(None, [out.detail] + problems + [inspect_problem]))
    return out
