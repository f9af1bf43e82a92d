"""``--kv-cache-io head-major``: one cache tensor per layer, heads first.

The split gives every kv head its own cache input and output (``past_key_0_h1``, the head
axis removed). Some runtimes (the reference tool's convention) want one tensor per cache
instead, laid out ``[heads, ...]`` so that a head is a contiguous block: ``[H, B, P, D]`` for
a ``[B, H, P, D]`` cache. This pass puts such a tensor, under the original name, at the
graph's boundary: a head-major input is split once along the head axis (``Split`` + a
``Squeeze`` per head), and per-head
present outputs are stacked with ``Unsqueeze -> Concat(axis=0)``. The per-head tensors keep
their names inside the graph (their encodings and the block boundaries still apply).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mha2sha.graph.build import add_constant
from mha2sha.ledger import CacheLayout, Ledger, PassResult

KEPT_REASON = "the original cache tensor is still read outside the split blocks (or another block splits it): kept per head"


def run(model: ir.Model, ledger: Ledger) -> PassResult:
    """Rewrite every per-head cache input/output of the ledger into one head-major tensor
    named as the original (in place); appends a ``CacheLayout`` for each. The report:
    ``{"rewritten": [names], "kept": [[name, reason]]}``."""
    graph = model.graph
    taken = {v.name for v in graph.inputs} | {v.name for v in graph.outputs} | {o.name for n in graph for o in n.outputs}
    first = next(iter(graph), None)
    done: list[str] = []
    kept: list[list[str]] = []
    for split in ledger.cache_splits():
        orig = split.original
        if split.graph_layout != "pieces":
            continue
        if orig in taken:
            kept.append([orig, KEPT_REASON])  # the original tensor is still in use: keep the per-head form
            continue
        order = [name for _, name in sorted(zip(split.indices, split.names))]
        if split.kind == "input":
            _inputs(graph, orig, order, first)
        else:
            _outputs(graph, orig, order)
        ledger.append(CacheLayout(split.block, orig, "head_major"))
        taken.add(orig)
        done.append(orig)
    return PassResult(bool(done), {"rewritten": done, "kept": kept})


def _inputs(graph: ir.Graph, orig: str, order: list[str], first: ir.Node | None) -> None:
    """The head-major input read per head by one Split along the head axis and a Squeeze
    per head: no Gather (QNN lowers a scalar-index Gather per head as a gather op of its own,
    where a Split is a view of the tensor)."""
    from mha2sha.graph.ir_utils import opset

    by_name = {v.name: v for v in graph.inputs}
    pieces = [by_name[n] for n in order]
    stacked = ir.Value(name=orig)
    stacked.dtype = pieces[0].dtype
    if pieces[0].shape is not None:
        stacked.shape = ir.Shape([len(pieces), *pieces[0].shape])
    position = list(graph.inputs).index(pieces[0])
    kept = [v for v in graph.inputs if v not in pieces]
    kept.insert(min(position, len(kept)), stacked)
    graph.inputs.clear()
    graph.inputs.extend(kept)
    new_opset = opset(graph) >= 13  # Split's sizes and Squeeze's axes are inputs from opset 13
    parts = []
    for j, piece in enumerate(pieces):
        part = ir.Value(name=f"{orig}.h{j}.part", shape=None if piece.shape is None else ir.Shape([1, *piece.shape]))
        part.dtype = piece.dtype
        parts.append(part)
    made = []
    if new_opset:
        sizes = add_constant(graph, f"{orig}.head_sizes", np.ones(len(pieces), dtype=np.int64))
        made.append(ir.Node("", "Split", [stacked, sizes], attributes=[ir.AttrInt64("axis", 0)], outputs=parts, name=f"{orig}.split_heads"))
        axes = add_constant(graph, f"{orig}.head_axis_in", np.array([0], dtype=np.int64))
    else:
        made.append(ir.Node("", "Split", [stacked], attributes=[ir.AttrInt64("axis", 0), ir.AttrInt64s("split", [1] * len(pieces))],
                            outputs=parts, name=f"{orig}.split_heads"))
    for j, (piece, part) in enumerate(zip(pieces, parts)):
        out = ir.Value(name=None, shape=piece.shape)
        out.dtype = piece.dtype
        if new_opset:
            made.append(ir.Node("", "Squeeze", [part, axes], outputs=[out], name=f"{orig}.squeeze_h{j}"))
        else:
            made.append(ir.Node("", "Squeeze", [part], attributes=[ir.AttrInt64s("axes", [0])], outputs=[out], name=f"{orig}.squeeze_h{j}"))
        name = piece.name
        ir.convenience.replace_all_uses_with(piece, out)
        piece.name = f"{name}.unused"
        out.name = name
    if first is not None:
        graph.insert_before(first, made)
    else:
        graph.extend(made)


def _outputs(graph: ir.Graph, orig: str, order: list[str]) -> None:
    by_name = {v.name: v for v in graph.outputs}
    pieces = [by_name[n] for n in order]
    axes = add_constant(graph, f"{orig}.head_axis", np.array([0], dtype=np.int64))
    lifted = []
    for j, piece in enumerate(pieces):
        out = ir.Value(name=f"{orig}.h{j}.unsqueezed")
        out.dtype = piece.dtype
        if piece.shape is not None:
            out.shape = ir.Shape([1, *piece.shape])
        graph.append(ir.Node("", "Unsqueeze", [piece, axes], outputs=[out], name=f"{orig}.unsqueeze_h{j}"))
        lifted.append(out)
    stacked = ir.Value(name=orig)
    stacked.dtype = pieces[0].dtype
    if pieces[0].shape is not None:
        stacked.shape = ir.Shape([len(pieces), *pieces[0].shape])
    graph.append(ir.Node("", "Concat", lifted, attributes=[ir.AttrInt64("axis", 0)], outputs=[stacked], name=f"{orig}.stack_heads"))
    position = list(graph.outputs).index(pieces[0])
    kept = [v for v in graph.outputs if v not in pieces]
    kept.insert(min(position, len(kept)), stacked)
    graph.outputs.clear()
    graph.outputs.extend(kept)
