"""The converter's per-block verification, run while the weights are written.

Every converted block is checked by ``verify.block_check.check_block`` (the original block
against the converted one, float64 truth and onnxruntime on the same feeds). This module
only schedules those checks so that they cost little wall time:

- worker processes (spawn: nothing of the converter's state is inherited) start before the
  graph pass, and import only numpy, onnx, onnxruntime and refimpl while it runs;
- the block models are cut out in this process without their weights
  (``verify.extract.extract_lazy``): a weight stored in a file becomes a graph input, and a
  worker reads it itself, once, with ``preadv`` (the original's from the input data file,
  the converted one's from the data file being written), drops the original's before
  reading the converted one's, and returns only the verdict;
- a block is checked in two halves (``verify.block_check.run_original`` and
  ``judge_converted``). The original block's half needs only the input: it is handed to a
  worker as soon as the block is cut out, before the graph is written, so the workers run
  while this process prepares the blocks and serialises the model. The converted block's
  half is handed out at the earliest point where everything it reads exists: the writer has
  planned the output data file (every weight has its offset) and has written every byte of
  that block's weights (``written``). The writer follows the input's order, so the first
  layers are checked while the last ones are still being written. (With encodings, known
  only after the write, both halves run together once they are.)

With no workers (small models: starting a process costs more than checking their blocks),
the same checks run in this process when ``wait`` is called.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

WORKERS_ENV = "MHA2SHA_VERIFY_WORKERS"
# Below this many weight bytes the blocks are checked in this process (a worker's start-up,
# about 1 s of imports, is more than their checks take).
_WORKER_MIN_BYTES = 256 << 20


def default_workers(weight_bytes: int) -> int:
    """Worker processes for a model of ``weight_bytes``: MHA2SHA_VERIFY_WORKERS if set, else
    none for small models, else one. One keeps pace with the writer on 2 cores (1B float32:
    0.2-0.45 s of CPU per block, 16 blocks, against about 3 s of writing, and the writer's
    thread needs the other core), and each worker holds a block's weights: with two, the
    1B conversion peaked at 613 MB for the process tree, with one at 435 MB."""
    value = os.environ.get(WORKERS_ENV)
    if value is not None and value.strip():
        return max(0, int(value))
    return 0 if weight_bytes < _WORKER_MIN_BYTES else 1


# A worker's numerical libraries get one thread each: a block's MatMuls are a few rows by
# a weight, and OpenBLAS's (or OpenMP's) own threads spin on the core the writer and the
# other worker need (a 7B-class check spent most of its time in OpenBLAS's thread loop).
# A variable the user has set is left as it is.
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children():
    added = [name for name in _THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass
class _Block:
    index: int
    spec: object  # verify.correspondence.BlockCorrespondence (plain data: a worker unpickles no converter class)
    mha: bytes = b""
    mha_refs: list = field(default_factory=list)
    sha: bytes = b""
    sha_refs: list = field(default_factory=list)
    ready_at: int = 0  # bytes of the output data file that must be written first
    mha_inputs: list = field(default_factory=list)
    sha_inputs: list = field(default_factory=list)
    captured: dict | None = None
    error: str = ""
    original: cf.Future | None = None  # the original block's half (verify.block_check.OriginalRun)
    future: cf.Future | None = None  # the verdict
    result: dict | None = None


def _warm() -> int:
    """A worker's first task: import what checking a block needs, while the graph pass runs."""
    import onnxruntime  # noqa: F401

    import refimpl  # noqa: F401
    import verify.block_check  # noqa: F401

    return os.getpid()


def _run_original(task: tuple):
    """The original block's half of a check (in a worker): a verify.block_check.OriginalRun."""
    from verify.block_check import read_weights, run_original
    from verify.feeds import DimAssigner

    mha, mha_refs, seed, dims, captured = task
    return run_original(onnx.load_from_string(mha), seed=seed, dims=DimAssigner(values=dict(dims)), captured=captured,
                        mha_weights=lambda: read_weights(mha_refs))


def _judge_converted(task: tuple) -> dict:
    """The converted block's half (in a worker), given the original's; the block's report entry."""
    from verify.block_check import judge_converted, read_weights

    original, mha, sha, spec, sha_refs, captured = task
    result = judge_converted(original, onnx.load_from_string(mha), onnx.load_from_string(sha), spec, captured=captured,
                             sha_weights=lambda: read_weights(sha_refs))
    return result.as_dict()


def _check(task: tuple) -> dict:
    """Check one block (in a worker, or in this process); returns the block's report entry."""
    from verify.block_check import check_block, read_weights
    from verify.feeds import DimAssigner

    mha, sha, spec, mha_refs, sha_refs, seed, dims, captured, mha_enc, sha_enc = task
    result = check_block(onnx.load_from_string(mha), onnx.load_from_string(sha), spec, seed=seed,
                         dims=DimAssigner(values=dict(dims)), captured=captured,
                         mha_encodings=mha_enc, sha_encodings=sha_enc,
                         mha_weights=lambda: read_weights(mha_refs), sha_weights=lambda: read_weights(sha_refs))
    return result.as_dict()


class BlockVerifier:
    """Checks the blocks of one conversion; see the module doc for the order of calls:
    ``BlockVerifier(path, weight_bytes)`` before the graph pass, ``prepare(specs)`` after it,
    ``planned`` / ``written`` from the writer, ``wait()`` before the outputs are committed,
    ``report(converted_path)`` after."""

    def __init__(self, original_path: Path, *, weight_bytes: int, seed: int, allow_hard_links: bool = False,
                 workers: int | None = None):
        self.original_path = Path(original_path)
        self.weight_bytes = weight_bytes
        self.seed = seed
        self.allow_hard_links = allow_hard_links
        self.workers = default_workers(weight_bytes) if workers is None else workers
        self.blocks: list[_Block] = []
        self.timings: dict[str, float] = {}
        self.encodings: tuple | None = None
        self._hold = False  # blocks wait for set_encodings
        self._started = time.perf_counter()
        self._pool: cf.ProcessPoolExecutor | None = None
        if self.workers:
            with _single_threaded_children():  # the processes start in submit, with this environment
                self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                for _ in range(self.workers):
                    self._pool.submit(_warm)

    # -- after the graph pass ------------------------------------------------------------
    def prepare(self, correspondence, converted, *, expect_encodings: bool = False) -> None:
        """Feeds for every block of ``correspondence`` (verify.correspondence.Correspondence)
        and the original's block models (the original's graph read again: the converted model
        was rewritten in place; its weights are never read here)."""
        from mha2sha.graph.io import load_model
        from mha2sha.passes.shapes import infer_shapes
        from verify.extract import extract_lazy
        from verify.run import (
            _CAPTURE_LIMIT_BYTES,
            capture_block_inputs,
            consistent_graph_feeds,
            minimal_block,
        )

        t0 = time.perf_counter()
        self._hold = expect_encodings
        self.original = load_model(self.original_path, allow_hard_links=self.allow_hard_links).model
        infer_shapes(self.original)
        self.correspondence = correspondence
        specs = self.specs = correspondence.blocks
        names = sorted({n for s in specs for n in s.mha_inputs})
        self.dims, self.graph_feeds = consistent_graph_feeds(self.original_path, seed=self.seed,
                                                             weight_bytes=self.weight_bytes, check_names=names,
                                                             allow_hard_links=self.allow_hard_links)
        captured = (capture_block_inputs(self.original_path, names, self.graph_feeds, allow_hard_links=self.allow_hard_links)
                    if self.weight_bytes <= _CAPTURE_LIMIT_BYTES else None)
        for i, spec in enumerate(specs):
            block = _Block(i, spec)
            try:
                block.spec = minimal_block(self.original, converted, spec)
                block.mha_inputs, block.sha_inputs = block.spec.mha_inputs, block.spec.sha_inputs
                proto, block.mha_refs = extract_lazy(self.original, block.mha_inputs, spec.mha_outputs)
                block.mha = proto.SerializeToString()
                if captured is not None:
                    block.captured = {i.name: captured[i.name] for i in proto.graph.input if i.name in captured}
                if self._pool is not None and not self._hold:
                    block.original = self._pool.submit(_run_original, (block.mha, block.mha_refs, self.seed + i,
                                                                       dict(self.dims.values), block.captured))
            except Exception as exc:  # noqa: BLE001 - a block that cannot be cut out is a failed block
                block.error = f"{type(exc).__name__}: {exc}"
            self.blocks.append(block)
        del self.original
        self.timings["prepare"] = time.perf_counter() - t0

    # -- called by the writer -------------------------------------------------------------
    def planned(self, converted, data_path: Path | None, aliases: dict[str, str]) -> None:
        """The converted model's weights now reference their planned place in the output
        (``data_path``; ``aliases``: files that will exist later -> where the same bytes are
        now). Cut every converted block out of it."""
        from verify.extract import extract_lazy

        t0 = time.perf_counter()
        for block in self.blocks:
            if block.error:
                continue
            try:
                proto, refs = extract_lazy(converted, block.sha_inputs, block.spec.sha_outputs)
            except Exception as exc:  # noqa: BLE001
                block.error = f"{type(exc).__name__}: {exc}"
                continue
            block.sha = proto.SerializeToString()
            block.sha_refs = [replace(r, path=aliases.get(r.path, r.path)) for r in refs]
            ends = [r.offset + r.length for r in block.sha_refs if data_path is not None and Path(r.path) == data_path]
            block.ready_at = max(ends, default=0)
        self.timings["cut_converted"] = time.perf_counter() - t0
        self.written(0)

    def written(self, nbytes: int) -> None:
        """``nbytes`` of the output data file are on disk: hand out the blocks that are complete."""
        if self._pool is None or self._hold:
            return
        for block in self.blocks:
            if block.future is not None or block.error or not block.sha or block.ready_at > nbytes:
                continue
            if block.original is None:  # both halves at once (encodings: they came after the write)
                block.future = self._pool.submit(_check, self._task(block))
            elif block.original.done():
                try:
                    original = block.original.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died fails its block, not the run
                    block.error = f"verification worker failed: {type(exc).__name__}: {exc}"
                    continue
                block.future = self._pool.submit(_judge_converted, (original, block.mha, block.sha, block.spec,
                                                                    block.sha_refs, block.captured))

    def set_encodings(self, mha_encodings, sha_encodings) -> None:
        self.encodings = (mha_encodings, sha_encodings)
        self._hold = False

    def _task(self, block: _Block) -> tuple:
        mha_enc, sha_enc = self.encodings or (None, None)
        if mha_enc is not None and sha_enc is not None:
            mha_names = {i.name for i in onnx.load_from_string(block.mha).graph.input} | _outputs(block.mha)
            sha_names = {i.name for i in onnx.load_from_string(block.sha).graph.input} | _outputs(block.sha)
            mha_enc = {k: v for k, v in mha_enc.items() if k in mha_names}
            sha_enc = {k: v for k, v in sha_enc.items() if k in sha_names}
        return (block.mha, block.sha, block.spec, block.mha_refs, block.sha_refs, self.seed + block.index,
                dict(self.dims.values), block.captured, mha_enc, sha_enc)

    # -- before the commit ----------------------------------------------------------------
    def wait(self, progress=None) -> None:
        """Every block's verdict (the staged files are still where the workers read them)."""
        t0 = time.perf_counter()
        self._hold = False
        self.written(1 << 62)
        while True:  # the converted halves wait for their original's
            pending = [b.original for b in self.blocks if b.future is None and not b.error and b.sha and b.original is not None]
            if not pending or self._pool is None:
                break
            cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            self.written(1 << 62)
        for done, block in enumerate(self.blocks, 1):
            if block.result is None:
                block.result = self._result(block)
            if progress is not None:
                progress(done, len(self.blocks))
        self.timings["wait"] = time.perf_counter() - t0
        self.close()

    def _result(self, block: _Block) -> dict:
        from verify.block_check import BlockResult

        if not block.error and block.future is None:  # no workers: check it here
            return _check(self._task(block))
        if not block.error:
            try:
                return block.future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died fails its block, not the run
                block.error = f"verification worker failed: {type(exc).__name__}: {exc}"
        return BlockResult(block.spec, error=block.error).as_dict()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- after the commit -----------------------------------------------------------------
    def report(self, converted_path: Path, *, end_to_end: bool) -> dict:
        """The verification section of the report (as verify.run.verify_models returns it)."""
        from verify.run import verify_end_to_end

        timings = dict(self.timings)
        if end_to_end:
            t0 = time.perf_counter()
            e2e = verify_end_to_end(self.original_path, converted_path, self.graph_feeds, self.weight_bytes, self.correspondence,
                                    allow_hard_links=self.allow_hard_links)
            timings["end_to_end"] = time.perf_counter() - t0
        else:
            e2e = {"status": "not run", "reason": "end-to-end run disabled (--no-verification)"}
        timings["total"] = time.perf_counter() - self._started
        return {
            "seed": self.seed,
            "dims": dict(self.dims.values),
            "correspondence": {"source": self.correspondence.source, "blocks": len(self.specs)},
            "blocks": [b.result for b in self.blocks],
            "end_to_end": e2e,
            "verification_workers": self.workers,
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }


def _outputs(proto_bytes: bytes) -> set[str]:
    proto = onnx.load_from_string(proto_bytes)
    return {o for n in proto.graph.node for o in n.output} | {t.name for t in proto.graph.initializer}
