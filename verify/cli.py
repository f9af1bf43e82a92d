"""`mha2sha verify ORIGINAL SHA`: verify any pair, including one produced by another tool."""

from __future__ import annotations

import os
from pathlib import Path


def run_verify(args) -> int:
    from mha2sha.graph.io import load_model
    from mha2sha.outputs import OutputTransaction

    original = Path(args.original)
    sha = Path(args.sha)
    allow = getattr(args, "allow_hard_links", False)
    loaded = load_model(original, allow_hard_links=allow)
    load_model(sha, allow_hard_links=allow)  # validate the other side too
    out = Path(args.output)
    inputs = [original, sha] + [Path(p) for p in (args.encodings, args.sha_encodings) if p]
    out.mkdir(parents=True, exist_ok=True)
    # The report is staged and moved in at the end; a user's file of that name is refused.
    with OutputTransaction(out, inputs, overwrite=getattr(args, "overwrite", False)) as txn:
        for name in ("verification_report.json", "verification_report.md", "verification_report.html"):
            txn.check_target(name)
        return _verify_into(txn, args, original, sha, allow, loaded)


def _verify_into(txn, args, original: Path, sha: Path, allow: bool, loaded) -> int:
    from mha2sha.errors import EXIT_OK, EXIT_VERIFICATION_FAILED
    from mha2sha.graph.io import load_model
    from mha2sha.pipeline import split_model
    from verify.report import verdict_table, write_report
    from verify.run import BlockSpec, verify_models

    # Re-derive the blocks from the original: a model we converted keeps these tensor names.
    split = split_model(loaded.model)
    sha_names = _tensor_names(sha)
    specs, missing = [], []
    for rec, block in zip(split.records, split.converted):
        spec = BlockSpec(rec.block, rec.inputs, rec.outputs, block.heads, block.kv_heads, block.head_dim, dict(block.features), dict(rec.io_splits))
        if set(spec.inputs) | set(spec.outputs) <= sha_names:
            specs.append(spec)
        else:
            missing.append(rec.block)
    mha_numeric = sha_numeric = None
    if args.encodings or args.sha_encodings:
        from mha2sha.encodings import numeric_encodings, read_encodings

        if args.encodings:
            mha_numeric = numeric_encodings(read_encodings(args.encodings), load_model(original, allow_hard_links=allow).model)
        if args.sha_encodings:
            sha_numeric = numeric_encodings(read_encodings(args.sha_encodings), load_model(sha, allow_hard_links=allow).model)
    report = {
        "tool": {"name": "mha2sha verify"},
        "model": {"original": str(original), "converted": str(sha), "encodings": args.encodings, "sha_encodings": args.sha_encodings},
        "skipped_blocks": [{"name": b, "anchor": "", "reason": "the converted model does not name this block's tensors as mha2sha does: end-to-end check only"} for b in missing],
    }
    report.update(verify_models(original, sha, specs, seed=args.seed, end_to_end=not getattr(args, "no_end_to_end", False),
                                weight_bytes=loaded.weight_bytes, mha_encodings=mha_numeric, sha_encodings=sha_numeric, allow_hard_links=allow))
    if not specs:
        report["blocks"] = []
    staged = write_report(report, txn.tmp)
    placed = txn.commit()
    paths = {kind: placed[p.name] for kind, p in staged.items()}
    print(verdict_table(report))
    for kind, path in paths.items():
        print(f"wrote report ({kind}) {os.path.abspath(path)}")
    passed = report["status"] == "pass" or (not specs and report.get("end_to_end", {}).get("status") == "pass")
    return EXIT_OK if passed else EXIT_VERIFICATION_FAILED


def _tensor_names(path: Path) -> set[str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    names = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    for n in proto.graph.node:
        names.update(n.output)
    return names
