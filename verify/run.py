"""Three-way verification of a conversion: per block, end to end, and simulated quantization.

Per block (always, whatever the model size): the block is cut out of the original and of
the converted model by the tensors a correspondence names (verify.correspondence: what the
block reads and writes in each model), fed seeded random inputs (or the real values the
whole model produces, when it fits in memory), and evaluated four ways:

    truth      refimpl, float64, original block          (independent of onnxruntime)
    mha_ort    onnxruntime, float32, original block      (sets the float32 error budget)
    sha_ort    onnxruntime, float32, converted block     must be within the budget
    sha_ref    refimpl, float32, converted block         must be within the budget
    sha_f64    refimpl, float64, converted block         must equal the truth to 1e-9

When refimpl cannot evaluate a block (an op it lacks), the truth checks are "not run" with
the reason, and the converted block is judged against onnxruntime on the original block
(1e-4 of the output range); the verdict says so. With encodings, both blocks are also run
with every encoded tensor fake-quantized (AIMET arithmetic, float64); they must agree to a
small fraction of one quantization step. End to end: the whole model, original vs
converted, in onnxruntime, when it fits.

This package imports nothing from the converter: it judges any pair of models.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

# BlockSpec, BlockResult and the per-block check live in verify.block_check (no onnx_ir
# there: the converter's verification workers import only that); re-exported here.
from verify.block_check import (
    ORT_ONLY_RTOL,
    BlockResult,
    BlockSpec,  # noqa: F401 - re-exported
    _float_outputs,
    _refimpl,
    _run_ort,
    _session,
    check_block,
)
from verify.compare import Comparison, compare, float32_tolerance, scale_of
from verify.correspondence import BlockCorrespondence, Correspondence
from verify.extract import extract, minimal_inputs
from verify.feeds import DimAssigner, random_feeds
from verify.graphs import infer_shapes, load, load_proto
from verify.graphs import weight_bytes as model_weight_bytes

log = logging.getLogger("mha2sha.verify")

# End-to-end runs only when both models comfortably fit: this share of physical memory.
_E2E_MEMORY_SHARE = 0.35
_CAPTURE_LIMIT_BYTES = 1_500_000_000  # serialized original model size for capturing block inputs
_E2E_TRUTH_LIMIT_BYTES = 300_000_000  # refimpl float64 of the whole model only for small ones


def verify_block(original: ir.Model, converted: ir.Model, spec: BlockCorrespondence, *, seed: int, dims: DimAssigner,
                 captured: dict[str, np.ndarray] | None = None, mha_encodings=None, sha_encodings=None) -> BlockResult:
    """Cut ``spec``'s block out of both models (weights in memory) and check it."""
    started = time.perf_counter()
    try:
        block = minimal_block(original, converted, spec)
        mha = extract(original, block.mha_inputs, spec.mha_outputs)
        sha = extract(converted, block.sha_inputs, spec.sha_outputs)
    except Exception as exc:  # noqa: BLE001 - a block that cannot be cut out is a failed block
        result = BlockResult(spec, error=f"{type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - started
        return result
    result = check_block(mha, sha, block, seed=seed, dims=dims, captured=captured,
                         mha_encodings=mha_encodings, sha_encodings=sha_encodings)
    result.seconds = time.perf_counter() - started
    return result


def minimal_block(original: ir.Model, converted: ir.Model, spec: BlockCorrespondence) -> BlockCorrespondence:
    """``spec`` with the input pairs both models compute from the others dropped
    (verify.extract.minimal_inputs); the cache pieces always stay inputs."""
    split_in = [s for s in spec.cache_splits if s.kind == "input"]
    pairs = minimal_inputs(original, converted, spec.inputs, [s.original for s in split_in], [n for s in split_in for n in s.names])
    return BlockCorrespondence(spec.name, pairs, spec.outputs, spec.cache_splits, spec.heads, spec.kv_heads, spec.head_dim, dict(spec.features))


def capture_block_inputs(original_path: Path, names: list[str], feeds: dict[str, np.ndarray], *,
                         allow_hard_links: bool = False) -> dict[str, np.ndarray] | None:
    """Run the whole original model once and keep the tensors the blocks read."""
    try:
        proto = load_proto(original_path, allow_hard_links=allow_hard_links)
    except Exception as exc:  # noqa: BLE001
        log.info("cannot load the original model for capture: %s", exc)
        return None
    if proto.ByteSize() > _CAPTURE_LIMIT_BYTES:
        return None
    model = ir.serde.deserialize_model(proto)
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


def verify_end_to_end(original_path: Path, converted_path: Path, feeds: dict[str, np.ndarray], weight_bytes: int,
                      corr: Correspondence | None = None, *, allow_hard_links: bool = False) -> dict:
    import os

    corr = corr or Correspondence()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    needed = 3 * weight_bytes
    if needed > _E2E_MEMORY_SHARE * total:
        return {"status": "not run", "reason": f"the two models need about {needed / 2**30:.1f} GiB, more than {_E2E_MEMORY_SHARE:.0%} of this machine's {total / 2**30:.1f} GiB"}
    started = time.perf_counter()
    try:
        mha = _run_ort(original_path, feeds)
    except Exception as exc:  # noqa: BLE001 - the input itself does not run: nothing to compare with
        return {"status": "not run", "reason": f"onnxruntime cannot run the original model: {type(exc).__name__}: {exc}"}
    sha_inputs = [i.name for i in _graph_proto(converted_path).graph.input if i.name not in {t.name for t in _graph_proto(converted_path).graph.initializer}]
    sha_feeds = corr.graph_feeds(feeds, sha_inputs)
    unfed = [n for n in sha_inputs if n not in sha_feeds]
    if unfed:
        return {"status": "not run", "reason": f"no input of the original stands for {', '.join(unfed[:3])}"
                + (f" (and {len(unfed) - 3} more)" if len(unfed) > 3 else "") + ": the converted model cannot be fed"}
    try:
        sha = corr.graph_values(_run_ort(converted_path, sha_feeds))
    except Exception as exc:  # noqa: BLE001
        return {"status": "fail", "reason": f"{type(exc).__name__}: {exc}", "checks": []}
    checks: list[Comparison] = []
    truth, truth_reason = None, ""
    if weight_bytes <= _E2E_TRUTH_LIMIT_BYTES:
        truth, truth_reason = _refimpl(load_proto(original_path, allow_hard_links=allow_hard_links), feeds, np.float64)
        truth = _float_outputs(truth) if truth is not None else None
    else:
        truth_reason = f"the model is too large for a float64 run ({weight_bytes / 2**20:.0f} MiB of weights)"
    missing = []
    for name, expected in _float_outputs(mha).items():
        if name not in sha:
            missing.append(name)
            continue
        if truth is not None and name in truth:
            t = truth[name]
            mha_err = compare("e2e_mha_ort_vs_truth", name, expected, t, float("inf"))
            tol = float32_tolerance(mha_err.max_abs, scale_of(t))
            checks.append(compare("e2e_sha_ort_vs_truth", name, sha[name], t, tol))
            mha_err.tolerance, mha_err.passed, mha_err.note = tol, True, "sets the float32 error budget"
            checks.append(mha_err)
        else:
            tol = ORT_ONLY_RTOL * max(scale_of(expected), 1e-30)
            checks.append(compare("e2e_sha_ort_vs_mha_ort", name, sha[name], expected, tol, f"no float64 truth ({truth_reason}): 1e-4 of the output range"))
    result = {
        "status": "pass" if checks and all(checks) and not missing else "fail",
        "truth": "float64" if truth is not None else "onnxruntime",
        "truth_reason": truth_reason if truth is None else "",
        "checks": [c.as_dict() for c in checks],
        "seconds": round(time.perf_counter() - started, 3),
    }
    if missing:
        result["reason"] = f"the converted model has no output standing for {', '.join(missing[:3])}"
    return result


def encodings_coverage(mapping: dict, mha_encoded: set[str], sha_encoded: set[str], sha_tensors: set[str],
                       mha_tensors: set[str] | None = None) -> dict:
    """Every SHA tensor that stands for an encoded MHA tensor must carry an encoding.

    With ``mha_tensors`` (the original model's tensor names) the counts are against the whole
    encodings file: names the model does not have are listed as unmatched, not left out."""
    missing = []
    for section in ("activation_encodings", "param_encodings"):
        for mha_name, pieces in mapping.get(section, {}).items():
            if mha_name not in mha_encoded:
                continue
            missing.extend([mha_name, p] for p in pieces if p in sha_tensors and p not in sha_encoded)
    kept_missing = [[n, n] for n in mha_encoded if n in sha_tensors and n not in sha_encoded]
    missing += kept_missing
    out = {"status": "pass" if not missing else "fail", "missing": missing[:200], "missing_count": len(missing),
           "file_names": len(mha_encoded)}
    if mha_tensors is not None:
        unmatched = sorted(n for n in mha_encoded if n not in mha_tensors)
        out.update(matched=len(mha_encoded) - len(unmatched), unmatched=unmatched[:200], unmatched_count=len(unmatched))
    return out


def _graph_proto(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


DIMS_SEARCH_SECONDS = 10.0  # the search for symbolic dims the model accepts gives up after this
DIMS_SEARCH_ENV = "MHA2SHA_DIMS_SEARCH_SECONDS"  # overrides it (seconds; 0: try the first assignment only)


def _dims_search_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(DIMS_SEARCH_ENV, DIMS_SEARCH_SECONDS)))
    except ValueError:
        return DIMS_SEARCH_SECONDS


def consistent_graph_feeds(original_path: Path, *, seed: int, weight_bytes: int, check_names: list[str] | None = None,
                           allow_hard_links: bool = False) -> tuple[DimAssigner, dict]:
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
    bound = _dims_search_seconds()
    started = time.monotonic()
    max_tries = 2000 if weight_bytes < 50_000_000 else 400
    session = None
    stopped_by = "every candidate"
    for values in candidate_assignments(symbols, extra_values=static_dims(proto) if fits else None):
        tries += 1
        if tries > max_tries or (tries > 1 and time.monotonic() > started + bound):
            # each try runs the model once: bounded in count and time
            stopped_by = f"the bound of {max_tries} tries" if tries > max_tries else f"the time bound of {bound:g} s"
            tries -= 1
            break
        dims = DimAssigner(values=dict(values))
        feeds = random_feeds(proto, seed=seed, dims=dims)
        if first is None:
            first = (dims, feeds)
        if not fits:
            break
        try:
            session = session or _session(original_path)  # one session (silent: failed tries raise)
            _run_ort(original_path, feeds, session=session)
        except Exception:  # noqa: BLE001 - try the next assignment
            continue
        # Broadcasting can let a wrong assignment run (a [.., 2, 3] table against [.., 1, 3]
        # scores); its intermediate tensors then disagree with the inferred shapes, which
        # asking for them as outputs exposes.
        if check_names and capture_block_inputs(original_path, check_names, feeds, allow_hard_links=allow_hard_links) is None:
            continue
        return dims, feeds
    if fits and first is not None and symbols:
        log.warning("no values of the symbolic input dims (%s) that onnxruntime runs the model with were found: "
                    "%d tries in %.1f s, stopped by %s (%s); verifying with %s", ", ".join(symbols), tries,
                    time.monotonic() - started, stopped_by, DIMS_SEARCH_ENV,
                    ", ".join(f"{k}={v}" for k, v in first[0].values.items()))
    return first


def verify_models(original_path: Path, converted_path: Path, corr: Correspondence, *, seed: int = 42,
                  end_to_end: bool = True, weight_bytes: int | None = None, mha_encodings=None, sha_encodings=None,
                  progress=None, original: ir.Model | None = None, converted: ir.Model | None = None,
                  allow_hard_links: bool = False) -> dict:
    """Verify every block of ``corr`` and, if asked and possible, the whole model.

    ``original`` / ``converted``: the models already loaded (with shapes), to skip loading."""
    from verify.contract import io_contract

    started = time.perf_counter()
    timings: dict[str, float] = {}
    if original is None:
        original = load(original_path, allow_hard_links=allow_hard_links)
        infer_shapes(original)
    if converted is None:
        converted = load(converted_path, allow_hard_links=allow_hard_links)
        infer_shapes(converted)
    if weight_bytes is None:
        weight_bytes = model_weight_bytes(original)
    specs = corr.blocks
    names = sorted({n for s in specs for n in s.mha_inputs})
    dims, graph_feeds = consistent_graph_feeds(original_path, seed=seed, weight_bytes=weight_bytes, check_names=names,
                                               allow_hard_links=allow_hard_links)
    t0 = time.perf_counter()
    captured = capture_block_inputs(original_path, names, graph_feeds, allow_hard_links=allow_hard_links) if weight_bytes <= _CAPTURE_LIMIT_BYTES else None
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
        e2e = verify_end_to_end(original_path, converted_path, graph_feeds, weight_bytes, corr, allow_hard_links=allow_hard_links)
        timings["end_to_end"] = time.perf_counter() - t0
    else:
        e2e = {"status": "not run", "reason": "end-to-end run disabled"}
    timings["total"] = time.perf_counter() - started
    return {
        "seed": seed,
        "dims": dict(dims.values),
        "correspondence": {"source": corr.source, "blocks": len(specs)},
        "blocks": blocks,
        "end_to_end": e2e,
        "io_contract": io_contract(original, converted),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
