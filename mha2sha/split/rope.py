"""Rotate-half RoPE per head as one MatMul by a constant, not Slice/Slice/Neg/Concat.

HF-style rotary embeddings compute ``rotate_half(x) = concat(-x[..., h:], x[..., :h])``
(h = D / 2) and then ``x * cos + rotate_half(x) * sin``. Cloned per head, the rotation is
four ops per query head and per kv head (160 for a 32 / 8-head layer, against 4 in the MHA
model, where one set of ops covers every head). The rotation is linear in the head's
channels: ``rotate_half(x) = x @ R`` with R the signed permutation

    R[j + h, j] = -1,  R[j, j + h] = 1     (j < h)

so each head's rotation becomes one ``MatMul(x_h, R)``; R is a D x D constant shared by
every head of the block (entries -1, 0, 1: exact in any float type).

Why a MatMul by R and not the rotation folded into a second projection weight
(``x @ (W_h R)``): both leave five ops per head, but on Qualcomm's HTP backend the folded
form reads a second copy of the Q and K weights (one-layer 2048-wide Llama, seq 128:
DDR read 104.7 MB against 94.3 MB) and keeps more ops (runlist 5263 against 5074; the
Slice/Neg/Concat form 5373, the MHA model 5270). A D x D MatMul is cheap next to a
projection.

Quantized models: the rotation is rewritten only when the MHA model's quantizers on the
way are those the MatMul form keeps (x's and the concatenation's; see _same_quantizers),
so the simulated quantization is unchanged; otherwise the generic per-head clone stays,
quantizer for quantizer. R carries no encoding (its entries are exact on any grid): the
QDQ writer keeps it float, like the other constants the split adds.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mha2sha.analysis.layout import per_head_layout
from mha2sha.graph.ir_utils import attr, const_array, dims, node_opset, norm_axis

_BIG = 2**31 - 1  # Slice ends at or beyond this mean "to the end"


def _last_axis_halves(node: ir.Node, rank: int, size: int) -> tuple[int, int] | None:
    """(start, stop) of a Slice along the last axis with unit step, or None."""
    if node_opset(node) < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        ins = list(node.inputs) + [None] * (5 - len(node.inputs))
        starts, ends = const_array(ins[1]), const_array(ins[2])
        axes = const_array(ins[3]) if ins[3] is not None else None
        steps = const_array(ins[4]) if ins[4] is not None else None
        if starts is None or ends is None or (ins[3] is not None and axes is None) or (ins[4] is not None and steps is None):
            return None
    starts = [int(s) for s in np.asarray(starts).reshape(-1)]
    ends = [int(e) for e in np.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if len(starts) != 1 or len(ends) != 1 or len(axes) != 1 or norm_axis(axes[0], rank) != rank - 1:
        return None
    if steps is not None and [int(s) for s in np.asarray(steps).reshape(-1)] != [1]:
        return None
    start, stop = starts[0], ends[0]
    start = start + size if start < 0 else start
    stop = size if stop >= min(_BIG, size) else (stop + size if stop < 0 else stop)
    return start, stop


def _halves(first: ir.Value, second: ir.Value) -> tuple[ir.Value, list[ir.Node]] | None:
    """x when ``first`` = x[..., :h] and ``second`` = x[..., h:] (two Slices or one Split)
    with h = D / 2, and the nodes that made them."""
    a, b = first.producer(), second.producer()
    if a is None or b is None or a.inputs[0] is None or a.inputs[0] is not b.inputs[0]:
        return None
    x = a.inputs[0]
    shape = dims(x)
    if not shape or not isinstance(shape[-1], int) or shape[-1] % 2:
        return None
    rank, size = len(shape), shape[-1]
    half = size // 2
    if a.op_type == "Slice" and b.op_type == "Slice" and a is not b:
        if _last_axis_halves(a, rank, size) == (0, half) and _last_axis_halves(b, rank, size) == (half, size):
            return x, [a, b]
        return None
    if a.op_type == "Split" and a is b and len(a.outputs) == 2 and a.outputs[0] is first and a.outputs[1] is second:
        if norm_axis(attr(a, "axis", 0), rank) != rank - 1:
            return None
        split = attr(a, "split")
        if split is None and len(a.inputs) > 1 and a.inputs[1] is not None:
            split = const_array(a.inputs[1])
            if split is None:
                return None
        if split is None or [int(s) for s in np.asarray(split).reshape(-1)] == [half, half]:
            return x, [a]
    return None


def rotate_half_source(node: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """x and the nodes between it and ``node`` when ``node`` is
    ``Concat(Neg(x[..., h:]), x[..., :h], axis=-1)``, else None."""
    if node.op_type != "Concat" or len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    negated, first = node.inputs
    neg = negated.producer()
    if neg is None or neg.op_type != "Neg" or neg.inputs[0] is None:
        return None
    found = _halves(first, neg.inputs[0])
    if found is None:
        return None
    x, makers = found
    rank = len(dims(x))
    if norm_axis(attr(node, "axis", 0), rank) != rank - 1:
        return None
    return x, makers + [neg]


def _same_quantizers(requantized, concat: ir.Node, x: ir.Value) -> bool:
    """Whether quantizing ``x @ R`` with the concatenation's encoding is what the MHA model's
    quantizers do. ``requantized(a, b)``: a carries an encoding other than b's (a name
    nobody has, "", for b: whether a carries an encoding at all). Quantizing is elementwise
    and idempotent, so the rotation may drop a quantizer that repeats the concatenation's
    (AIMET ties a Concat's input quantizers to its output's) or that repeats x's on the
    half that is not negated; the negated half must reach the Neg unquantized (or on x's
    grid), and the Neg's output quantizer must be the concatenation's or none."""
    out = concat.outputs[0].name
    negated, first = concat.inputs
    neg = negated.producer()
    second = neg.inputs[0]

    def known(v: ir.Value) -> bool:
        return bool(v.name)

    if not all(known(v) for v in (x, first, second, negated, concat.outputs[0])):
        return False
    if requantized(second.name, x.name):
        return False
    if requantized(first.name, x.name) and requantized(first.name, out):
        return False
    return not (requantized(negated.name, "") and requantized(negated.name, out))


def rotation_matrix(size: int, dtype: np.dtype) -> np.ndarray:
    """R with ``x @ R == concat(-x[..., h:], x[..., :h])``."""
    half = size // 2
    r = np.zeros((size, size), dtype=dtype)
    j = np.arange(half)
    r[j + half, j] = -1
    r[j, j + half] = 1
    return r


def emit_rotate_half(em, inst, head: int, tag: str) -> dict[int, ir.Value] | None:
    """Head ``head`` of the rotate-half Concat instance ``inst`` as ``MatMul(x_h, R)``
    through the emitter ``em`` (mha2sha.split.emit.BlockSplitter); None when ``inst`` is
    not a rotate-half or its pieces cannot be had this way (the generic clone then runs)."""
    node = inst.node
    found = rotate_half_source(node)
    if found is None:
        return None
    x, makers = found
    if em.requantized is not None and not _same_quantizers(em.requantized, node, x):
        return None
    # x's layout in the block: the one its reader (the Slice/Split making x[..., :h]) was
    # analysed with.
    made_by = em._sources.get((id(node.inputs[1]), em._layout_id(inst.inputs[1])))
    if made_by is None or made_by[0] != "produced":
        return None
    reader = made_by[1][0]
    x_layout = reader.inputs[0]
    if x_layout is None or reader.node is not makers[0]:
        return None
    per, _ = per_head_layout(x_layout, em.space)
    size = dims(x)[-1]
    if not per or per[-1].size != size:  # the head's channels are not the whole last axis
        return None
    out_per, _ = per_head_layout(inst.outputs[0], em.space)
    if len(out_per) != len(per):
        return None
    piece = em.piece(x, x_layout, head)
    dtype = x.dtype.numpy() if x.dtype is not None else np.float32
    key = ("rotate_half", size, np.dtype(dtype).str)
    rotation = em.emitted.get(key)
    if rotation is None:
        rotation = em.emitted[key] = em._const(f"{em.block.name}.rotate_half_{size}", rotation_matrix(size, dtype))
    out = em._value(em._name(tag, node.outputs[0].name, "rotate_half"), node.outputs[0], out_per)
    em._node("MatMul", [piece, rotation], None, f"{em.block.name}.{tag}.rotate_half", [out])
    return {0: out}


def is_rotation(tensor) -> bool:
    """Whether a constant (an ir tensor) is R above or a multiple of it (the score scale
    folded in): square, at most 1024 wide (only those are read)."""
    shape = [int(d) for d in tensor.shape]
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] % 2 or shape[0] > 1024:
        return False
    values = tensor.numpy()
    factor = values[0, shape[0] // 2]
    return bool(factor != 0 and np.array_equal(values, rotation_matrix(shape[0], values.dtype) * factor))


def _producer_instance(em, value: ir.Value, layout):
    """The block instance that makes ``value`` with ``layout``, or None."""
    if layout is None:
        return None
    found = em._sources.get((id(value), em._layout_id(layout)))
    return found[1][0] if found is not None and found[0] == "produced" else None


def _only_reader(value: ir.Value, node: ir.Node) -> bool:
    uses = list(value.uses())
    return not value.is_graph_output() and len(uses) == 1 and uses[0].node is node


def emit_scaled_scores(em, inst, head: int, tag: str) -> dict[int, ir.Value] | None:
    """Head ``head`` of ``scores = MatMul(q * cos + rotate_half(q) * sin, k_t) / c`` (or
    ``* c``) with the constant scale folded into cos (once per block) and into R:
    ``MatMul(q * (cos s) + (q @ (R s)) * sin, k_t)``, so no head scales its [S, T] scores
    (one op per head on the largest per-head tensor: at seq 512 the HTP preparer keeps about
    9 % fewer ops). Float models only: with encodings the scores' quantizers stay where they
    are. None when ``inst`` is not this pattern (the generic clone then runs)."""
    node = inst.node
    if em.requantized is not None or node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return None
    c = const_array(node.inputs[1])
    if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.floating) or float(c.reshape(-1)[0]) == 0.0:
        return None
    scale = 1.0 / float(c.reshape(-1)[0]) if node.op_type == "Div" else float(c.reshape(-1)[0])
    matmul = _producer_instance(em, node.inputs[0], inst.inputs[0])
    if matmul is None or matmul.node.op_type != "MatMul" or not _only_reader(node.inputs[0], node):
        return None
    q_rope = matmul.node.inputs[0]
    add = _producer_instance(em, q_rope, matmul.inputs[0])
    if add is None or add.node.op_type != "Add" or not _only_reader(q_rope, matmul.node):
        return None
    muls = [_producer_instance(em, v, lay) for v, lay in zip(add.node.inputs, add.inputs)]
    if any(m is None or m.node.op_type != "Mul" for m in muls):
        return None
    # One Mul reads the rotate-half of q (and sin), the other q itself (and cos).
    for rotated_mul, plain_mul in (muls, muls[::-1]):
        for r_idx in (0, 1):
            rot_node = rotated_mul.node.inputs[r_idx].producer()
            found = rotate_half_source(rot_node) if rot_node is not None else None
            if found is None:
                continue
            q = found[0]
            if q not in plain_mul.node.inputs:
                continue
            q_idx = list(plain_mul.node.inputs).index(q)
            return _emit_folded(em, inst, head, tag, scale, matmul, plain_mul, q_idx, rotated_mul, r_idx)
    return None


def _emit_folded(em, inst, head, tag, scale, matmul, plain_mul, q_idx, rotated_mul, r_idx):
    rot_inst = _producer_instance(em, rotated_mul.node.inputs[r_idx], rotated_mul.inputs[r_idx])
    if rot_inst is None:
        return None
    node = inst.node
    q, q_layout = plain_mul.node.inputs[q_idx], plain_mul.inputs[q_idx]
    cos, cos_layout = plain_mul.node.inputs[1 - q_idx], plain_mul.inputs[1 - q_idx]
    sin, sin_layout = rotated_mul.node.inputs[1 - r_idx], rotated_mul.inputs[1 - r_idx]
    k_t, k_layout = matmul.node.inputs[1], matmul.inputs[1]
    if any(lay is None for lay in (q_layout, cos_layout, sin_layout, k_layout)) or cos.dtype is None:
        return None
    per_q, _ = per_head_layout(q_layout, em.space)
    size = dims(q)[-1] if dims(q) else None
    if not isinstance(size, int) or not per_q or per_q[-1].size != size:
        return None
    q_piece = em.piece(q, q_layout, head)
    cos_piece = em.piece(cos, cos_layout, head)
    sin_piece = em.piece(sin, sin_layout, head)
    k_piece = em.piece(k_t, k_layout, head)
    dtype = np.dtype(q.dtype.numpy()) if q.dtype is not None else np.dtype(np.float32)
    name = f"{em.block.name}.{tag}"
    key = ("scaled_cos", id(cos_piece), scale)
    scaled_cos = em.emitted.get(key)
    if scaled_cos is None:
        factor = em._const(f"{em.block.name}.score_scale", np.array(scale, dtype=np.dtype(cos.dtype.numpy())))
        scaled_cos = em._value(em._name("shared", cos.name, "cos") + ".scaled", cos)
        em._shared += 1
        try:
            em._node("Mul", [cos_piece, factor], None, f"{em.block.name}.shared.scale_cos", [scaled_cos])
        finally:
            em._shared -= 1
        em.emitted[key] = scaled_cos
    key = ("scaled_rotation", size, dtype.str, scale)
    rotation = em.emitted.get(key)
    if rotation is None:
        rotation = em.emitted[key] = em._const(f"{em.block.name}.rotate_half_{size}_scaled",
                                               (rotation_matrix(size, np.dtype(np.float64)) * scale).astype(dtype))
    q_per = per_head_layout(q_layout, em.space)[0]
    rotated = em._value(em._name(tag, q.name, "q") + ".rotated_scaled", q, q_per)
    em._node("MatMul", [q_piece, rotation], None, f"{name}.rotate_half_scaled", [rotated])
    m1 = em._value(em._name(tag, q.name, "q") + ".cos_scaled", q)
    em._node("Mul", [q_piece, scaled_cos], None, f"{name}.rope_cos", [m1])
    m2 = em._value(em._name(tag, q.name, "q") + ".sin", q)
    em._node("Mul", [rotated, sin_piece], None, f"{name}.rope_sin", [m2])
    q_rope = em._value(em._name(tag, q.name, "q") + ".rope_scaled", q)
    em._node("Add", [m1, m2], None, f"{name}.rope", [q_rope])
    out = em._value(em._name(tag, node.outputs[0].name, "scores"), node.outputs[0], per_head_layout(inst.outputs[0], em.space)[0])
    em._node("MatMul", [q_rope, k_piece], None, f"{name}.scores_scaled", [out])
    em._replayable = False
    return {0: out}
