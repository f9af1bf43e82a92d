"""`mha2sha-onnx-converter`: the reference tool's command line, same flags and defaults.

Example:
  mha2sha-onnx-converter --exported-model-path model.onnx \\
      --exported-model-encoding-path model.encodings --base-llm llama3 \\
      --sha-export-path ./exported_model

Exit codes: 0 success, 1 a verification check failed, 2 bad input or options,
3 no attention block found, 4 internal error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from mha2sha.cli import LOG_LEVELS, _print_result, add_verbosity_flags
from mha2sha.compat import PRESETS, ReferenceFlags, run_reference_flags
from mha2sha.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, Mha2ShaError

_BOOLEAN_FLAGS = {
    "llm_model": "the model is an LLM (informational)",
    "mha_conv": "expect Conv projections (checked against the model)",
    "nchw_aligned": "expect NCHW-aligned [B, E, 1, S] activations (informational; found by structure)",
    "replace_linear_with_conv": "turn MatMul/Gemm with constant weights into 1x1 Conv",
    "handle_rope_ops": "expect RoPE (checked)",
    "handle_past_key_value": "expect past key/value inputs (checked); caches become per kv head",
    "gqa_model": "expect grouped-query attention (checked)",
    "handle_alibi": "expect a per-head ALiBi bias (checked)",
    "handle_internal_rmsnorm": "expect per-head q/k norm (checked)",
    "lora_model": "expect LoRA adaptors (checked)",
    "lora_alpha_from_input": "LoRA alpha is a graph input",
    "disable_auto_attn_finder": "accepted for compatibility; attention is always found by structure",
    "no_verification": "skip the end-to-end run (per-block checks always run)",
    "create_input_lists": "write input_list.txt, raw inputs and goldens of the MHA model",
    "optimize_o_proj": "lay each head out for a Conv o_proj and concatenate on its channel axis (NCHW-aligned models need nothing: their heads are concatenated on the channel axis already)",
    "skip_mha2sha": "run only the pre-quantization adaptation",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mha2sha-onnx-converter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exported-model-path", required=True, help="the ONNX model to convert")
    p.add_argument("--exported-model-encoding-path", help="its AIMET encodings")
    p.add_argument("--model-name", help="output name (default: input stem + _conv + _kvcache + _sha)")
    p.add_argument("--sha-export-path", default="./exported_model", help="output folder (default: ./exported_model)")
    p.add_argument("--log-level", choices=list(LOG_LEVELS), default="info")
    add_verbosity_flags(p)
    p.add_argument("--base-llm", choices=list(PRESETS), help="flag preset for a model family; explicit flags override it")
    for name, help_text in _BOOLEAN_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=help_text)
    p.add_argument("--lora-adaptor-list-path", help="YAML list of LoRA adaptors (name, encodings, weights)")
    p.add_argument("--build-ar", type=int, help="attention ratio M: heads per attention block after the split (1 = single-head)")
    p.add_argument("--ar-tokens", type=int, help="rebuild a cached decoder for this many new tokens per step")
    strict = p.add_mutually_exclusive_group()
    strict.add_argument("--strict", dest="strict", action="store_true", default=None, help="strict RoPE pattern checks (the reference meaning): with --handle-rope-ops every converted block must carry RoPE in a recognised form, else the run fails. Other unmet expectations never fail a verified run")
    strict.add_argument("--not-strict", dest="strict", action="store_false", help="no strict RoPE check (overrides a preset)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    return p


def main(argv: list[str] | None = None) -> int:
    from mha2sha._own_packages import entry_point_guard

    if not entry_point_guard("mha2sha-onnx-converter"):
        return EXIT_INTERNAL
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=LOG_LEVELS[args.log_level], format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    values = {k: v for k, v in vars(args).items() if k != "json"}
    explicit = {k for k, v in values.items() if v is not None and v is not False} | ({"strict"} if values.get("strict") is False else set())
    flags = ReferenceFlags(**{k: v for k, v in values.items() if v is not None})
    flags.explicit = explicit
    try:
        result = run_reference_flags(flags)
    except Mha2ShaError as exc:
        if args.log_level == "verbose":
            traceback.print_exc()
        print(f"mha2sha-onnx-converter: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # contradictory options
        print(f"mha2sha-onnx-converter: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001
        if args.log_level == "verbose":
            traceback.print_exc()
        print(f"mha2sha-onnx-converter: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    return _print_result(result, args)
