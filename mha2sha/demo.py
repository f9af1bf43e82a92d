"""`make demo`: convert a bundled example model and show its verification report.

The examples are fuzz's (``fuzz.examples``); the command line hands the catalogue in, so that
this module, like the rest of the converter, imports nothing of fuzz (tests/architecture).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def run_demo(output: str | Path, example: str, examples) -> int:
    """``examples``: the catalogue of bundled examples (``EXAMPLES`` and ``write_example``)."""
    from mha2sha.api import ConvertOptions, convert
    from mha2sha.console import blocks_table, shown_path
    from verify.report import verdict_table

    out = Path(output)
    src = out / "example"
    shutil.rmtree(src, ignore_errors=True)
    paths = examples.write_example(example, src)
    model = paths.get("model") or next(p for p in paths.values() if str(p).endswith(".onnx"))
    encodings = paths.get("encodings")
    print(f"example {example}: {examples.EXAMPLES[example].description}")
    print(f"  model     {shown_path(model)}")
    try:
        import mha2sha.encodings  # noqa: F401

        have_reader = True
    except ImportError:
        have_reader = False
    if encodings and have_reader:
        print(f"  encodings {shown_path(encodings)}")
    sha_dir = out / "sha"
    shutil.rmtree(sha_dir, ignore_errors=True)
    result = convert(model, sha_dir, ConvertOptions(encodings=encodings if have_reader else None))
    print()
    print(blocks_table(result.blocks))
    print()
    for label, path in (("model", result.model_path), ("encodings", result.encodings_path), ("name mapping", result.mapping_path)):
        if path:
            print(f"wrote {label:<12} {shown_path(path)}")
    for kind, path in result.report_paths.items():
        print(f"wrote report ({kind}) {shown_path(path)}")
    print()
    print(verdict_table(result.report))
    print(f"\nVerification Status {'OK' if result.ok else 'FAIL'} ({result.seconds:.1f} s)")
    return result.exit_code
