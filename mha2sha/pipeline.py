"""The graph rewrite: find every attention block and split it into single-head attention.

This stage works on an in-memory ``onnx_ir.Model`` whose weights may still be on disk; it
only reads the weights it slices. Loading, saving, encodings and verification are the
stages around it (see mha2sha.api).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from dataclasses import dataclass, field

import onnx_ir as ir

from mha2sha.analysis.discover import Block, BlockError, analyze, find_anchors
from mha2sha.graph.build import tensor_names
from mha2sha.graph.ir_utils import describe
from mha2sha.ledger import Ledger
from mha2sha.passes.cleanup import cleanup, ensure_sorted, infer_shapes
from mha2sha.passes.fold import fold_static_shapes
from mha2sha.split.apply import split_block
from mha2sha.split.cache_io import cache_candidates, whole_caches
from mha2sha.split.emit import SplitError, SplitRecord

log = logging.getLogger("mha2sha")


@dataclass
class BlockReport:
    """One attention core found in the model, converted or not, and why."""

    name: str
    anchor: str  # op type and node name of the Softmax / Attention node
    converted: bool
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    features: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    stopped_at: str = ""
    stops: list[str] = field(default_factory=list)  # every stop of the head walk (near-misses)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "anchor": self.anchor,
            "converted": self.converted,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            **self.features,
            "reason": self.reason,
            "stopped_at": self.stopped_at,
            "stops": list(self.stops),
        }


@dataclass
class SplitResult:
    model: ir.Model
    blocks: list[BlockReport]
    records: list[SplitRecord]  # the split's own account; later stages append to ``ledger`` instead
    analysed: list[Block] = field(default_factory=list)
    # KV-cache graph inputs/outputs left whole under per-head cache I/O, with the reason
    # (mha2sha.split.cache_io): [{"tensor", "kind", "block", "reason"}].
    whole_caches: list[dict] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)  # what became of every tensor (mha2sha.ledger)

    @property
    def converted(self) -> list[BlockReport]:
        return [b for b in self.blocks if b.converted]

    @property
    def skipped(self) -> list[BlockReport]:
        return [b for b in self.blocks if not b.converted]


def _all_names(graph: ir.Graph) -> set[str]:
    return tensor_names(graph, node_names=True)  # one allocator names the new nodes and values


def _drop_split_inputs(model: ir.Model, ledger: Ledger) -> None:
    """Put per-head cache inputs where the input they replace was, in head order, and drop
    the replaced input once nothing reads it."""
    splits = {s.original: s for s in ledger.cache_splits() if s.kind == "input"}
    if not splits:
        return
    by_name = {v.name: v for v in model.graph.inputs}
    per_head = {n for s in splits.values() for n in s.names}
    ordered: list[ir.Value] = []
    for v in model.graph.inputs:
        if v.name in per_head:
            continue
        split = splits.get(v.name)
        if split is not None:
            pieces = sorted(zip(split.indices, split.names))
            ordered.extend(by_name[n] for _, n in pieces)
            if v.uses():
                ordered.append(v)
            continue
        ordered.append(v)
    model.graph.inputs.clear()
    model.graph.inputs.extend(ordered)


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection inside the block. The graph passes allocate hundreds of
    thousands of small objects, and each collection walks every live one (the whole model):
    on a 7B model that was a third of the graph pass. Whatever the block leaves for the
    collector is collected once it ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def prepare(model: ir.Model) -> None:
    """Sort, fold static shape arithmetic, and infer shapes: what the analysis reads."""
    ensure_sorted(model.graph)
    infer_shapes(model)
    if fold_static_shapes(model.graph):
        ensure_sorted(model.graph)
        infer_shapes(model)


def split_model(model: ir.Model, *, analyse_only: bool = False, per_head_cache_io: bool = True, heads_per_block: int = 1, requantized=None, progress=None,
                ledger: Ledger | None = None) -> SplitResult:
    """Find and split every attention block of ``model`` in place; what each split did is
    appended to ``ledger`` (a new one by default; ``SplitResult.ledger``).

    ``per_head_cache_io``: KV-cache graph inputs/outputs become one tensor per kv head,
    named ``<original>_h<kv head>`` and laid out as the original without the head axis
    (e.g. past key [B, KV, P, D] -> past_key_h0 [B, P, D]). Otherwise the original cache
    tensors stay and are sliced (and reassembled) inside the graph.
    ``heads_per_block`` (AR-M): each N-head block becomes N/M blocks of M heads.
    ``requantized(output, input)``: whether a layout op's output carries an encoding of its
    own (then a per-head Identity keeps it instead of reusing the input tensor).
    """
    with gc_paused():
        return _split_model(model, analyse_only=analyse_only, per_head_cache_io=per_head_cache_io,
                            heads_per_block=heads_per_block, requantized=requantized, progress=progress,
                            ledger=ledger if ledger is not None else Ledger())


def _split_model(model: ir.Model, *, analyse_only: bool, per_head_cache_io: bool, heads_per_block: int, requantized, progress,
                 ledger: Ledger) -> SplitResult:
    prepare(model)
    graph = model.graph
    names = _all_names(graph)
    anchors = find_anchors(graph)
    # Where each original node stands: a block's new nodes go in before the first node that
    # reads its outputs, which keeps the graph sorted (cleanup checks, and sorts otherwise).
    positions = {id(node): i for i, node in enumerate(graph)}
    reports: list[BlockReport] = []
    records: list[SplitRecord] = []
    blocks: list[Block] = []
    caches: list[dict] = []  # per-head cache candidates of the converted blocks
    for i, anchor in enumerate(anchors):
        name = f"attn{i}"
        report = BlockReport(name, describe(anchor), converted=False)
        reports.append(report)
        try:
            block = analyze(name, anchor, heads_per_block)
        except (BlockError, ValueError) as exc:  # a layout the analysis cannot express
            report.reason = getattr(exc, "reason", str(exc))
            at = getattr(exc, "at", None)
            report.stopped_at = describe(at) if at is not None else ""
            report.stops = list(getattr(exc, "stops", ()))
            log.info("%s not converted: %s%s", name, report.reason, f" at {report.stopped_at}" if report.stopped_at else "")
            continue
        report.heads, report.kv_heads, report.head_dim = block.num_heads, block.num_kv_heads, block.head_dim
        report.features = dict(block.features)
        blocks.append(block)
        if analyse_only:
            report.converted = True
            continue
        try:
            candidates = cache_candidates(block) if per_head_cache_io else []
            records.append(split_block(graph, block, names, per_head_cache_io=per_head_cache_io, requantized=requantized,
                                       positions=positions, ledger=ledger))
            report.converted = True
            caches.extend(candidates)
        except (SplitError, ValueError) as exc:
            report.reason = getattr(exc, "reason", str(exc))
            exc = exc if isinstance(exc, SplitError) else SplitError(str(exc))
            report.stopped_at = describe(exc.at) if exc.at is not None else ""
            log.info("%s not converted: %s", name, exc.reason)
        if progress is not None:
            progress(i + 1, len(anchors))
    if not analyse_only:
        cleanup(model)
        _drop_split_inputs(model, ledger)
    result = SplitResult(model, reports, records, blocks, ledger=ledger)
    result.whole_caches = whole_caches(model, caches)
    for c in result.whole_caches:
        log.warning("KV cache %s %s stays whole (%s): %s", c["kind"], c["tensor"], c["block"], c["reason"])
    return result
