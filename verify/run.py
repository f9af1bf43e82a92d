"""Three-way verification of a conversion: per block, end to end, and simulated quantization.

Per block (always, whatever the model size): the block is cut out of the original and of
the converted model by the tensor names both share (what it reads, what it writes), fed
seeded random inputs (or the real values the whole model produces, when it fits in
memory), and evaluated four ways:

    truth      refimpl, float64, original block          (independent of onnxruntime)
    mha_ort    onnxruntime, float32, original block      (sets the float32 error budget)
    sha_ort    onnxruntime, float32, converted block     must be within the budget
    sha_ref    refimpl, float32, converted block         must be within the budget
    sha_f64    refimpl, float64, converted block         must equal the truth to 1e-9

With encodings, both blocks are also run with every encoded tensor fake-quantized (AIMET
arithmetic, float64); they must agree to a small fraction of one quantization step.
End to end: the whole model, original vs converted, in onnxruntime, when it fits.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

# BlockSpec, BlockResult and the per-block check live in verify.block_check (no onnx_ir
# there: the converter's verification workers import only that); re-exported here.
from verify.block_check import (
    BlockResult,
    BlockSpec,
    _float_outputs,
    _run_ort,
    _session,
    check_block,
)
from verify.compare import Comparison, compare, float32_tolerance, scale_of
from verify.extract import extract, minimal_inputs
from verify.feeds import DimAssigner, random_feeds

log = logging.getLogger("mha2sha.verify")

# End-to-end runs only when both models comfortably fit: this share of physical memory.
_E2E_MEMORY_SHARE = 0.35
_CAPTURE_LIMIT_BYTES = 1_500_000_000  # serialized original model size for capturing block inputs
_E2E_TRUTH_LIMIT_BYTES = 300_000_000  # refimpl float64 of the whole model only for small ones


def verify_block(original: ir.Model, converted: ir.Model, spec: BlockSpec, *, seed: int, dims: DimAssigner,
                 captured: dict[str, np.ndarray] | None = None, mha_encodings=None, sha_encodings=None) -> BlockResult:
    """Cut ``spec``'s block out of both models (weights in memory) and check it."""
    started = time.perf_counter()
    try:
        mha_inputs, sha_inputs = minimal_inputs(original, converted, spec.mha_inputs, spec.inputs)
        mha = extract(original, mha_inputs, spec.mha_outputs)
        sha = extract(converted, sha_inputs, spec.outputs)
    except Exception as exc:  # noqa: BLE001 - a block that cannot be cut out is a failed block
        result = BlockResult(spec, error=f"{type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - started
        return result
    result = check_block(mha, sha, spec, seed=seed, dims=dims, captured=captured,
                         mha_encodings=mha_encodings, sha_encodings=sha_encodings)
    result.seconds = time.perf_counter() - started
    return result


def capture_block_inputs(original_path: Path, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Run the whole original model once and keep the tensors the blocks read."""
    try:
        proto = onnx.load(str(original_path), load_external_data=True)
    except Exception as exc:  # noqa: BLE001
        log.info("cannot load the original model for capture: %s", exc)
        return None
    if proto.ByteSize() > _CAPTURE_LIMIT_BYTES:
        return None
    model = ir.serde.deserialize_model(proto)
    from mha2sha.passes.shapes import infer_shapes

    infer_shapes(model)
    values = {v.name: v for node in model.graph for v in node.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    existing = {o.name for o in model.graph.outputs}
    for n in names:
        v = values.get(n)
        if v is not None and n not in existing and not v.is_graph_input():
            model.graph.outputs.append(v)
    try:
        out = _run_ort(ir.serde.serialize_model(model), feeds)
    except Exception as exc:  # noqa: BLE001
        log.info("capture run failed: %s", exc)
        return None
    out.update(feeds)
    return out


def verify_end_to_end(original_path: Path, converted_path: Path, feeds: dict[str, np.ndarray], weight_bytes: int, specs: list[BlockSpec] = ()) -> dict:
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    needed = 3 * weight_bytes
    if needed > _E2E_MEMORY_SHARE * total:
        return {"status": "skipped", "reason": f"the two models need about {needed / 2**30:.1f} GiB, more than {_E2E_MEMORY_SHARE:.0%} of this machine's {total / 2**30:.1f} GiB"}
    started = time.perf_counter()
    try:
        mha = _run_ort(original_path, feeds)
    except Exception as exc:  # noqa: BLE001 - the input itself does not run: nothing to compare with
        return {"status": "skipped", "reason": f"onnxruntime cannot run the original model: {type(exc).__name__}: {exc}"}
    try:
        sha_feeds = dict(feeds)
        for spec in specs:
            sha_feeds = spec.graph_feeds(sha_feeds)
        sha = _run_ort(converted_path, sha_feeds)
        for spec in specs:
            sha = spec.graph_outputs(sha)
    except Exception as exc:  # noqa: BLE001
        return {"status": "fail", "reason": f"{type(exc).__name__}: {exc}", "checks": []}
    checks: list[Comparison] = []
    truth = None
    if weight_bytes <= _E2E_TRUTH_LIMIT_BYTES:
        import refimpl

        try:
            truth = _float_outputs(refimpl.run(str(original_path), feeds, dtype=np.float64))
        except Exception as exc:  # noqa: BLE001 - fall back to the documented ORT-vs-ORT rule
            log.info("float64 truth of the whole model unavailable: %s", exc)
    for name, expected in _float_outputs(mha).items():
        if truth is not None and name in truth:
            t = truth[name]
            mha_err = compare("e2e_mha_ort_vs_truth", name, expected, t, float("inf"))
            tol = float32_tolerance(mha_err.max_abs, scale_of(t))
            checks.append(compare("e2e_sha_ort_vs_truth", name, sha[name], t, tol))
            mha_err.tolerance, mha_err.passed, mha_err.note = tol, True, "sets the float32 error budget"
            checks.append(mha_err)
        else:
            tol = 1e-4 * max(scale_of(expected), 1e-30)
            checks.append(compare("e2e_sha_ort_vs_mha_ort", name, sha[name], expected, tol, "model too large for a float64 truth: 1e-4 of the output range"))
    return {
        "status": "pass" if all(checks) else "fail",
        "checks": [c.as_dict() for c in checks],
        "seconds": round(time.perf_counter() - started, 3),
    }


def block_specs(original_path: Path, *, allow_hard_links: bool = False, **split_options) -> tuple[list[BlockSpec], list]:
    """The blocks of a model as mha2sha converts them (same names in the converted model).

    Returns the specs and the block reports (converted or not)."""
    from mha2sha.graph.io import load_model
    from mha2sha.pipeline import split_model

    split = split_model(load_model(original_path, allow_hard_links=allow_hard_links).model, **split_options)
    specs = [
        BlockSpec(rec.block, rec.inputs, rec.outputs, b.heads, b.kv_heads, b.head_dim, dict(b.features), dict(rec.io_splits))
        for rec, b in zip(split.records, split.converted)
    ]
    return specs, split.blocks


def encodings_coverage(mapping: dict, mha_encoded: set[str], sha_encoded: set[str], sha_tensors: set[str]) -> dict:
    """Every SHA tensor that stands for an encoded MHA tensor must carry an encoding."""
    missing = []
    for section in ("activation_encodings", "param_encodings"):
        for mha_name, pieces in mapping.get(section, {}).items():
            if mha_name not in mha_encoded:
                continue
            missing.extend([mha_name, p] for p in pieces if p in sha_tensors and p not in sha_encoded)
    kept_missing = [[n, n] for n in mha_encoded if n in sha_tensors and n not in sha_encoded]
    missing += kept_missing
    return {"status": "pass" if not missing else "fail", "missing": missing[:200], "missing_count": len(missing)}


def _graph_proto(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


DIMS_SEARCH_SECONDS = 10.0  # the search for symbolic dims the model accepts gives up after this


def consistent_graph_feeds(original_path: Path, *, seed: int, weight_bytes: int, check_names: list[str] | None = None) -> tuple[DimAssigner, dict]:
    """Random graph inputs whose symbolic dimensions the model accepts.

    Symbolic names carry no relations (``total`` may have to be ``past + seq``): when the
    model is small enough to run, candidate assignments are tried until one runs.
    """
    from verify.feeds import candidate_assignments, dim_symbols, static_dims

    proto = _graph_proto(original_path)
    symbols = dim_symbols(proto)
    fits = weight_bytes <= _CAPTURE_LIMIT_BYTES
    first = None
    tries = 0
    deadline = time.monotonic() + DIMS_SEARCH_SECONDS
    session = None
    for values in candidate_assignments(symbols, extra_values=static_dims(proto) if fits else None):
        tries += 1
        if tries > (2000 if weight_bytes < 50_000_000 else 400) or (tries > 1 and time.monotonic() > deadline):
            break  # each try runs the model once: bounded in count and time
        dims = DimAssigner(values=dict(values))
        feeds = random_feeds(proto, seed=seed, dims=dims)
        if first is None:
            first = (dims, feeds)
        if not fits:
            break
        try:
            session = session or _session(original_path, quiet=True)  # one session, silent on failed tries
            _run_ort(original_path, feeds, session=session)
        except Exception:  # noqa: BLE001 - try the next assignment
            continue
        # Broadcasting can let a wrong assignment run (a [.., 2, 3] table against [.., 1, 3]
        # scores); its intermediate tensors then disagree with the inferred shapes, which
        # asking for them as outputs exposes.
        if check_names and capture_block_inputs(original_path, check_names, feeds) is None:
            continue
        return dims, feeds
    return first


def verify_models(original_path: Path, converted_path: Path, specs: list[BlockSpec], *, seed: int = 42,
                  end_to_end: bool = True, weight_bytes: int = 0, mha_encodings=None, sha_encodings=None,
                  progress=None, allow_hard_links: bool = False) -> dict:
    """Verify every block in ``specs`` and, if asked and possible, the whole model."""
    from mha2sha.graph.io import load_model
    from mha2sha.passes.shapes import infer_shapes

    started = time.perf_counter()
    timings: dict[str, float] = {}
    original = load_model(original_path, allow_hard_links=allow_hard_links).model
    infer_shapes(original)
    converted = load_model(converted_path, allow_hard_links=allow_hard_links).model
    infer_shapes(converted)
    names = sorted({n for s in specs for n in s.mha_inputs})
    dims, graph_feeds = consistent_graph_feeds(original_path, seed=seed, weight_bytes=weight_bytes, check_names=names)
    t0 = time.perf_counter()
    captured = capture_block_inputs(original_path, names, graph_feeds) if weight_bytes <= _CAPTURE_LIMIT_BYTES else None
    timings["capture"] = time.perf_counter() - t0
    blocks = []
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        blocks.append(verify_block(original, converted, spec, seed=seed + i, dims=dims, captured=captured,
                                   mha_encodings=mha_encodings, sha_encodings=sha_encodings).as_dict())
        if progress is not None:
            progress(i + 1, len(specs))
    timings["blocks"] = time.perf_counter() - t0
    if end_to_end:
        t0 = time.perf_counter()
        e2e = verify_end_to_end(original_path, converted_path, graph_feeds, weight_bytes, specs)
        timings["end_to_end"] = time.perf_counter() - t0
    else:
        e2e = {"status": "skipped", "reason": "end-to-end run disabled (--no-verification)"}
    timings["total"] = time.perf_counter() - started
    return {
        "seed": seed,
        "dims": dict(dims.values),
        "blocks": blocks,
        "end_to_end": e2e,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
