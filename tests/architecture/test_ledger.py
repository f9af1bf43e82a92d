"""Passes only append to the conversion ledger (mha2sha/ledger.py): after the split, running
linear->conv, head-major cache I/O and --optimize-o-proj leaves every earlier entry and every
SplitRecord as it was, and what they did is new entries whose views name tensors that exist
(the moved block boundary is a tensor of both models; a head-major cache is one graph
input/output under the original name)."""

from __future__ import annotations

import copy

import onnx_ir as ir

from fuzz import AttentionConfig, build
from mha2sha.ledger import BoundaryMoved, CacheLayout, WeightRelayout
from mha2sha.passes import head_major_io, linear_to_conv, o_proj
from mha2sha.passes.cleanup import cleanup
from mha2sha.pipeline import split_model


def _names(model: ir.Model) -> set[str]:
    return {v.name for v in model.graph.inputs} | {o.name for n in model.graph for o in n.outputs}


def test_passes_append_and_never_rewrite():
    built = build(AttentionConfig(heads=4, kv_heads=2, past=2, past_kv="full", mlp=False, layers=2), seed=1)
    original = ir.from_proto(built.model)
    model = ir.from_proto(built.model)
    split = split_model(model)
    ledger = split.ledger
    after_split = ledger.entries
    records = copy.deepcopy(split.records)

    assert linear_to_conv.run(model, ledger).changed
    cleanup(model)
    assert head_major_io.run(model, ledger).changed
    cleanup(model)
    result = o_proj.run(model, ledger, original_names=_names(original))

    assert ledger.entries[:len(after_split)] == after_split  # nothing before was changed
    assert [vars(r) for r in split.records] == [vars(r) for r in records]
    new = ledger.entries[len(after_split):]
    assert {type(e) for e in new} >= {WeightRelayout, CacheLayout}
    graph_io = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
    for split_cache in ledger.cache_splits():
        assert split_cache.graph_layout == "head_major" and split_cache.original in graph_io
    moved = [e for e in new if isinstance(e, BoundaryMoved)]
    assert len(moved) == len(result.report["rewritten"]) == 2
    for view in ledger.blocks():
        for name in view.outputs:
            assert name in _names(model), name
        assert {m.new for m in moved if m.block == view.name} <= set(view.outputs)
        assert not {m.old for m in moved if m.block == view.name} & set(view.outputs)
    for m in moved:
        assert m.new in _names(original)  # compared in both models
