"""The per-head rebuild of one op, one handler per op type or per kind of the op-axis table
(mha2sha/analysis/opaxes.py), registered with ``@handler(...)`` like refimpl's ``@op``.

A handler is ``handler(em, inst, ins, head, tag) -> {output index: per-head value}``: ``em`` is
the block's BlockSplitter (split/emit.py: naming, the piece cache, node building, the replay
of one head's emission for the others), ``inst`` the analysed node, ``ins`` its inputs' pieces
for ``head``. The emitter looks up the op type first, then its kind, then "same" (clone the
node with the pieces as inputs). A new op of an existing kind needs no handler; an op that
needs its attributes rewritten per head gets one here.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mha2sha.analysis.discover import Instance
from mha2sha.analysis.layout import Axis, Layout, key_of, per_head_layout, same_atoms
from mha2sha.errors import Refusal
from mha2sha.graph.ir_utils import attr, const_array, node_opset, norm_axis

SplitError = Refusal

HANDLERS: dict = {}  # op type or opaxes kind -> handler


def handler(*keys: str):
    """Register the decorated function as the handler of these op types / kinds."""

    def register(fn):
        for key in keys:
            if key in HANDLERS:
                raise ValueError(f"two handlers for {key!r}")
            HANDLERS[key] = fn
        return fn

    return register


def lookup(op_type: str, kind: str | None):
    """The handler of an op: its own, else its kind's, else "same"."""
    return HANDLERS.get(op_type) or (HANDLERS.get(kind) if kind is not None else None) or HANDLERS["same"]


def _remap(axis: int, rank: int, removed: list[int]) -> int:
    axis = norm_axis(axis, rank)
    if axis in removed:
        raise SplitError("an op works along a head axis")
    return axis - sum(1 for r in removed if r < axis)


def _same_sizes(a: Layout, b: Layout) -> bool:
    return len(a) == len(b) and all(same_atoms(x.atoms, y.atoms) for x, y in zip(a, b))


@handler("same")
def _op_same(em, inst, ins, head, tag):
    return em._clone(inst, ins, head, tag)


def _in_removed(em, inst: Instance, i: int = 0) -> tuple[int, list[int]]:
    layout = inst.inputs[i]
    _, removed = per_head_layout(layout, em.space)
    return len(layout), removed


@handler("Softmax", "softmax")
def _op_Softmax(em, inst, ins, head, tag):
    rank, removed = _in_removed(em, inst)
    default = -1 if node_opset(inst.node) >= 13 else 1
    return em._clone(inst, ins, head, tag, {"axis": _remap(attr(inst.node, "axis", default), rank, removed)})


@handler("Transpose")
def _op_Transpose(em, inst, ins, head, tag):
    rank, removed_in = _in_removed(em, inst)
    perm = attr(inst.node, "perm") or list(reversed(range(rank)))
    new_perm = [_remap(p, rank, removed_in) for p in perm if p not in removed_in]
    if new_perm == list(range(len(new_perm))):
        return em._alias(inst, ins[0], 0, tag)
    return em._clone(inst, ins, head, tag, {"perm": new_perm})


@handler("reshape", "squeeze", "unsqueeze")
def _reshape_to(em, inst, ins, head, tag) -> dict[int, ir.Value]:
    in_per, _ = per_head_layout(inst.inputs[0], em.space)
    out_per, _ = per_head_layout(inst.outputs[0], em.space)
    if _same_sizes(in_per, out_per):
        return em._alias(inst, ins[0], 0, tag)
    target: list[int] = []
    unknown = 0
    for i, ax in enumerate(out_per):
        size = ax.size
        if isinstance(size, int):
            target.append(size)
        elif i < len(in_per) and same_atoms(in_per[i].atoms, ax.atoms):
            target.append(0)
        else:
            unknown += 1
            target.append(-1)
    outs = em._outputs_for(inst, head, tag)
    if unknown > 1:
        shape_value = _runtime_target(em, inst, out_per, tag, ins[0])
    else:
        shape_value = em._ints(tag, "shape", target)
    em._node("Reshape", [ins[0], shape_value], None, f"{em.block.name}.{tag}.{inst.node.name or 'Reshape'}", [outs[0]])
    return {0: outs[0]}


def _runtime_target(em, inst: Instance, out_per: Layout, tag: str, piece: ir.Value) -> ir.Value:
    """A per-head Reshape target with several run-time sizes. Shared by every head."""
    key = ("target", id(inst.node), out_per)
    cached = em.emitted.get(key)
    if cached is not None:
        return cached.outputs[0]
    em._shared += 1  # made once, read by every head: not part of a recipe
    try:
        target = _target_from_original(em, inst, out_per)
        if target is None:
            target = _target_from_input(em, inst, out_per, piece)
    finally:
        em._shared -= 1
    em.emitted[key] = target.producer()
    return target


def _target_from_original(em, inst: Instance, out_per: Layout) -> ir.Value | None:
    """The original target with the head-dependent sizes replaced by static ones
    (x.view(B, S, 3E) -> per head (B, S, D)), when every other size is unchanged."""
    original_target = inst.node.inputs[1]
    if inst.node.op_type != "Reshape" or original_target is None:
        return None
    out_layout = inst.outputs[0]
    _, removed = per_head_layout(out_layout, em.space)
    kept_axes = [i for i in range(len(out_layout)) if i not in removed]
    static, mask = [], []
    for per_axis, orig_axis in zip(out_per, kept_axes):
        if isinstance(per_axis.size, int):
            static.append(per_axis.size)
            mask.append(True)
        elif same_atoms(per_axis.atoms, em.space.refine_axis(out_layout[orig_axis]).atoms):
            static.append(0)
            mask.append(False)
        else:
            return None
    gathered = em._value(em._unique(f"{em.block.name}.{inst.node.name or 'Reshape'}.kept_dims"), None, dtype=ir.DataType.INT64)
    em._node("Gather", [original_target, em._ints("shared", "kept_axes", kept_axes)], {"axis": 0}, f"{em.block.name}.target_gather", [gathered])
    mask_value = em._const(f"{em.block.name}.shared.static_mask", np.array(mask, dtype=np.bool_))
    target = em._value(em._unique(f"{em.block.name}.{inst.node.name or 'Reshape'}.per_head_shape"), None, dtype=ir.DataType.INT64)
    em._node("Where", [mask_value, em._ints("shared", "static_dims", static), gathered], None, f"{em.block.name}.target_where", [target])
    return target


def _target_from_input(em, inst: Instance, out_per: Layout, piece: ir.Value) -> ir.Value:
    """Each output size static, or an input size (times or divided by a static factor:
    [B*M, S, D] <-> [B, M, S, D]), read from the shape of the head's input."""
    in_per, _ = per_head_layout(inst.inputs[0], em.space)
    shape_in = em._value(em._unique(f"{em.block.name}.{inst.node.name or 'Reshape'}.input_shape"), None, dtype=ir.DataType.INT64)
    em._node("Shape", [piece], None, f"{em.block.name}.target_shape", [shape_in])
    parts: list[ir.Value] = []
    for ax in out_per:
        if isinstance(ax.size, int):
            parts.append(em._ints("shared", "dim", [ax.size]))
            continue
        parts.append(_dim_from_input(em, ax, in_per, shape_in, inst))
    target = em._value(em._unique(f"{em.block.name}.{inst.node.name or 'Reshape'}.per_head_shape"), None, dtype=ir.DataType.INT64)
    em._node("Concat", parts, {"axis": 0}, f"{em.block.name}.target_concat", [target])
    return target


def _dim_from_input(em, ax: Axis, in_per: Layout, shape_in: ir.Value, inst: Instance) -> ir.Value:
    def static_product(atoms) -> int | None:
        total = 1
        for a in atoms:
            if not isinstance(a.extent, int):
                return None
            total *= a.extent
        return total

    for j, in_ax in enumerate(in_per):
        dim = em._value(em._unique(f"{em.block.name}.dim{j}"), None, dtype=ir.DataType.INT64)
        if same_atoms(in_ax.atoms, ax.atoms):
            em._node("Gather", [shape_in, em._ints("shared", "index", [j])], {"axis": 0}, f"{em.block.name}.target_dim", [dim])
            return dim
        extra_in = [a for a in in_ax.atoms if not any(a.same_as(b) for b in ax.atoms)]
        extra_out = [a for a in ax.atoms if not any(a.same_as(b) for b in in_ax.atoms)]
        shared = len(in_ax.atoms) - len(extra_in)
        if not shared:
            continue
        if not extra_out and static_product(extra_in):
            op, factor = "Div", static_product(extra_in)
        elif not extra_in and static_product(extra_out):
            op, factor = "Mul", static_product(extra_out)
        else:
            continue
        picked = em._value(em._unique(f"{em.block.name}.dim{j}_in"), None, dtype=ir.DataType.INT64)
        em._node("Gather", [shape_in, em._ints("shared", "index", [j])], {"axis": 0}, f"{em.block.name}.target_dim", [picked])
        em._node(op, [picked, em._ints("shared", "factor", [factor])], None, f"{em.block.name}.target_{op.lower()}", [dim])
        return dim
    raise SplitError("a per-head Reshape size cannot be derived from its input's shape", inst.node)


@handler("Expand")
def _op_Expand(em, inst, ins, head, tag):
    in_per, _ = per_head_layout(inst.inputs[0], em.space)
    out_per, _ = per_head_layout(inst.outputs[0], em.space)
    if _same_sizes(in_per, out_per):
        return em._alias(inst, ins[0], 0, tag)
    shift = len(out_per) - len(in_per)
    shape = []
    for i, ax in enumerate(out_per):
        j = i - shift
        if j >= 0 and same_atoms(in_per[j].atoms, ax.atoms):
            shape.append(1)
        elif isinstance(ax.size, int):
            shape.append(ax.size)
        else:
            raise SplitError("a per-head Expand to a run-time size", inst.node)
    return em._clone(inst, ins, head, tag, extra_inputs=[ins[0], em._ints(tag, "shape", shape)])


@handler("Tile")
def _op_Tile(em, inst, ins, head, tag):
    in_per, _ = per_head_layout(inst.inputs[0], em.space)
    out_per, _ = per_head_layout(inst.outputs[0], em.space)
    if _same_sizes(in_per, out_per):
        return em._alias(inst, ins[0], 0, tag)
    if len(in_per) != len(out_per):
        # The repeat disappeared with the head axis: only unit axes differ.
        return _reshape_to(em, inst, ins, head, tag)
    reps = []
    for a, b in zip(in_per, out_per):
        if same_atoms(a.atoms, b.atoms):
            reps.append(1)
        elif isinstance(a.size, int) and isinstance(b.size, int):
            reps.append(b.size // a.size)
        else:
            raise SplitError("a per-head Tile of a run-time size", inst.node)
    return em._clone(inst, ins, head, tag, extra_inputs=[ins[0], em._ints(tag, "repeats", reps)])


@handler("Concat")
def _op_Concat(em, inst, ins, head, tag):
    rank, removed = _in_removed(em, inst)
    return em._clone(inst, ins, head, tag, {"axis": _remap(attr(inst.node, "axis"), rank, removed)})


def _window_alias(em, inst, ins, tag: str) -> dict[int, ir.Value] | None:
    """Split/Slice/Gather that only pick this path's window: the head's piece is the input's."""
    out_index, out_layout = next(iter(inst.outputs.items()))
    in_layout = inst.inputs[0]
    in_per, _ = per_head_layout(in_layout, em.space)
    out_per, _ = per_head_layout(out_layout, em.space)
    if any(ax.is_window for ax in in_layout) and _same_sizes(in_per, out_per):
        return em._alias(inst, ins[0], out_index, tag)
    return None


@handler("Split")
def _op_Split(em, inst, ins, head, tag):
    alias = _window_alias(em, inst, ins, tag)
    if alias is not None:
        return alias
    em._replayable = False  # one Split per distinct input piece, cached below
    rank, removed = _in_removed(em, inst)
    key = (id(inst.node), inst.inputs[0], key_of(inst.inputs[0], em.space, head))
    node = em.emitted.get(key)
    if node is None:
        axis = _remap(attr(inst.node, "axis", 0), rank, removed)
        outs = [em._value(em._name(tag, o.name, "split"), o) for o in inst.node.outputs]
        attributes = {k: a for k, a in inst.node.attributes.items()}
        attributes["axis"] = axis
        node = em._node("Split", ins, attributes, f"{em.block.name}.{tag}.{inst.node.name or 'Split'}", outs, version=inst.node.version)
        em.emitted[key] = node
    return {idx: node.outputs[idx] for idx in inst.outputs}


@handler("Slice")
def _op_Slice(em, inst, ins, head, tag):
    alias = _window_alias(em, inst, ins, tag)
    if alias is not None:
        return alias
    rank, removed = _in_removed(em, inst)
    if node_opset(inst.node) < 10:
        axes = attr(inst.node, "axes") or list(range(len(attr(inst.node, "starts"))))
        return em._clone(inst, ins, head, tag, {"axes": [_remap(a, rank, removed) for a in axes]})
    new_inputs = list(ins)
    if len(ins) > 3 and ins[3] is not None:
        axes = [int(a) for a in const_array(inst.node.inputs[3]).reshape(-1)]
    else:
        axes = list(range(len(const_array(inst.node.inputs[1]).reshape(-1))))
    remapped = [_remap(a, rank, removed) for a in axes]
    while len(new_inputs) < 4:
        new_inputs.append(None)
    new_inputs[3] = em._ints(tag, "axes", remapped)
    return em._clone(inst, ins, head, tag, extra_inputs=new_inputs)


@handler("Gather")
def _op_Gather(em, inst, ins, head, tag):
    alias = _window_alias(em, inst, ins, tag)
    if alias is not None:
        return alias
    if inst.node.inputs[1] is not None and const_array(inst.node.inputs[1]) is not None and const_array(inst.node.inputs[1]).ndim == 0 and inst.inputs[0][norm_axis(attr(inst.node, "axis", 0), len(inst.inputs[0]))].is_window:
        # The head's piece already holds the picked index (fused [B, S, 3, H, D]).
        return _reshape_to(em, inst, ins, head, tag)
    rank, removed = _in_removed(em, inst)
    return em._clone(inst, ins, head, tag, {"axis": _remap(attr(inst.node, "axis", 0), rank, removed)})


@handler("LayerNormalization", "norm")
def _op_LayerNormalization(em, inst, ins, head, tag):
    rank, removed = _in_removed(em, inst)
    return em._clone(inst, ins, head, tag, {"axis": _remap(attr(inst.node, "axis", -1), rank, removed)})


@handler("reduce")
def _op_reduce(em, inst, ins, head, tag):
    rank, removed = _in_removed(em, inst)
    axes = attr(inst.node, "axes")
    if axes is not None:
        return em._clone(inst, ins, head, tag, {"axes": [_remap(a, rank, removed) for a in axes]})
    if len(ins) > 1 and ins[1] is not None:
        arr = const_array(inst.node.inputs[1])
        new_axes = em._ints(tag, "axes", [_remap(int(a), rank, removed) for a in arr.reshape(-1)])
        return em._clone(inst, ins, head, tag, extra_inputs=[ins[0], new_axes])
    return em._clone(inst, ins, head, tag)


@handler("CumSum")
def _op_CumSum(em, inst, ins, head, tag):
    rank, removed = _in_removed(em, inst)
    axis = _remap(int(const_array(inst.node.inputs[1])), rank, removed)
    axis_value = em._const(f"{em.block.name}.{tag}.axis", np.array(axis, dtype=np.int64))
    return em._clone(inst, ins, head, tag, extra_inputs=[ins[0], axis_value])


@handler("RotaryEmbedding")
def _op_RotaryEmbedding(em, inst, ins, head, tag):
    per, _ = per_head_layout(inst.inputs[0], em.space)
    if len(per) == 3:
        return em._clone(inst, ins, head, tag, {"num_heads": 1})
    return em._clone(inst, ins, head, tag)


@handler("Attention")
def _op_Attention(em, inst, ins, head, tag):
    # Primitive ops per head, not a one-head Attention node (QNN cannot run those).
    from mha2sha.split import attention_op

    return attention_op.emit(em, inst, ins, head, tag)
