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
from verify.feeds import DimAssigner, random_feeds

Weights = Callable[[], Mapping[str, np.ndarray]]


@dataclass
class BlockSpec:
    """One block, by the names of the tensors it reads and writes in the converted model.

    ``io_splits`` (original name -> mha2sha.split.emit.IOSplit) lists graph inputs/outputs
    that the converted model has per (kv) head: the original block reads/writes the whole
    tensor, the converted one its per-head pieces.
    """

    name: str
    inputs: list[str]
    outputs: list[str]
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    features: dict = field(default_factory=dict)
    io_splits: dict = field(default_factory=dict)

    def _original_names(self, names: list[str]) -> list[str]:
        piece_of = {n: orig for orig, s in self.io_splits.items() for n in s.names}
        out: list[str] = []
        for n in names:
            n = piece_of.get(n, n)
            if n not in out:
                out.append(n)
        return out

    @property
    def mha_inputs(self) -> list[str]:
        return self._original_names(self.inputs)

    @property
    def mha_outputs(self) -> list[str]:
        return self._original_names(self.outputs)

    def sha_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(feeds)
        for orig, split in self.io_splits.items():
            if split.kind == "input" and orig in feeds:
                for name, index in zip(split.names, split.indices):
                    out[name] = np.take(feeds[orig], index, axis=split.axis)
        return out

    def graph_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``sha_feeds`` plus the head-major graph inputs (one tensor per cache, heads first)."""
        out = self.sha_feeds(feeds)
        for orig, split in self.io_splits.items():
            if split.kind == "input" and split.graph_layout == "head_major" and orig in feeds:
                order = sorted(zip(split.indices, split.names))
                out[orig] = np.stack([np.take(feeds[orig], index, axis=split.axis) for index, _ in order], axis=0)
        return out

    def graph_outputs(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The SHA model's graph outputs in the MHA model's layout (head-major ones moved back)."""
        out = dict(values)
        for orig, split in self.io_splits.items():
            if split.kind == "output" and split.graph_layout == "head_major" and orig in values:
                out[orig] = np.moveaxis(values[orig], 0, split.axis)  # heads in index order, first
        return self.merge_outputs(out)

    def merge_outputs(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(values)
        for orig, split in self.io_splits.items():
            if split.kind == "output" and all(n in values for n in split.names):
                out[orig] = np.stack([values[n] for n in split.names], axis=split.axis)
        return out


@dataclass
class BlockResult:
    spec: BlockSpec
    checks: list[Comparison] = field(default_factory=list)
    error: str = ""
    feeds_from: str = "random"
    seconds: float = 0.0

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


def _session(model: onnx.ModelProto | str | Path, weights: Mapping[str, np.ndarray] | None = None, *, quiet: bool = False) -> ort.InferenceSession:
    """``weights``: graph inputs of ``model`` that are its weights. onnxruntime gets them as
    initializers, as in the whole model (it computes MatMul differently with constant
    weights: prepacked, other rounding), from our arrays (not copied into the model)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3  # quiet: failed runs are expected (the dims search)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
             session: ort.InferenceSession | None = None) -> dict[str, np.ndarray]:
    sess = session or _session(model, weights)
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


def check_block(mha: onnx.ModelProto, sha: onnx.ModelProto, spec: BlockSpec, *, seed: int, dims: DimAssigner,
                captured: Mapping[str, np.ndarray] | None = None, mha_encodings=None, sha_encodings=None,
                mha_weights: Weights | None = None, sha_weights: Weights | None = None) -> BlockResult:
    """Evaluate both block models on the same feeds and compare (see the module doc).

    ``mha_weights`` / ``sha_weights`` load the weights that are graph inputs of ``mha`` /
    ``sha``; each is called once, and its arrays are dropped before the other is called."""
    import refimpl

    result = BlockResult(spec)
    started = time.perf_counter()
    quant = mha_encodings is not None and sha_encodings is not None
    try:
        weights = dict(mha_weights()) if mha_weights is not None else {}
        feeds, result.feeds_from = _block_feeds(mha, captured, seed, dims, weights)
        truth = _float_outputs(refimpl.run(mha, {**feeds, **weights}, dtype=np.float64))
        mha_ort = _run_ort(mha, feeds, weights)
        q_mha = _quant_run(mha, {**feeds, **weights}, mha_encodings) if quant else None
        del weights
        weights = dict(sha_weights()) if sha_weights is not None else {}
        sha_ort = spec.merge_outputs(_run_ort(sha, spec.sha_feeds(feeds), weights))
        sha_feeds = {**spec.sha_feeds(feeds), **weights}
        sha_ref = spec.merge_outputs(refimpl.run(sha, sha_feeds, dtype=np.float32))
        sha_f64 = spec.merge_outputs(refimpl.run(sha, sha_feeds, dtype=np.float64))
        q_sha = spec.merge_outputs(_quant_run(sha, sha_feeds, sha_encodings)) if quant else None
        del weights, sha_feeds
        for name, t in truth.items():
            scale = scale_of(t)
            mha_err = compare("mha_ort_vs_truth", name, mha_ort[name], t, float("inf"))
            tol = float32_tolerance(mha_err.max_abs if np.isfinite(mha_err.max_abs) else 0.0, scale)
            result.checks.append(compare("sha_ort_vs_truth", name, sha_ort[name], t, tol))
            result.checks.append(compare("sha_refimpl_vs_truth", name, sha_ref[name], t, tol))
            rtol = float64_rtol(np.float16 if mha_ort[name].dtype == np.float16 else np.float32)
            result.checks.append(compare("sha_float64_vs_truth", name, sha_f64[name], t, rtol * max(scale, 1e-30)))
            mha_err.tolerance = tol
            mha_err.passed = True
            mha_err.note = "sets the float32 error budget"
            result.checks.append(mha_err)
        if quant:
            result.checks.extend(_quant_checks(q_mha, q_sha, mha_encodings))
    except Exception as exc:  # noqa: BLE001 - a block that cannot be verified is a failed block
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - started
    return result


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
