"""The `mha2sha` command line.

Examples:
  mha2sha example --list
  mha2sha example llama2-tiny -o work/
  mha2sha inspect work/llama2-tiny.onnx
  mha2sha convert work/llama2-tiny.onnx -e work/llama2-tiny.encodings -o out/
  mha2sha verify work/llama2-tiny.onnx out/llama2-tiny_kvcache_sha.onnx -o out/verify

Exit codes: 0 success, 1 a verification check failed (outputs kept and marked),
2 bad input or options (nothing written), 3 no attention block found, 4 internal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from mha2sha._version import __version__
from mha2sha.console import blocks_table, shown_path
from mha2sha.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, Mha2ShaError, UsageError

LOG_LEVELS = {"verbose": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}


def add_verbosity_flags(p: argparse.ArgumentParser) -> None:
    """-v/-q: short forms of --log-level (the last of them given wins)."""
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="verbose", help="same as --log-level verbose: debug messages and tracebacks")
    noise.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="warn", help="same as --log-level warn: no progress, only warnings, errors and the one-line verdict")


def _quiet(args) -> bool:
    return LOG_LEVELS[args.log_level] >= logging.WARNING


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-hard-links", action="store_true", help="read external data files that have several hard links (refused by default: a hard link can expose a file from outside the model folder)")
    p.add_argument("--log-level", choices=list(LOG_LEVELS), default="info", help="logging verbosity (default: info); 'verbose' also prints tracebacks")
    add_verbosity_flags(p)
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mha2sha", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mha2sha {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("convert", help="split every attention block into single-head attention", description="Convert MODEL into OUTDIR: <name>.onnx, <name>.encodings, mha_to_sha_encodings_names.json and the verification report.")
    p.add_argument("model", help="the ONNX model (external data next to it is read lazily)")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("-e", "--encodings", help="AIMET encodings of MODEL (0.6.1, 1.0.0, 2.0.0 or 2.1.0)")
    p.add_argument("--name", help="output model name (default: input stem + _conv/_kvcache + _sha)")
    p.add_argument("--replace-linear-with-conv", action="store_true", help="turn MatMul/Gemm with constant weights into 1x1 Conv")
    p.add_argument("--encodings-version", choices=["0.6.1", "1.0.0", "2.0.0"], help="write encodings in this version (default: the input's)")
    p.add_argument("--no-verification", action="store_true", help="skip the end-to-end run (per-block checks always run)")
    p.add_argument("--allow-no-attention", action="store_true", help="write the model unchanged when no attention block is found")
    p.add_argument("--strict", action="store_true", help="with --kv-cache-io per-head (the default): refuse the run (exit 2) when a KV cache input/output cannot be made one per kv head (it would stay whole, sliced inside the graph)")
    p.add_argument("--seed", type=int, default=42, help="seed of the random verification inputs (default: 42)")
    p.add_argument("--build-ar", type=int, default=1, metavar="M", help="heads per attention block after the split (AR-M; default 1 = single-head)")
    p.add_argument("--kv-cache-io", choices=["per-head", "head-major", "original"], default="per-head", help="KV-cache graph inputs/outputs: one per kv head named <name>_h<g> without the head axis (default); head-major: one per cache under the original name laid out [kv heads, ...] (the reference's [H, 1, P, D] at batch 1); original: the original tensors, sliced inside the graph")
    p.add_argument("--create-input-lists", action="store_true", help="write input_list.txt, raw float32 inputs and goldens of the MHA model")
    p.add_argument("--ar-tokens", type=int, metavar="T", help="first rebuild a static cached decoder for T new tokens per step (past = context - T); the SHA model is verified against the rebuilt one, written to OUTDIR/prepared/")
    p.add_argument("--ar-context", type=int, metavar="C", help="with --ar-tokens: the context length (default: the model's past + new)")
    p.add_argument("--lora-alpha-from-input", action="store_true", help="first make every LoRA alpha a graph input (one per adaptor slot; the report lists the values that reproduce the model)")
    p.add_argument("--lora-adaptors", metavar="YAML", help="YAML list of LoRA adaptors (name, weights .safetensors, optional encodings) to convert onto the SHA names")
    p.add_argument("--emit-qdq", action="store_true", help="also write <name>_qdq.onnx: the SHA model as a QDQ ONNX model from the encodings (int weights behind DequantizeLinear, Q/DQ after every encoded activation, int32 biases with scale = input scale x weight scale), e.g. for onnxruntime-qnn; needs -e")
    p.add_argument("--optimize-o-proj", action="store_true", help="lay each head out for a Conv o_proj and concatenate on its channel axis, instead of transposing the merged heads (where exact; the report lists blocks kept and why)")
    p.add_argument("--overwrite", action="store_true", help="replace files in OUTDIR that mha2sha did not write (refused by default; a rerun always replaces the previous run's own files, and input files are never replaced)")
    p.add_argument("--link-weights", action="store_true", help="hard-link the input's data file into OUTDIR and reference unchanged weights in it (no copy; same file system only)")
    _common(p)

    p = sub.add_parser("inspect", help="list the attention blocks found, and why any softmax was not converted")
    p.add_argument("model")
    _common(p)

    p = sub.add_parser("example", help="write a bundled example model and its encodings")
    p.add_argument("name", nargs="?", help="example name (see --list)")
    p.add_argument("-o", "--output", help="output folder")
    p.add_argument("--list", action="store_true", help="list the bundled examples")
    _common(p)

    p = sub.add_parser("verify", help="verify that SHA computes the same function as ORIGINAL")
    p.add_argument("original")
    p.add_argument("sha")
    p.add_argument("-e", "--encodings", help="encodings of ORIGINAL")
    p.add_argument("--sha-encodings", help="encodings of SHA")
    p.add_argument("-o", "--output", required=True, help="folder for verification_report.json/.md")
    p.add_argument("--seed", type=int, default=42, help="seed of the random inputs (default: 42)")
    p.add_argument("--no-end-to-end", action="store_true", help="only the per-block checks")
    p.add_argument("--correspondence", metavar="FILE",
                   help="which SHA tensors stand for which MHA tensors, per block (the correspondence.json a conversion "
                        "writes; docs/verification.md); without it, derived from the two graphs' structure")
    _common(p)

    p = sub.add_parser("demo", help="convert a bundled example and print its verification report")
    p.add_argument("--output", default="demo_out", help="working folder (default: demo_out)")
    p.add_argument("--example", default="llama3-tiny", help="which bundled example (default: llama3-tiny)")
    _common(p)
    return parser


def _cmd_inspect(args) -> int:
    from mha2sha.api import inspect
    from mha2sha.errors import EXIT_NO_ATTENTION

    blocks = inspect(args.model, allow_hard_links=args.allow_hard_links)
    if args.json:
        print(json.dumps({"blocks": [b.as_dict() for b in blocks]}, indent=1))
    else:
        print(blocks_table(blocks))
    return 0 if any(b.converted for b in blocks) else EXIT_NO_ATTENTION


def _cmd_convert(args) -> int:
    from mha2sha.api import ConvertOptions, convert

    opts = ConvertOptions(
        name=args.name,
        encodings=args.encodings,
        replace_linear_with_conv=args.replace_linear_with_conv,
        no_verification=args.no_verification,
        encodings_version=args.encodings_version,
        allow_no_attention=args.allow_no_attention,
        strict=args.strict,
        seed=args.seed,
        progress=sys.stderr.isatty() and not _quiet(args),
        build_ar=args.build_ar,
        kv_cache_io=args.kv_cache_io,
        create_input_lists=args.create_input_lists,
        link_weights=args.link_weights,
        allow_hard_links=args.allow_hard_links,
        ar_tokens=args.ar_tokens,
        ar_context=args.ar_context,
        lora_alpha_from_input=args.lora_alpha_from_input,
        lora_adaptors=args.lora_adaptors,
        optimize_o_proj=args.optimize_o_proj,
        overwrite=args.overwrite,
        emit_qdq=args.emit_qdq,
    )
    if args.emit_qdq and not args.encodings:
        raise UsageError(None, "--emit-qdq needs -e/--encodings (the QDQ model is built from them)")
    if args.build_ar < 1:
        raise UsageError(None, f"--build-ar {args.build_ar}: the heads per attention block must be 1 or more (1 = single-head)")
    if args.ar_context is not None and args.ar_tokens is None:
        raise UsageError(None, "--ar-context needs --ar-tokens")
    result = convert(args.model, args.output, opts)
    return _print_result(result, args)


def _print_result(result, args) -> int:
    if args.json:
        print(json.dumps({
            "status": "pass" if result.ok else "fail",
            "exit_code": result.exit_code,
            "output_dir": shown_path(result.output_dir),
            "model": shown_path(result.model_path) if result.model_path else None,
            "encodings": shown_path(result.encodings_path) if result.encodings_path else None,
            "mapping": shown_path(result.mapping_path) if result.mapping_path else None,
            "blocks": [b.as_dict() for b in result.blocks],
            "seconds": round(result.seconds, 3),
        }, indent=1))
    elif result.prequant_only:
        print(f"wrote {shown_path(result.model_path)}")
        print(f"wrote {shown_path(result.mapping_path)}")
        print("pre-quantization adaptation only (--skip-mha2sha): nothing converted, nothing to verify")
    elif _quiet(args):
        print(f"{shown_path(result.output_dir)}: Verification Status {'OK' if result.ok else 'FAIL'}")
    else:
        print(blocks_table(result.blocks))
        if result.model_path:
            print(f"wrote {shown_path(result.model_path)}")
        if result.encodings_path:
            print(f"wrote {shown_path(result.encodings_path)}")
        for kind, path in result.report_paths.items():
            print(f"wrote report ({kind}) {shown_path(path)}")
        if result.report is not None:
            from verify.report import verdict_table

            print(verdict_table(result.report))
        print(f"total runtime {result.seconds:.2f} s; Verification Status {'OK' if result.ok else 'FAIL'}")
    return result.exit_code


def _cmd_example(args) -> int:
    from fuzz import examples

    if args.list or not args.name:
        for name, ex in examples.EXAMPLES.items():
            print(f"{name:14s} {ex.description}")
        return 0
    if not args.output:
        raise SystemExit("mha2sha example: -o/--output is required")
    paths = examples.write_example(args.name, args.output)
    for p in paths.values():
        print(f"wrote {shown_path(p)}")
    return 0


def _cmd_verify(args) -> int:
    from mha2sha.verify_command import run_verify

    return run_verify(args)


def _cmd_demo(args) -> int:
    from fuzz import examples
    from mha2sha.demo import run_demo

    return run_demo(args.output, args.example, examples)


def _terminate_like_interrupt() -> None:
    """SIGTERM (kill, a batch system's timeout) cleans up like Ctrl-C: the staging folder
    goes and the output folder stays as it was (SIGKILL's staging is removed by the next run)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (main() called from a thread)
        pass


_COMMANDS = {"convert": _cmd_convert, "inspect": _cmd_inspect, "example": _cmd_example, "verify": _cmd_verify, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    from mha2sha._own_packages import entry_point_guard

    if not entry_point_guard("mha2sha"):
        return EXIT_INTERNAL
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=LOG_LEVELS[args.log_level], format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    _terminate_like_interrupt()
    try:
        return _COMMANDS[args.command](args)
    except Mha2ShaError as exc:
        if args.log_level == "verbose":
            traceback.print_exc()
        print(f"mha2sha: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # True by construction: a run's files move in together at its very end (mha2sha.outputs).
        print("mha2sha: interrupted; the output folder was left as it was before this run", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report one line; the traceback is for --log-level verbose
        if args.log_level == "verbose":
            traceback.print_exc()
        print(f"mha2sha: internal error: {type(exc).__name__}: {exc} (rerun with --log-level verbose for details)", file=sys.stderr)
        return EXIT_INTERNAL


__all__ = ["main", "build_parser", "EXIT_BAD_INPUT"]
