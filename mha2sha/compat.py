"""Compatibility with the reference tool: its flags, presets and Python class.

Users switch by changing nothing but the install: ``mha2sha-onnx-converter`` accepts every
flag of the reference tool with the same meaning and defaults, and
``MHA2SHAConverter(...).convert()`` returns ``(model, verification_status)``.

Our converter finds attention by structure, so most flags do not switch behaviour on:
they state what the model is expected to contain, and each expectation is checked
against what was found. A structural expectation the model does not meet (a preset's
``--mha-conv`` on a MatMul export, say) never fails a conversion that verified: the run
converts what is there and says, in one line, what differs and which flag (if any) gives
the preset's form. ``--strict`` keeps the reference tool's meaning, strict RoPE pattern
checks: with ``--handle-rope-ops`` every converted block must carry RoPE in a recognised
form, or the run fails.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from mha2sha.expectations import EXPECTATIONS, check_expectations, found_features  # noqa: F401  (public here too)

log = logging.getLogger("mha2sha")

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
    if flags.lora_alpha_from_input and "lora_alpha_from_input" not in flags.explicit and not _has_lora(flags):
        # A preset's LoRA expectation on a model without adaptors is advice, not an error.
        flags.lora_alpha_from_input = False
        log.warning("%s lifts LoRA alphas to inputs (--lora-alpha-from-input); this model has no LoRA branch: nothing to lift",
                    flags.base_llm)
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


def _has_lora(flags: ReferenceFlags) -> bool:
    """Whether the input has a LoRA branch (what --lora-alpha-from-input lifts)."""
    from mha2sha.graph.io import load_model
    from mha2sha.lora_adaptors import find_lora_branches
    from mha2sha.passes.shapes import infer_shapes

    model = load_model(Path(flags.exported_model_path)).model
    try:
        infer_shapes(model, only_missing=True)
    except Exception:  # noqa: BLE001 - shapes only help to recognise one-element alphas
        pass
    return bool(find_lora_branches(model.graph))


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
