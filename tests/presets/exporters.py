"""Real exporter graphs for the presets: tiny random-initialised models exported with torch.onnx.

A preset's ``export:`` section names the library, the architecture, the config overrides, the
exporter (TorchScript or dynamo), the opset, the attention implementation and the mode
(``prefill``: a padded batch, no cache; ``decode``: one new token with a KV cache). Hugging
Face causal LMs and BERT reuse tests/exporters/hf_models.py (same sizes, same decode wrapper);
T5 encoders and the diffusers SD 2.1 transformer block are exported here.

Every parameter of rank 1 (biases, norm weights) is moved away from its initial value (zeros
and ones), so that q/k/v biases and norms are visible in the outputs and the exporter cannot
merge identical initialisers; LoRA adaptors have a non-zero B, as a trained adaptor has.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOCAB = 128  # the same as tests/exporters/hf_models.py
BATCH, SEQ = 2, 7


@dataclass
class Exported:
    """An exported model and the feeds it was traced with (their shapes are the ones to use)."""

    path: Path
    feeds: dict[str, np.ndarray]
    mode: str  # prefill | decode
    versions: dict[str, str]

    def make_feeds(self, seed: int) -> dict[str, np.ndarray]:
        """Feeds of the traced shapes with values drawn from ``seed`` (valid ids, masks with
        left padding on the second row in prefill mode, random caches and activations)."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, value in self.feeds.items():
            if name == "input_ids":
                out[name] = rng.integers(1, VOCAB, value.shape).astype(value.dtype)
            elif name == "attention_mask":
                mask = np.ones(value.shape, value.dtype)
                if self.mode == "prefill" and mask.shape[0] > 1:
                    mask[1, : 1 + seed % 3] = 0
                out[name] = mask
            else:
                out[name] = rng.standard_normal(value.shape).astype(value.dtype)
        return out


def library_versions() -> dict[str, str]:
    import torch
    import transformers

    versions = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def export(spec: dict, path: Path) -> Exported:
    """Export the model described by a preset's ``export:`` section to ``path``."""
    library = spec.get("library", "transformers")
    if library == "transformers" and spec["arch"] == "t5":
        feeds = _export_t5(spec, path)
    elif library == "transformers":
        feeds = _export_hf(spec, path)
    elif library == "diffusers":
        feeds = _export_sd(spec, path)
    else:
        raise ValueError(f"unknown export library {library!r}")
    return Exported(path, feeds, spec.get("mode", "prefill"), library_versions())


# -- parameters ----------------------------------------------------------------------------------


def _perturb(model, seed: int) -> None:
    """Rank-1 parameters (biases, norm weights) get N(0, 0.1) added: nothing stays 0 or 1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _lora_linear(base, rank: int, alpha: float, gen):
    """peft's LoRA Linear as it computes: base(x) + lora_B(lora_A(x)) * (alpha / rank)."""
    import torch

    class LoraLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base_layer = base
            self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False)
            self.scaling = alpha / rank
            with torch.no_grad():
                self.lora_A.weight.copy_(torch.randn(self.lora_A.weight.shape, generator=gen) / base.in_features**0.5)
                self.lora_B.weight.copy_(0.5 * torch.randn(self.lora_B.weight.shape, generator=gen) / rank**0.5)

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling

    return LoraLinear()


def _add_lora(model, lora: dict | None, seed: int) -> None:
    """Wrap every Linear whose attribute name is in ``lora["targets"]`` with a LoRA adaptor."""
    if not lora:
        return
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    targets = set(lora["targets"])
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, torch.nn.Linear):
                setattr(module, child_name, _lora_linear(child, int(lora["rank"]), float(lora["alpha"]), gen))


def _export(module, args, path: Path, spec: dict, input_names, output_names, dynamic=None) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.get("exporter", "torchscript") == "dynamo":
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              opset_version=spec.get("opset", 18), dynamo=True, verbose=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              opset_version=spec.get("opset", 17), dynamo=False, dynamic_axes=dynamic)


# -- Hugging Face causal LMs and BERT (tests/exporters/hf_models.py) ----------------------------


def _hf_case(spec: dict):
    from tests.exporters.hf_models import ExportCase

    return ExportCase(spec["arch"], spec.get("exporter", "torchscript") == "dynamo", spec.get("opset", 17),
                      spec.get("attn_implementation", "eager"), dict(spec.get("config", {})),
                      layers=spec.get("layers", 2), heads=spec.get("heads", 4), decode=spec.get("mode") == "decode")


def _export_hf(spec: dict, path: Path) -> dict[str, np.ndarray]:
    import torch

    from tests.exporters import hf_models

    case = _hf_case(spec)
    model = hf_models.build_torch_model(case)
    seed = spec.get("seed", 0)
    _perturb(model, seed)
    _add_lora(model, spec.get("lora"), seed)
    model.eval()
    if case.decode:
        return hf_models._export_decode(case, model, path)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            if case.arch == "bert":
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return _export_prefill(Wrapper(model), path, spec)


def _export_prefill(wrapper, path: Path, spec: dict) -> dict[str, np.ndarray]:
    import torch

    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int64)
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, :2] = 0  # left padding on the second row
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    _export(wrapper, (torch.from_numpy(ids), torch.from_numpy(mask)), path, spec, ["input_ids", "attention_mask"], ["output"], dynamic)
    return {"input_ids": ids, "attention_mask": mask}


# -- T5 encoder ----------------------------------------------------------------------------------


def _export_t5(spec: dict, path: Path) -> dict[str, np.ndarray]:
    """T5EncoderModel: relative position bias per head (computed in the first layer, shared by
    all), no score scaling, RMS norms without bias."""
    import torch
    from transformers import AutoConfig, T5EncoderModel

    torch.manual_seed(0)
    base = dict(vocab_size=VOCAB, d_model=64, d_kv=16, num_heads=spec.get("heads", 4), num_layers=spec.get("layers", 2),
                d_ff=128, relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
    base.update(spec.get("config", {}))
    cfg = AutoConfig.for_model("t5", **base)
    model = T5EncoderModel._from_config(cfg, attn_implementation=spec.get("attn_implementation", "eager")).eval()
    _perturb(model, spec.get("seed", 0))

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return _export_prefill(Wrapper(model), path, spec)


# -- Stable Diffusion 2.1 transformer block (diffusers) -----------------------------------------


def _export_sd(spec: dict, path: Path) -> dict[str, np.ndarray]:
    """diffusers Transformer2DModel as SD 2.1's UNet has it: NCHW latents in and out, GroupNorm,
    linear proj_in/proj_out, one BasicTransformerBlock (self-attention, cross-attention on the
    text states, GEGLU feed-forward)."""
    import torch
    from diffusers.models import Transformer2DModel

    torch.manual_seed(0)
    base = dict(num_attention_heads=spec.get("heads", 4), attention_head_dim=16, in_channels=64, cross_attention_dim=32,
                use_linear_projection=True, norm_num_groups=32, num_layers=spec.get("layers", 1))
    base.update(spec.get("config", {}))
    model = Transformer2DModel(**base).eval()
    seed = spec.get("seed", 0)
    _perturb(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "to_q" in name or "to_k" in name:
                p.mul_(3.0)  # peaked attention, as in tests/exporters/test_diffusers.py
    _add_lora(model, spec.get("lora"), seed)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hidden_states, encoder_hidden_states):
            return self.inner(hidden_states, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    rng = np.random.default_rng(0)
    size = spec.get("latent_size", 4)
    x = rng.standard_normal((BATCH, base["in_channels"], size, size)).astype(np.float32)
    ctx = rng.standard_normal((BATCH, spec.get("text_len", 5), base["cross_attention_dim"])).astype(np.float32)
    _export(Wrapper(model), (torch.from_numpy(x), torch.from_numpy(ctx)), path, spec, ["hidden_states", "encoder_hidden_states"], ["output"])
    return {"hidden_states": x, "encoder_hidden_states": ctx}
