"""``mha2sha verify ORIGINAL SHA``: verify any pair of models, whoever made the SHA one.

The correspondence between the two (which SHA tensors stand for which MHA tensors, per
block) comes from ``--correspondence FILE`` (the ``correspondence.json`` a conversion writes)
or, without it, is derived from the two graphs' structure (verify.derive). This command only
parses the user's files (models, encodings) and hands them to the verifier; the verdict, the
report and the exit code (0 pass, 1 fail, 2 bad input) are the verifier's.
"""

from __future__ import annotations

import os
from pathlib import Path

from mha2sha.errors import EXIT_OK, EXIT_VERIFICATION_FAILED, InputError


def run_verify(args) -> int:
    from mha2sha.graph.io import load_model
    from mha2sha.outputs import OutputTransaction

    original, sha = Path(args.original), Path(args.sha)
    allow = getattr(args, "allow_hard_links", False)
    loaded = load_model(original, allow_hard_links=allow)  # bad input: one line, exit 2
    loaded_sha = load_model(sha, allow_hard_links=allow)
    out = Path(args.output)
    inputs = [original, sha] + [Path(p) for p in (args.encodings, args.sha_encodings, args.correspondence) if p]
    out.mkdir(parents=True, exist_ok=True)
    # The report is staged and moved in at the end; a user's file of that name is refused.
    with OutputTransaction(out, inputs, overwrite=getattr(args, "overwrite", False)) as txn:
        for name in ("verification_report.json", "verification_report.md", "verification_report.html"):
            txn.check_target(name)
        return _verify_into(txn, args, original, sha, allow, loaded, loaded_sha)


def _verify_into(txn, args, original: Path, sha: Path, allow: bool, loaded, loaded_sha) -> int:
    from verify.correspondence import CorrespondenceError, read
    from verify.derive import derive_correspondence, missing_names
    from verify.graphs import infer_shapes, load
    from verify.report import verdict_table, write_report
    from verify.run import verify_models

    mha_numeric = sha_numeric = None
    warnings: list[str] = []
    if args.encodings:
        mha_numeric, warnings = _numeric(args.encodings, loaded.model)
    if args.sha_encodings:
        sha_numeric, _ = _numeric(args.sha_encodings, loaded_sha.model)
    mha_model, sha_model = load(original, allow_hard_links=allow), load(sha, allow_hard_links=allow)
    infer_shapes(mha_model)
    infer_shapes(sha_model)
    if args.correspondence:
        try:
            corr = read(args.correspondence)
        except CorrespondenceError as exc:
            raise InputError(None, str(exc)) from None
        absent = missing_names(corr, mha_model, sha_model)
        if absent:
            raise InputError(args.correspondence, f"names tensors the models do not have: {', '.join(absent[:3])}"
                             + (f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""))
        unmatched = {"blocks": [], "reason": ""}
    else:
        corr, unmatched = derive_correspondence(mha_model, sha_model)
    report = {
        "tool": {"name": "mha2sha verify"},
        "model": {"original": str(original), "converted": str(sha), "encodings": args.encodings, "sha_encodings": args.sha_encodings,
                  "correspondence": args.correspondence or "derived by structure"},
        "unmatched": unmatched,
    }
    if warnings:
        report["encodings_warnings"] = warnings[:200]
    report.update(verify_models(original, sha, corr, seed=args.seed, end_to_end=not args.no_end_to_end,
                                weight_bytes=loaded.weight_bytes, mha_encodings=mha_numeric, sha_encodings=sha_numeric,
                                original=mha_model, converted=sha_model, allow_hard_links=allow))
    staged = write_report(report, txn.tmp)
    placed = txn.commit()
    paths = {kind: placed[p.name] for kind, p in staged.items()}
    print(verdict_table(report))
    for kind, path in paths.items():
        print(f"wrote report ({kind}) {os.path.abspath(path)}")
    return EXIT_OK if report["status"] == "pass" else EXIT_VERIFICATION_FAILED


def _numeric(path: str, model):
    from mha2sha.api import _read_encodings, _validate_encodings
    from mha2sha.encodings import numeric_encodings

    encodings = _read_encodings(path)
    warnings = _validate_encodings(encodings, model)  # encodings of another model: exit 2
    return numeric_encodings(encodings, model), warnings
