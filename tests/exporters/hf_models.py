"""Tiny random-initialised Hugging Face models, exported with torch.onnx as users export them.

No weights are downloaded: every model is built from a config with a fixed seed. Each case
names the architecture, the config overrides that exercise a feature (GQA, q/k norm, sliding
window, fused qkv with partial rotary, biases), the exporter (TorchScript or dynamo), the
opset and the attention implementation (eager or sdpa).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOCAB = 128
BATCH, SEQ = 2, 7


@dataclass(frozen=True)
class ExportCase:
    arch: str
    dynamo: bool
    opset: int
    attn: str = "eager"
    overrides: dict = field(default_factory=dict)
    layers: int = 2
    heads: int = 4
    decode: bool = False  # one new token with a KV cache (past_key_values in, present out)
    tokens: int = 1  # decode: new tokens per step
    past: int = 5  # decode: cached positions
    position_ids: bool = False  # decode: position ids are a graph input (as on-device exports have)
    static_cache: bool = False  # decode: full-context cache buffers written in place (StaticCache)

    def at(self, tokens: int, past: int) -> ExportCase:
        """The same model (same seed, same weights) exported for another decode step shape."""
        return dataclasses.replace(self, tokens=tokens, past=past)

    @property
    def id(self) -> str:
        extra = "-".join(f"{k}{v}" for k, v in sorted(self.overrides.items()))
        mode = "-decode" if self.decode else ""
        if self.decode and (self.tokens, self.past) != (1, PAST):
            mode += f"-t{self.tokens}p{self.past}"
        if self.position_ids:
            mode += "-posin"
        if self.static_cache:
            mode += "-static"
        return f"{self.arch}-{'dynamo' if self.dynamo else 'ts'}{self.opset}-{self.attn}{mode}" + (f"-{extra}" if extra else "")


def _config(case: ExportCase):
    from transformers import AutoConfig

    if case.arch == "gpt2":
        base = dict(vocab_size=VOCAB, n_embd=64, n_layer=case.layers, n_head=case.heads, n_positions=64)
    elif case.arch == "bert":
        base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=case.layers, num_attention_heads=case.heads, intermediate_size=128, max_position_embeddings=64)
    else:
        base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=case.layers, num_attention_heads=case.heads, num_key_value_heads=case.heads, max_position_embeddings=64, pad_token_id=0)
    base.update(case.overrides)
    return AutoConfig.for_model(case.arch, **base)


def build_torch_model(case: ExportCase):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = _config(case)
    factory = AutoModel if case.arch == "bert" else AutoModelForCausalLM
    model = factory.from_config(cfg, attn_implementation=case.attn).eval()
    # Peaked attention: scale the q/k projections up so scores are not nearly uniform.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj.weight", "k_proj.weight", "qkv_proj.weight", "c_attn.weight", "query.weight", "key.weight")):
                p.mul_(4.0)
    return model


def export(case: ExportCase, path: Path) -> dict[str, np.ndarray]:
    """Export ``case`` to ``path`` and return feeds that exercise it (padding included)."""
    import torch

    model = build_torch_model(case)
    if case.decode and case.static_cache:
        return _export_static_decode(case, model, path)
    if case.decode:
        return _export_decode(case, model, path)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) if case.arch != "bert" else self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int64)
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, :2] = 0  # left padding on the second row
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.dynamo:
            torch.onnx.export(Wrapper(model), args, str(path), input_names=["input_ids", "attention_mask"], output_names=["output"], opset_version=case.opset, dynamo=True, verbose=False)
        else:
            torch.onnx.export(Wrapper(model), args, str(path), input_names=["input_ids", "attention_mask"], output_names=["output"], opset_version=case.opset, dynamo=False, dynamic_axes=dynamic)
    return {"input_ids": ids, "attention_mask": mask}


PAST = 5


def _export_decode(case: ExportCase, model, path: Path) -> dict[str, np.ndarray]:
    """One decoding step: input_ids [B, T], attention_mask [B, P + T], past key/values
    [B, kv, P, D] (T = case.tokens, P = case.past)."""
    import torch
    from transformers import DynamicCache

    cfg = model.config
    layers = cfg.num_hidden_layers
    kv = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, *past):
            position_ids = None
            if case.position_ids:
                position_ids, past = past[0], past[1:]
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
            flat = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, case.tokens)).astype(np.int64)
    mask = np.ones((BATCH, case.past + case.tokens), np.int64)
    past = [rng.standard_normal((BATCH, kv, case.past, d)).astype(np.float32) for _ in range(2 * layers)]
    names = ["input_ids", "attention_mask"] + [f"past_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    outputs = ["logits"] + [f"present_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}}
    dynamic.update({n: {0: "batch", 2: "past"} for n in names[2:]})
    positions = []
    if case.position_ids:
        names.insert(2, "position_ids")
        positions = [np.broadcast_to(np.arange(case.past, case.past + case.tokens), (BATCH, case.tokens)).astype(np.int64).copy()]
    args = (torch.from_numpy(ids), torch.from_numpy(mask), *map(torch.from_numpy, positions + past))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Static shapes, as on-device decode graphs are (the SDPA GQA export folds the query
        # heads into the sequence axis with the traced length baked in: it is only valid for
        # the traced shapes anyway).
        del dynamic
        torch.onnx.export(Wrapper(model), args, str(path), input_names=names, output_names=outputs, opset_version=case.opset, dynamo=case.dynamo)
    feeds = {"input_ids": ids, "attention_mask": mask}
    feeds.update(dict(zip(names[2:], positions + past)))
    return feeds


def _export_static_decode(case: ExportCase, model, path: Path) -> dict[str, np.ndarray]:
    """One decoding step with Hugging Face's StaticCache: cache buffers [B, kv, P + T, D] are
    inputs, the T new entries are written at positions P .. P + T - 1 (index_copy: ScatterND /
    ScatterElements), the updated buffers are outputs."""
    import torch
    from transformers import StaticCache

    cfg = model.config
    layers, context = cfg.num_hidden_layers, case.past + case.tokens
    kv = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, *caches):
            cache = StaticCache(config=cfg, max_cache_len=context)
            for i, layer in enumerate(cache.layers):
                layer.lazy_initialization(caches[2 * i], caches[2 * i + 1])
                layer.keys, layer.values = caches[2 * i].clone(), caches[2 * i + 1].clone()
                layer.cumulative_length = torch.tensor(case.past)
            positions = torch.arange(case.past, context)
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, cache_position=positions, use_cache=True)
            return (out.logits, *(t for layer in cache.layers for t in (layer.keys, layer.values)))

    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, case.tokens)).astype(np.int64)
    mask = np.ones((BATCH, context), np.int64)
    caches = [rng.standard_normal((BATCH, kv, context, d)).astype(np.float32) for _ in range(2 * layers)]
    names = ["input_ids", "attention_mask"] + [f"cache_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    outputs = ["logits"] + [f"updated_{k}_{i}" for i in range(layers) for k in ("key", "value")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model), (torch.from_numpy(ids), torch.from_numpy(mask), *map(torch.from_numpy, caches)), str(path),
                          input_names=names, output_names=outputs, opset_version=case.opset, dynamo=case.dynamo)
    feeds = {"input_ids": ids, "attention_mask": mask}
    feeds.update(dict(zip(names[2:], caches)))
    return feeds


def cases() -> list[ExportCase]:
    out = []
    for dynamo, opset in ((False, 17), (True, 18)):
        for attn in ("eager", "sdpa"):
            out.append(ExportCase("llama", dynamo, opset, attn))
            out.append(ExportCase("llama", dynamo, opset, attn, {"num_key_value_heads": 2}))
    out += [
        ExportCase("llama", True, 23, "sdpa", {"num_key_value_heads": 2}),
        ExportCase("llama", True, 23, "eager", {"num_key_value_heads": 2}),
        ExportCase("qwen2", False, 17, "eager", {"num_key_value_heads": 2}),
        ExportCase("qwen2", True, 18, "sdpa", {"num_key_value_heads": 2}),
        ExportCase("qwen3", False, 17, "eager", {"num_key_value_heads": 2, "head_dim": 32}),
        ExportCase("qwen3", True, 18, "sdpa", {"num_key_value_heads": 2, "head_dim": 8}),
        ExportCase("mistral", False, 17, "eager", {"num_key_value_heads": 2, "sliding_window": 4}),
        ExportCase("phi3", False, 17, "eager", {"partial_rotary_factor": 0.5}),
        ExportCase("phi3", True, 18, "sdpa", {"num_key_value_heads": 2, "partial_rotary_factor": 0.5}),
        ExportCase("gpt2", False, 17, "eager"),
        ExportCase("gpt2", True, 18, "sdpa"),
        ExportCase("bert", False, 17, "eager"),
        ExportCase("bert", True, 18, "sdpa"),
        ExportCase("llama", False, 17, "eager", {"num_key_value_heads": 2}, decode=True),
        ExportCase("llama", False, 17, "sdpa", {"num_key_value_heads": 2}, decode=True),
        ExportCase("qwen2", False, 17, "eager", {"num_key_value_heads": 2}, decode=True),
        ExportCase("phi3", False, 17, "eager", {"num_key_value_heads": 2, "partial_rotary_factor": 0.5}, decode=True),
    ]
    return out
