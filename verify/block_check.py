"""Check one attention block: the original's block model against the converted one's.

A block model is what verify.extract cuts out of a whole model. Its large weights may be
graph inputs instead of initializers (``extract_lazy``): the caller then passes loaders
that read them (``read_weights``), and only one side's weights are in memory at a time:
the original block is evaluated first, its weights dropped, then the converted block's are
read. Both sides get the same feeds: the random (or captured) block inputs, plus their
own weights.

This module imports neither onnx_ir nor mha2sha, so that a worker process that only
checks blocks (mha2sha.block_verification) starts fast and small.

    truth      refimpl, float64, original block          (independent of onnxruntime)
    mha_ort    onnxruntime, float32, original block      (sets the float32 error budget)
    sha_ort    onnxruntime, float32, converted block     must be within the budget
    sha_ref    refimpl, float32, converted block         must be within the budget
    sha_f64    refimpl, float64, converted block         must equal the truth to 1e-9
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from verify.compare import Comparison, compare, float32_tolerance, float64_rtol, scale_of
from verify.correspondence import BlockCorrespondence
from verify.feeds import DimAssigner, random_feeds

Weights = Callable[[], Mapping[str, np.ndarray]]


# One block in both models (verify.correspondence); the name the converter's workers use.
BlockSpec = BlockCorrespondence
ORT_ONLY_RTOL = 1e-4  # without a float64 truth: converted vs original in onnxruntime, of the output range


@dataclass
class BlockResult:
    spec: BlockCorrespondence
    checks: list[Comparison] = field(default_factory=list)
    error: str = ""
    feeds_from: str = "random"
    seconds: float = 0.0
    truth: str = "float64"  # or "onnxruntime" when refimpl could not evaluate the original block
    truth_reason: str = ""
    not_run: list[dict] = field(default_factory=list)  # {"check", "reason"}

    @property
    def passed(self) -> bool:
        return not self.error and all(self.checks)

    def as_dict(self) -> dict:
        return {
            "name": self.spec.name,
            "heads": self.spec.heads,
            "kv_heads": self.spec.kv_heads,
            "head_dim": self.spec.head_dim,
            "features": self.spec.features,
            "status": "pass" if self.passed else "fail",
            "feeds": self.feeds_from,
            "error": self.error,
            "checks": [c.as_dict() for c in self.checks],
            "truth": self.truth,
            "truth_reason": self.truth_reason,
            "not_run": self.not_run,
            "mha_inputs": self.spec.mha_inputs,
            "mha_outputs": self.spec.mha_outputs,
            "sha_inputs": self.spec.sha_inputs,
            "sha_outputs": self.spec.sha_outputs,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class WeightRef:
    """A block weight stored in a file: ``length`` bytes at ``offset``, little-endian."""

    name: str
    path: str
    offset: int
    length: int
    dtype: np.dtype
    shape: tuple[int, ...]
    elem_type: int  # onnx.TensorProto data type


def read_weights(refs: list[WeightRef]) -> dict[str, np.ndarray]:
    """Each weight read with one ``preadv`` into memory of its own (not memory-mapped:
    mapped pages of a large file would stay resident until the map is closed)."""
    out: dict[str, np.ndarray] = {}
    fds: dict[str, int] = {}
    try:
        for ref in refs:
            fd = fds.get(ref.path)
            if fd is None:
                fd = fds[ref.path] = os.open(ref.path, os.O_RDONLY)
            buf = np.empty(ref.length, dtype=np.uint8)
            got = 0
            while got < ref.length:
                n = os.preadv(fd, [memoryview(buf)[got:]], ref.offset + got)
                if n <= 0:
                    raise OSError(f"{ref.path}: weight {ref.name!r} ends {ref.length - got} bytes early")
                got += n
            out[ref.name] = buf.view(ref.dtype.newbyteorder("<")).reshape(ref.shape)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _session(model: onnx.ModelProto | str | Path, weights: Mapping[str, np.ndarray] | None = None, *,
             prepack: bool = True, block: bool = False) -> ort.InferenceSession:
    """``weights``: graph inputs of ``model`` that are its weights. onnxruntime gets them as
    initializers, as in the whole model (it computes MatMul differently with constant
    weights: prepacked, other rounding), from our arrays (not copied into the model)."""
    opts = ort.SessionOptions()
    # Fatal only: a failed run raises, and the verifier reports it (onnxruntime's own error
    # log would repeat it on stderr, many times during the dims search).
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # A block (``block``) is run once on a few rows: what costs is the session's set-up and
    # memory, not the run. A thread pool of its own per session is started for a run of
    # milliseconds (and the writer needs the other core): blocks get one thread (the same
    # results: MLAS splits rows and columns between threads, never a sum), and no memory
    # arena (which keeps what a run allocated after the session is gone: at 7B-class
    # float16, the float32 copies of the weights onnxruntime casts to, ~100 MB). Prepacking copies every MatMul weight into
    # another layout (a second copy of the weights, 60-70 % of the set-up time), and
    # changes the rounding of a MatMul by a large weight: the original block is run as the
    # whole model is (prepacked), since its error sets the float32 budget; the converted
    # block's per-head MatMuls gave bit-identical results either way (1B-class blocks).
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if block:
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
    if weights:
        model, names = _with_weight_initializers(model, weights)
        if names:
            opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[n])) for n in names])
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


# Weights from this size on are handed to onnxruntime as they are; smaller ones (and every
# integer constant: shapes and axes, which its shape inference must read) are copied in.
_SHARED_MIN_BYTES = 1 << 16


def _with_weight_initializers(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose weight inputs are initializers; the large float ones stored
    elsewhere (onnxruntime takes their values from add_external_initializers and never
    opens the named file). Returns the model and those names."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [i for i in out.graph.input if i.name not in weights]
    gone = [i for i in out.graph.input if i.name in weights]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    shared = []
    for info in gone:
        value = weights[info.name]
        if not (np.issubdtype(value.dtype, np.floating) and value.nbytes >= _SHARED_MIN_BYTES):
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(value), info.name))
            continue
        shared.append(info.name)
        t = out.graph.initializer.add()
        t.name = info.name
        t.data_type = info.type.tensor_type.elem_type
        t.dims.extend(np.shape(weights[info.name]))
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "supplied-by-the-caller"), ("offset", "0"), ("length", str(weights[info.name].nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    return out, shared


def _run_ort(model, feeds: dict[str, np.ndarray], weights: Mapping[str, np.ndarray] | None = None, *,
             session: ort.InferenceSession | None = None, prepack: bool = True, block: bool = False) -> dict[str, np.ndarray]:
    sess = session or _session(model, weights, prepack=prepack, block=block)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values))


def _float_outputs(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in values.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}


def _block_feeds(mha: onnx.ModelProto, captured: Mapping[str, np.ndarray] | None, seed: int, dims: DimAssigner,
                 weights: Mapping[str, np.ndarray]) -> tuple[dict, str]:
    """The block inputs other than its weights: captured when every one was, else random."""
    names = {i.name for i in mha.graph.input} - set(weights)
    if captured is not None and names <= set(captured):
        return {n: captured[n] for n in names}, "captured"
    feeds = random_feeds(mha, seed=seed, dims=dims, overrides={**(captured or {}), **weights})
    return {k: v for k, v in feeds.items() if k not in weights}, "random"


def _refimpl(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], dtype,
             weights: Mapping[str, np.ndarray] | None = None) -> tuple[dict | None, str]:
    """refimpl's outputs, or None and why it could not evaluate the model (an op it lacks).

    ``feeds`` (the block's activations, a few rows) are given in the compute dtype, the
    values refimpl would convert them to; ``weights`` as they are stored: refimpl converts a
    weight where a node reads it, and a float64 MatMul by a large one tile by tile, which it
    does only when the other operand is already in the compute dtype (a float16 model's
    activations converted by refimpl itself made it convert each 4096x4096 weight whole:
    128 MB of float64 per MatMul)."""
    import refimpl
    from refimpl.errors import RefimplError

    fed = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating) and v.dtype != dtype else v)
           for k, v in feeds.items()}
    fed.update(weights or {})
    try:
        return refimpl.run(model, fed, dtype=dtype), ""
    except RefimplError as exc:
        return None, str(exc)


def _sha_block_feeds(spec: BlockCorrespondence, feeds: Mapping[str, np.ndarray], sha: onnx.ModelProto,
                     captured: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The converted block's inputs from the original block's ``feeds``. An input only the
    converted block reads (it reaches a shared tensor another way) is taken by its pair from
    the captured values, or by name."""
    out = spec.sha_feeds({**(captured or {}), **feeds})
    for i in sha.graph.input:
        if i.name not in out and i.name in feeds:
            out[i.name] = feeds[i.name]
    return out


@dataclass
class OriginalRun:
    """The original block evaluated: the first half of ``check_block``, which needs nothing of
    the converted model (a worker runs it while the converted weights are still being
    written). Only small arrays: the block's feeds and outputs, never its weights."""

    feeds: dict = field(default_factory=dict)
    feeds_from: str = "random"
    truth: dict | None = None  # refimpl, float64 (None: refimpl cannot evaluate the block)
    why: str = ""  # why there is no truth
    mha_ort: dict = field(default_factory=dict)
    q_mha: dict | None = None  # simulated quantization of the original block
    error: str = ""
    seconds: float = 0.0


def run_original(mha: onnx.ModelProto, *, seed: int, dims: DimAssigner, captured: Mapping[str, np.ndarray] | None = None,
                 mha_encodings=None, mha_weights: Weights | None = None) -> OriginalRun:
    """The original block on its feeds: float64 truth (refimpl), onnxruntime float32 (which
    sets the error budget) and, given ``mha_encodings``, the simulated quantization. The
    weights ``mha_weights`` loads are dropped before this returns."""
    run = OriginalRun()
    started = time.perf_counter()
    try:
        weights = dict(mha_weights()) if mha_weights is not None else {}
        run.feeds, run.feeds_from = _block_feeds(mha, captured, seed, dims, weights)
        run.truth, run.why = _refimpl(mha, run.feeds, np.float64, weights)
        run.mha_ort = _run_ort(mha, run.feeds, weights, block=True)
        if mha_encodings is not None and run.truth is not None:
            run.q_mha = _quant_run(mha, {**run.feeds, **weights}, mha_encodings)
        del weights
    except Exception as exc:  # noqa: BLE001 - a block that cannot be verified is a failed block
        run.error = f"{type(exc).__name__}: {exc}"
    run.seconds = time.perf_counter() - started
    return run


def check_block(mha: onnx.ModelProto, sha: onnx.ModelProto, spec: BlockCorrespondence, *, seed: int, dims: DimAssigner,
                captured: Mapping[str, np.ndarray] | None = None, mha_encodings=None, sha_encodings=None,
                mha_weights: Weights | None = None, sha_weights: Weights | None = None) -> BlockResult:
    """Evaluate both block models on the same feeds and compare (see the module doc).

    ``mha_weights`` / ``sha_weights`` load the weights that are graph inputs of ``mha`` /
    ``sha``; each is called once, and its arrays are dropped before the other is called.
    When refimpl cannot evaluate the original block, the truth checks are "not run" (with
    the reason) and the converted block is judged against onnxruntime on the original one.
    The same as ``judge_converted(run_original(...), ...)``, the two halves a worker runs at
    different times."""
    quant = mha_encodings is not None and sha_encodings is not None
    original = run_original(mha, seed=seed, dims=dims, captured=captured, mha_encodings=mha_encodings if quant else None,
                            mha_weights=mha_weights)
    return judge_converted(original, mha, sha, spec, captured=captured, mha_encodings=mha_encodings,
                           sha_encodings=sha_encodings, sha_weights=sha_weights)


def judge_converted(original: OriginalRun, mha: onnx.ModelProto, sha: onnx.ModelProto, spec: BlockCorrespondence, *,
                    captured: Mapping[str, np.ndarray] | None = None, mha_encodings=None, sha_encodings=None,
                    sha_weights: Weights | None = None) -> BlockResult:
    """The converted block on the original's feeds (``original``: ``run_original``, given
    the same ``mha_encodings`` when quantization is judged), judged against the original's
    outputs."""
    result = BlockResult(spec)
    started = time.perf_counter()
    quant = mha_encodings is not None and sha_encodings is not None
    if original.error:
        result.error, result.seconds = original.error, original.seconds
        return result
    try:
        feeds, truth, why, mha_ort = original.feeds, original.truth, original.why, original.mha_ort
        result.feeds_from = original.feeds_from
        q_mha = original.q_mha
        weights = dict(sha_weights()) if sha_weights is not None else {}
        block_feeds = _sha_block_feeds(spec, feeds, sha, captured)
        sha_ort = spec.mha_values(_run_ort(sha, block_feeds, weights, prepack=False, block=True))
        sha_feeds = {**block_feeds, **weights}
        sha_ref, why_sha = _refimpl(sha, block_feeds, np.float32, weights)
        sha_f64, _ = _refimpl(sha, block_feeds, np.float64, weights) if sha_ref is not None else (None, why_sha)
        q_sha = spec.mha_values(_quant_run(sha, sha_feeds, sha_encodings)) if quant and truth is not None and sha_ref is not None else None
        del weights, sha_feeds
        if truth is None:
            result.truth, result.truth_reason = "onnxruntime", why
            for check in ("sha_ort_vs_truth", "sha_refimpl_vs_truth", "sha_float64_vs_truth"):
                result.not_run.append({"check": check, "reason": f"float64 truth unavailable: {why}"})
            for name, expected in _float_outputs(mha_ort).items():
                tol = ORT_ONLY_RTOL * max(scale_of(expected), 1e-30)
                result.checks.append(compare("sha_ort_vs_mha_ort", name, sha_ort[name], expected, tol,
                                             "float64 truth unavailable: 1e-4 of the output range"))
        else:
            truth = _float_outputs(truth)
            if sha_ref is None:
                for check in ("sha_refimpl_vs_truth", "sha_float64_vs_truth"):
                    result.not_run.append({"check": check, "reason": why_sha})
            else:
                sha_ref, sha_f64 = spec.mha_values(sha_ref), spec.mha_values(sha_f64)
            for name, t in truth.items():
                scale = scale_of(t)
                mha_err = compare("mha_ort_vs_truth", name, mha_ort[name], t, float("inf"))
                tol = float32_tolerance(mha_err.max_abs if np.isfinite(mha_err.max_abs) else 0.0, scale)
                result.checks.append(compare("sha_ort_vs_truth", name, sha_ort[name], t, tol))
                if sha_ref is not None:
                    result.checks.append(compare("sha_refimpl_vs_truth", name, sha_ref[name], t, tol))
                    rtol = float64_rtol(np.float16 if mha_ort[name].dtype == np.float16 else np.float32)
                    result.checks.append(compare("sha_float64_vs_truth", name, sha_f64[name], t, rtol * max(scale, 1e-30)))
                mha_err.tolerance = tol
                mha_err.passed = True
                mha_err.note = "sets the float32 error budget"
                result.checks.append(mha_err)
        if quant:
            if q_mha is None or q_sha is None:
                result.not_run.append({"check": "quant_sim_sha_vs_mha", "reason": f"refimpl cannot evaluate the block: {why or why_sha}"})
            else:
                result.checks.extend(_quant_checks(q_mha, q_sha, mha_encodings))
            # Placing activations by structure is what a pair without a name mapping has (a
            # correspondence derived by structure). With the converter's correspondence, the
            # encodings are judged name by name (coverage through the mapping); the structural
            # places are coarse there (a head laid out with one Transpose fewer moves a tensor
            # onto another path's place) and raised false alarms on correct conversions.
            if spec.features.get("derived"):
                result.checks.append(_head_encodings(mha, sha, mha_encodings, sha_encodings))
        if not result.checks:
            result.error = "the block has no floating-point output to compare"
    except Exception as exc:  # noqa: BLE001 - a block that cannot be verified is a failed block
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = original.seconds + time.perf_counter() - started
    return result


def _head_encodings(mha: onnx.ModelProto, sha: onnx.ModelProto, mha_enc, sha_enc) -> Comparison:
    from verify.head_encodings import missing_head_encodings

    missing = missing_head_encodings(mha, sha, {k for k in mha_enc if k in _tensor_names(mha)}, {k for k in sha_enc if k in _tensor_names(sha)})
    # max_abs: how many are missing; the tolerance 0.5 admits none (and keeps error/tolerance finite).
    return Comparison("head_encodings", "every head", float(len(missing)), float(len(missing)), float(len(missing)), 0.5, not missing,
                      ("activations without the encoding the original has at the same place: " + ", ".join(missing[:5]))
                      if missing else "every head's activations are encoded as the original block's")


def _quant_run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], encodings) -> dict[str, np.ndarray]:
    """``model`` with every encoded tensor fake-quantized (AIMET arithmetic, float64)."""
    import refimpl

    names = _tensor_names(model)
    return refimpl.run(model, feeds, dtype=np.float64, encodings={k: v for k, v in encodings.items() if k in names})


def _quant_checks(q_mha: dict, q_sha: dict, mha_enc) -> list[Comparison]:
    """Both quantized blocks must agree to half of one quantization step of the output."""
    checks = []
    for name, expected in _float_outputs(q_mha).items():
        enc = mha_enc.get(name)
        step = float(np.max(enc.scale)) if enc is not None and getattr(enc, "dtype", "int") == "int" else None
        if step is None:
            step = max(scale_of(expected), 1e-30) * 2.0**-8
            note = "no output encoding: step taken as 2^-8 of the output range"
        else:
            note = "tolerance in units of the output's quantization step"
        c = compare("quant_sim_sha_vs_mha", name, q_sha[name], expected, 0.5 * step, note)
        c.note += f"; largest disagreement {c.max_abs / step:.3g} steps"
        checks.append(c)
    return checks


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        names.update(n.output)
    return names
