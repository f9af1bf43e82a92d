"""Compatibility with the reference tool: its flags, presets and Python class.

Users switch by changing nothing but the install: ``mha2sha-onnx-converter`` accepts every
flag of the reference tool with the same meaning and defaults, and
``MHA2SHAConverter(...).convert()`` returns ``(model, verification_status)``.

Our converter finds attention by structure, so most flags do not switch behaviour on:
they state what the model is expected to contain, and each expectation is checked
against what was found (a mismatch is a warning, and an error with ``--strict``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

log = logging.getLogger("mha2sha")

# Flags that state what the model contains: flag -> (what is checked, how to read the blocks).
EXPECTATIONS = {
    "handle_rope_ops": "RoPE on the query path",
    "handle_past_key_value": "past key/value inputs",
    "gqa_model": "grouped-query attention (fewer kv heads than heads)",
    "handle_alibi": "a per-head bias on the scores (ALiBi)",
    "handle_internal_rmsnorm": "a per-head q/k norm",
    "lora_model": "LoRA adaptors on the projections",
    "mha_conv": "Conv projections",
}


@dataclass
class ReferenceFlags:
    """Every flag of the reference tool, default off, with its command line spelling."""

    exported_model_path: str | None = None
    exported_model_encoding_path: str | None = None
    model_name: str | None = None
    sha_export_path: str = "./exported_model"
    log_level: str = "info"
    base_llm: str | None = None
    llm_model: bool = False
    mha_conv: bool = False
    nchw_aligned: bool = False
    replace_linear_with_conv: bool = False
    handle_rope_ops: bool = False
    handle_past_key_value: bool = False
    gqa_model: bool = False
    handle_alibi: bool = False
    handle_internal_rmsnorm: bool = False
    lora_model: bool = False
    lora_alpha_from_input: bool = False
    lora_adaptor_list_path: str | None = None
    build_ar: int | None = None
    ar_tokens: int | None = None
    disable_auto_attn_finder: bool = False
    no_verification: bool = False
    create_input_lists: bool = False
    optimize_o_proj: bool = False
    skip_mha2sha: bool = False
    strict: bool = False
    explicit: set[str] = field(default_factory=set, repr=False)


_LLAMA2 = {"handle_rope_ops", "handle_past_key_value", "llm_model", "mha_conv", "strict"}
PRESETS: dict[str, set[str]] = {
    "llama2": _LLAMA2,
    "llama3": _LLAMA2 | {"gqa_model"},
    "gpt2": _LLAMA2 - {"handle_rope_ops"},
    "llama2_lora": _LLAMA2 | {"lora_model", "nchw_aligned", "mha_conv", "lora_alpha_from_input"},
    "llama3_lora": _LLAMA2 | {"gqa_model", "lora_model"},
    "llama3_lora_v3": _LLAMA2 | {"gqa_model", "lora_model", "lora_alpha_from_input"},
    "sd_2.1": {"nchw_aligned", "mha_conv"},
    "sd_2.1_lora": {"lora_model", "nchw_aligned", "mha_conv", "lora_alpha_from_input"},
    # Families beyond the reference tool's list (same meaning: what the model contains).
    "qwen2": _LLAMA2 | {"gqa_model"},
    "qwen3": _LLAMA2 | {"gqa_model", "handle_internal_rmsnorm"},
    "mistral": _LLAMA2 | {"gqa_model"},
    "phi3": _LLAMA2,
    "bert": set(),
    "t5": set(),
}


def apply_preset(flags: ReferenceFlags) -> list[str]:
    """Turn on the preset's flags; an explicit flag wins, with a warning. Returns warnings."""
    warnings: list[str] = []
    if not flags.base_llm:
        return warnings
    preset = PRESETS.get(flags.base_llm)
    if preset is None:
        raise ValueError(f"unknown --base-llm {flags.base_llm!r}; choose from {', '.join(PRESETS)}")
    for name in preset:
        if name in flags.explicit:
            continue
        setattr(flags, name, True)
    for name in sorted(flags.explicit & set(EXPECTATIONS)):
        if name not in preset:
            warnings.append(f"--{name.replace('_', '-')} adds to preset {flags.base_llm}")
    if "strict" in flags.explicit and not flags.strict and "strict" in preset:
        warnings.append(f"--not-strict overrides preset {flags.base_llm}")
    return warnings


def found_features(blocks) -> dict[str, bool]:
    """What the converted blocks actually contain, keyed like EXPECTATIONS."""
    conv = [b for b in blocks if b.converted]
    return {
        "handle_rope_ops": any(b.features.get("rope", "none") != "none" for b in conv),
        "handle_past_key_value": any(b.features.get("past_kv", "none") != "none" for b in conv),
        "gqa_model": any(b.kv_heads is not None and b.heads is not None and b.kv_heads < b.heads for b in conv),
        "handle_alibi": any(b.features.get("mask", "").startswith("per-head") for b in conv),
        "handle_internal_rmsnorm": any(b.features.get("qk_norm") == "yes" for b in conv),
        "lora_model": any(b.features.get("lora") == "yes" for b in conv),
        "mha_conv": any(b.features.get("projection") == "Conv" for b in conv),
    }


def check_expectations(flags: ReferenceFlags, blocks) -> list[dict]:
    found = found_features(blocks)
    out = []
    for name, what in EXPECTATIONS.items():
        expected = getattr(flags, name)
        if not expected:
            continue
        ok = found[name]
        out.append({"flag": f"--{name.replace('_', '-')}", "expects": what, "found": ok})
        if not ok:
            log.warning("--%s given, but the model has no %s", name.replace("_", "-"), what)
    return out


class MHA2SHAConverter:
    """The reference tool's Python entry point.

    ``MHA2SHAConverter(model_name=..., sha_export_path=..., model_or_path=..., **flags)``;
    ``.convert()`` returns ``(onnx.ModelProto, verification_status: bool)``.
    """

    def __init__(self, model_name: str | None = None, sha_export_path: str = "./exported_model", model_or_path=None, **flags):
        known = {f.name for f in fields(ReferenceFlags)}
        unknown = set(flags) - known - {"exported_model_encoding_path", "encodings_path", "prepared_model", "position_ids"}
        if unknown:
            raise TypeError(f"unknown flags: {sorted(unknown)}")
        encodings = flags.pop("encodings_path", None) or flags.pop("exported_model_encoding_path", None)
        flags.pop("prepared_model", None)
        flags.pop("position_ids", None)
        self.flags = ReferenceFlags(model_name=model_name, sha_export_path=sha_export_path, exported_model_encoding_path=encodings, **flags)
        self.flags.explicit = {k for k, v in flags.items() if v}
        self.model_or_path = model_or_path

    def convert(self):
        import tempfile

        import onnx

        path = self.model_or_path
        tmp = None
        if isinstance(path, onnx.ModelProto):
            tmp = tempfile.TemporaryDirectory(prefix="mha2sha-input-")
            target = Path(tmp.name) / f"{self.flags.model_name or 'model'}.onnx"
            onnx.save(path, target, save_as_external_data=path.ByteSize() > 1_800_000_000)
            path = target
        self.flags.exported_model_path = str(path)
        try:
            result = run_reference_flags(self.flags)
        finally:
            if tmp is not None:
                tmp.cleanup()
        model = onnx.load(str(result.model_path), load_external_data=Path(str(result.model_path) + ".data").stat().st_size < 1_800_000_000 if Path(str(result.model_path) + ".data").exists() else True)
        return model, result.ok


def run_reference_flags(flags: ReferenceFlags):
    """Run a conversion described by the reference tool's flags."""
    from mha2sha.api import ConvertOptions, convert

    for warning in apply_preset(flags):
        log.warning(warning)
    if flags.disable_auto_attn_finder:
        log.warning("--disable-auto-attn-finder has no effect: attention is always found by structure")
    if flags.skip_mha2sha:
        return _prequant_only(flags)
    opts = ConvertOptions(
        name=flags.model_name,
        encodings=flags.exported_model_encoding_path,
        replace_linear_with_conv=flags.replace_linear_with_conv,
        end_to_end=not flags.no_verification,
        heads_per_block=flags.build_ar or 1,
        expectations=flags,
        create_input_lists=flags.create_input_lists,
        progress=sys.stderr.isatty(),
        ar_tokens=flags.ar_tokens,
        lora_alpha_from_input=flags.lora_alpha_from_input,
        lora_adaptors=flags.lora_adaptor_list_path,
        optimize_o_proj=flags.optimize_o_proj,
    )
    return convert(flags.exported_model_path, flags.sha_export_path, opts)


def _prequant_only(flags: ReferenceFlags):
    """--skip-mha2sha: only the pre-quantization adaptation (the model AIMET quantizes)."""
    from mha2sha.api import ConversionResult
    from mha2sha.prequant import run_prequant

    out = run_prequant(flags.exported_model_path, flags.sha_export_path, lora_alpha_from_input=flags.lora_alpha_from_input,
                       name=flags.model_name)
    log.info("pre-quantization adaptation only: wrote %s and %s", out.model_path, out.mapping_path)
    if out.result.alpha_inputs:
        log.info("LoRA alpha inputs (feed these values to reproduce the original): %s",
                 {k: v.tolist() for k, v in out.result.alpha_inputs.items()})
    return ConversionResult(out.model_path.parent, out.model_path, None, out.mapping_path, [], prequant_only=True)
