"""``--optimize-o-proj``: no layout chain between the head Concat and a Conv o_proj.

In a linear model whose projections are 1x1 Convs (the "mha-conv" form, or after
--replace-linear-with-conv), the split leaves ``Concat(heads) -> layout ops -> Conv``: the
concatenated [B, S, E] activation is laid out as NCHW for the output projection (Reshape ->
Transpose, or Transpose -> Unsqueeze). Each head can be laid out on its own instead, and the
Concat moved onto the Conv's channel axis, so no tensor holding every head is transposed.

The layout ops are Reshape, Transpose, Unsqueeze and Squeeze; the heads' axis is followed
through them. A Reshape is rewritten only where it is exact: the heads' axis is the last
non-1 axis of its input and stays one dimension of its target (E, only 1s after it, no 0, no
-1 at or after it), so that for every prefix index the E elements are the heads' pieces one
after the other in both layouts. Anything else is left as it is. The Conv input keeps its name
(its encoding still applies); the merged tensor and the intermediate ones disappear, so a
block where one of those carries an encoding of its own is left as it is too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mha2sha.graph.build import axes_of
from mha2sha.graph.ir_utils import attr, const_array, norm_axis
from mha2sha.ledger import BoundaryMoved, Ledger, PassResult


log = logging.getLogger("mha2sha")


@dataclass
class OProjReport:
    rewritten: list[tuple[str, str]] = field(default_factory=list)  # (merge tensor removed, the Conv input that replaces it)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (merge tensor, why not)


def _static(shape: ir.Shape | None) -> list | None:
    return None if shape is None else [d if isinstance(d, int) else None for d in shape]


LAYOUT_OPS = ("Reshape", "Transpose", "Unsqueeze", "Squeeze")


@dataclass
class _Chain:
    concat: ir.Node
    ops: list[ir.Node]  # the layout ops from the Concat to the Conv input, in order
    reshape_axes: dict[int, int]  # op index -> the heads' axis in that Reshape's target
    channel: int  # the heads' axis in the Conv input


def run(model: ir.Model, ledger: Ledger, *, encoded: set[str] = frozenset(), original_names: set[str] = frozenset()) -> PassResult:
    """--optimize-o-proj on every block of the ledger. A block's output moves to the Conv
    input (or, when linear->conv created that tensor, to the first tensor after it that the
    original model has, ``original_names``), so that verification compares the same tensor in
    both: a ``BoundaryMoved`` entry. The report: ``{"rewritten": [...], "kept": [[merge, why]]}``."""
    from mha2sha.passes.cleanup import cleanup

    values = {o.name: o for node in model.graph for o in node.outputs}
    merges, owner = [], {}
    for block in ledger.blocks():
        for name in block.outputs:
            producer = values[name].producer() if name in values else None
            if producer is not None and producer.op_type == "Concat":
                merges.append(producer)
                owner[name] = block.name
    result = optimize_o_proj(model, merges, encoded=encoded)
    values = {o.name: o for node in model.graph for o in node.outputs}
    for merged, conv_input in result.rewritten:
        value = values[conv_input]
        while value.name not in original_names:
            uses = list(value.uses())
            if len(uses) != 1 or not uses[0].node.outputs:
                raise RuntimeError(f"--optimize-o-proj: no tensor of the original model after {conv_input!r} to verify the block at")
            value = uses[0].node.outputs[0]
        ledger.append(BoundaryMoved(owner[merged], merged, value.name, "optimize_o_proj"))
    for merged, why in result.kept:
        log.info("--optimize-o-proj: %s kept: %s", merged, why)
    cleanup(model)
    return PassResult(bool(result.rewritten), {"rewritten": [m for m, _ in result.rewritten], "kept": [list(k) for k in result.kept]})


def optimize_o_proj(model: ir.Model, merges: list[ir.Node], *, encoded: set[str] = frozenset()) -> OProjReport:
    """Rewrite the chain after each head Concat in ``merges`` where it is exact (see the
    module docstring). Returns what was rewritten and why the others were kept."""
    report = OProjReport()
    for concat in merges:
        merged = concat.outputs[0].name
        chain = _match(concat, encoded)
        if isinstance(chain, str):
            report.kept.append((merged, chain))
        else:
            report.rewritten.append((merged, _apply(model.graph, chain)))
    return report


def _match(concat: ir.Node, encoded: set[str]) -> _Chain | str:
    """The layout chain after ``concat``, or why it cannot be rewritten exactly."""
    shapes = [_static(v.shape) if v is not None else None for v in concat.inputs]
    if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return "the heads' shapes are not known"
    rank = len(shapes[0])
    pos = norm_axis(attr(concat, "axis", 0), rank)
    if any(s[pos] is None for s in shapes):
        return "the heads' sizes are not known"
    total = sum(s[pos] for s in shapes)
    ops: list[ir.Node] = []
    reshape_axes: dict[int, int] = {}
    value = concat.outputs[0]
    while True:
        if value.name in encoded:
            return "the merged or a laid-out activation has an encoding of its own"
        uses = list(value.uses())
        if uses and not value.is_graph_output() and all(u.node.op_type == "Conv" and u.idx == 0 for u in uses):
            break
        if len(uses) != 1 or value.is_graph_output() or uses[0].idx != 0 or uses[0].node.op_type not in LAYOUT_OPS \
                or uses[0].node.domain not in ("", "ai.onnx") or len(ops) == 4:
            return "the head Concat does not reach a Conv through layout ops only"
        node = uses[0].node
        shape = _static(value.shape)
        if node.op_type == "Transpose":
            perm = attr(node, "perm")
            if perm is None:
                return "a Transpose has no explicit permutation"
            pos = list(perm).index(pos)
            rank = len(perm)
        elif node.op_type == "Reshape":
            target = const_array(node.inputs[1])
            if target is None or shape is None or shape[pos] != total or any(d != 1 for d in shape[pos + 1:]):
                return "a Reshape does not keep the heads' axis as the last one"
            target = [int(t) for t in target.reshape(-1)]
            hits = [i for i, t in enumerate(target) if t == total and all(x == 1 for x in target[i + 1:])]
            if not hits or 0 in target or attr(node, "allowzero", 0) or -1 in target[hits[0]:]:
                return "a Reshape does not keep the heads' axis as one dimension"
            pos, rank = hits[0], len(target)
            reshape_axes[len(ops)] = pos
        else:  # Unsqueeze / Squeeze
            axes = axes_of(node)
            if axes is None:
                return f"an {node.op_type} has unknown axes"
            if node.op_type == "Unsqueeze":
                out_rank = rank + len(axes)
                inserted = {norm_axis(a, out_rank) for a in axes}
                kept_slots = [i for i in range(out_rank) if i not in inserted]
                pos, rank = kept_slots[pos], out_rank
            else:
                removed = {norm_axis(a, rank) for a in axes}
                if pos in removed:
                    return "a Squeeze removes the heads' axis"
                pos, rank = pos - sum(1 for a in removed if a < pos), rank - len(removed)
        ops.append(node)
        value = node.outputs[0]
    if not ops:
        return "the head Concat feeds the Conv directly already"
    return _Chain(concat, ops, reshape_axes, pos)


def _apply(graph: ir.Graph, chain: _Chain) -> str:
    """Rewrite ``chain``; returns the name of the Conv input (kept)."""
    merged = chain.concat.outputs[0]
    last = chain.ops[-1]
    out = last.outputs[0]
    laid_out = []
    for h, piece in enumerate(v for v in chain.concat.inputs if v is not None):
        current = piece
        for k, op in enumerate(chain.ops):
            inputs = list(op.inputs)
            inputs[0] = current
            if k in chain.reshape_axes:
                target = [int(t) for t in const_array(op.inputs[1]).reshape(-1)]
                target[chain.reshape_axes[k]] = _static(piece.shape)[norm_axis(attr(chain.concat, "axis", 0), len(piece.shape))]
                shape_name = f"{merged.name}.o_proj_shape{k}_h{h}"
                shape_value = ir.Value(name=shape_name, const_value=ir.tensor(np.array(target, dtype=np.int64), name=shape_name))
                shape_value.shape = ir.Shape([len(target)])
                shape_value.dtype = ir.DataType.INT64
                graph.register_initializer(shape_value)
                inputs[1] = shape_value
            result = ir.Value(name=f"{merged.name}.o_proj{k}_h{h}")
            result.dtype = piece.dtype
            clone = ir.Node(op.domain, op.op_type, inputs, attributes=list(op.attributes.values()), outputs=[result],
                            name=f"{op.name or op.op_type}.h{h}", version=op.version)
            graph.insert_before(last, clone)
            current = result
        laid_out.append(current)
    new_out = ir.Value(name=None, shape=out.shape)
    new_out.dtype = out.dtype
    concat = ir.Node("", "Concat", laid_out, attributes=[ir.AttrInt64("axis", chain.channel)], outputs=[new_out],
                     name=f"{chain.concat.name}.o_proj")
    graph.insert_before(last, concat)
    name = out.name
    ir.convenience.replace_all_uses_with(out, new_out)
    out.name = f"{name}.replaced"
    new_out.name = name
    for node in [*reversed(chain.ops), chain.concat]:
        graph.remove(node, safe=True)
    return name
