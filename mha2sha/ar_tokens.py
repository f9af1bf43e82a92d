"""Rebuild a static-shape cached decoder for another number of new tokens per step
(``--ar-tokens T``), keeping (or changing) the context length.

A cached decoder step reads S new tokens ([B, S] ids or [B, S, E] states, position ids,
masks [.., S, P+S]) and a cache of P past positions ([.., P, ..] per layer), and writes the
present cache ([.., P+S, ..] or only the S new entries). Rebuilt for T tokens with context
C (default: the model's P + S), the same graph reads T tokens and C - T past positions.

Which dimensions are sequence dimensions is decided by structure, never by their size: a
head dim, hidden size or batch that happens to equal S is left alone. Labels start at the
cache concatenation (``Concat(past, new)`` on a graph input, or the opset-23 ``Attention``
op's past inputs): the past axis is P, the new axis S, the result T = P + S; or at a static
cache, a full-context buffer written in place (``ScatterND`` / ``ScatterElements`` on a graph
input): the buffer axis is T, the written entries S. From there they are propagated, by the
rule of each op's kind in the op-axis table (analysis/opaxes.py), through every op in both
directions (elementwise broadcasting, MatMul rows
and contraction, Transpose, Reshape by element strides, Concat, Slice, Gather, Expand, ...)
until nothing changes, reaching the token inputs, masks, position ids and the outputs. An axis
label is ``before * X * after`` (X one of S, P, T): a Reshape may merge a sequence axis with
others (``[B*S, E]``, ``[B*H, S, D]``) and split it back.

Then everything that holds a size is rewritten: graph input and output shapes, every value's
shape (value_info), Reshape / Expand / ConstantOfShape targets, Slice bounds (a slice that
makes S rows out of a fixed-size buffer keeps its end: the new tokens are the last positions
of the context), Range bounds, and constant data with a sequence axis (masks and position
biases: rows are indexed by absolute query position, columns by key position; fewer tokens
keep the last rows; other changes extend the constant along relative positions, which
requires it to be a function of ``key - query`` position, with a constant or linear
continuation; a future-position value the model does not show, for a model exported for one
token, is ``mask_fill``).

Anything else that carries a sequence axis in a way this cannot rewrite (an op without a rule,
Trilu, a Split or Tile along the sequence, a sequence axis of size 1 squeezed away...) is
refused with the op named, before the model is changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mha2sha.analysis import opaxes
from mha2sha.errors import UsageError
from mha2sha.graph.build import add_constant, axes_of, fresh_name, tensor_names
from mha2sha.graph.ir_utils import attr, const_array, describe, dims, is_const, norm_axis

INT64_MAX = np.iinfo(np.int64).max


class TokensError(UsageError):
    """The model cannot be rebuilt for another number of tokens (the reason says why)."""

    def __init__(self, message: str, at: ir.Node | None = None):
        super().__init__(None, message + (f" (at {describe(at)})" if at is not None else ""))
        self.at = at


@dataclass(frozen=True)
class Label:
    """An axis of ``before * X * after`` elements, X the sequence size of ``kind``: "S" new
    tokens, "P" past, "T" past + new; "F" an axis that must stay as it is (inserted, reduced).
    ``ub``: size-1 axes merged into this one outside the X atom (where X is 1, the order of
    size-1 axes is all that says where it goes when a Reshape splits them again)."""

    kind: str
    before: int = 1
    after: int = 1
    ub: int = 0

    def same(self, other: Label | None) -> bool:
        return other is not None and (self.kind, self.before, self.after) == (other.kind, other.before, other.after)


FIXED = Label("F")


@dataclass
class RebuildReport:
    tokens_before: int
    past_before: int
    tokens: int
    past: int
    context: int
    inputs: dict[str, tuple[list, list]] = field(default_factory=dict)  # name -> (old shape, new shape)
    outputs: dict[str, tuple[list, list]] = field(default_factory=dict)
    shape_constants: list[str] = field(default_factory=list)  # nodes whose size constants changed
    data_constants: list[str] = field(default_factory=list)  # masks / biases rebuilt
    notes: list[str] = field(default_factory=list)


# -- shapes -------------------------------------------------------------------------------------


def _shape(v: ir.Value | None) -> list[int] | None:
    if v is None:
        return None
    d = dims(v)
    if d is None or not all(isinstance(x, int) for x in d):
        return None
    return [int(x) for x in d]


def _ints(v: ir.Value | None) -> list[int] | None:
    arr = const_array(v) if v is not None else None
    return None if arr is None else [int(x) for x in np.asarray(arr).reshape(-1)]


def _axes(node: ir.Node, rank: int, input_index: int = 1) -> list[int] | None:
    return axes_of(node, rank, input_index=input_index)


# -- the propagation ----------------------------------------------------------------------------


class _Propagation:
    def __init__(self, graph: ir.Graph, sizes: dict[str, int]):
        self.graph = graph
        self.sizes = sizes  # old S, P, T
        self.labels: dict[ir.Value, list[Label | None]] = {}
        self.changed = False
        self.constraints: list[tuple] = []
        self.ambiguous = False  # whether Reshape may decide where a size-1 axis goes
        self._vary: dict = {}

    # labels
    def get(self, v: ir.Value, a: int) -> Label | None:
        lab = self.labels.get(v)
        return None if lab is None else lab[a]

    def _slot(self, v: ir.Value) -> list[Label | None]:
        lab = self.labels.get(v)
        if lab is None:
            shape = _shape(v)
            lab = self.labels[v] = [None] * (len(shape) if shape is not None else 0)
        return lab

    def set(self, v: ir.Value, a: int, label: Label, at: ir.Node | None) -> None:
        lab = self._slot(v)
        if a >= len(lab):
            return
        cur = lab[a]
        if cur is not None and cur.same(label):
            return
        if cur is None:
            lab[a] = label
            self.changed = True
            self._vary.clear()
            return
        raise TokensError(f"axis {a} of {v.name!r} is both {_say(cur)} and {_say(label)}{self._hint()}", at)

    def _hint(self) -> str:
        if self.sizes["S"] != 1:
            return ""
        return ("; the model was exported for one token, whose size-1 axes do not show where the tokens go "
                "(export for the largest number of tokens you need and rebuild down)")

    def size_of(self, label: Label) -> int:
        return label.before * self.sizes[label.kind] * label.after

    # constraints
    def eq(self, v1, a1, v2, a2, node) -> None:
        if v1 is None or v2 is None:
            return
        self.constraints.append(("eq", v1, a1, v2, a2, node))

    def soft(self, v1, a1, v2, a2, node) -> None:
        if v1 is None or v2 is None:
            return
        self.constraints.append(("soft", v1, a1, v2, a2, node))

    def run(self) -> None:
        """Propagate to a fixpoint with unambiguous rules; then, while some Reshape could
        place a size-1 sequence axis in several ways, take one such decision (the first in
        graph order, in order of size-1 axes) and propagate again."""
        for _ in range(100000):
            self._settle()
            self.ambiguous = True
            try:
                for c in self.constraints:
                    if c[0] == "reshape":
                        self._reshape(*c[1:])
                        if self.changed:
                            break
            finally:
                self.ambiguous = False
            if not self.changed:
                return
        raise TokensError("the sequence axes did not settle")  # pragma: no cover

    def _settle(self) -> None:
        for _ in range(10000):
            self.changed = False
            for c in self.constraints:
                getattr(self, "_" + c[0])(*c[1:])
            if not self.changed:
                return
        raise TokensError("the sequence axes did not settle")  # pragma: no cover

    def _eq(self, v1, a1, v2, a2, node) -> None:
        l1, l2 = self.get(v1, a1), self.get(v2, a2)
        if l1 is not None and l2 is None:
            self.set(v2, a2, l1, node)
        elif l2 is not None and l1 is None:
            self.set(v1, a1, l2, node)
        elif l1 is not None and not l1.same(l2):
            raise TokensError(f"axis {a1} of {v1.name!r} is {_say(l1)} but axis {a2} of {v2.name!r} is {_say(l2)}{self._hint()}", node)

    def _soft(self, v1, a1, v2, a2, node) -> None:
        """Size-1 axes aligned by broadcasting (``v1`` an operand, ``v2`` the result): a
        sequence label goes to the result; back to the operand only if the operand's axis
        could have that size (it comes from a graph input or a constant through ops that
        keep it, not from an inserted or reduced axis)."""
        l1, l2 = self.get(v1, a1), self.get(v2, a2)
        if l1 is not None and l1 != FIXED and l2 is None:
            self.set(v2, a2, l1, node)
        elif l2 is not None and l2 != FIXED and l1 is None and self._can_vary(v1, a1, 0):
            self.set(v1, a1, l2, node)

    def _can_vary(self, v: ir.Value, a: int, depth: int) -> bool:
        key = (v, a)
        if key in self._vary:
            return self._vary[key]
        lab = self.get(v, a)
        node = v.producer()
        if lab is not None:
            result = lab != FIXED
        elif node is None or is_const(v) or depth > 64:
            result = True
        else:
            result = True
            s_out = _shape(v)
            op = node.op_type
            if op in _BROADCAST and s_out is not None:
                result = False
                for x in node.inputs:
                    s = _shape(x)
                    if s is None:
                        result = True
                        break
                    k = a - (len(s_out) - len(s))
                    if k >= 0 and s[k] == s_out[a] and self._can_vary(x, k, depth + 1):
                        result = True
                        break
            elif op in _SAME_SHAPE and node.inputs and node.inputs[0] is not None:
                result = self._can_vary(node.inputs[0], a, depth + 1)
            elif op == "Transpose" and s_out is not None:
                perm = attr(node, "perm", list(range(len(s_out)))[::-1])
                result = self._can_vary(node.inputs[0], perm[a], depth + 1)
            elif op == "Unsqueeze" and s_out is not None:
                axes = _axes(node, len(s_out)) or []
                result = a not in axes and self._can_vary(node.inputs[0], a - sum(1 for x in axes if x < a), depth + 1)
        self._vary[key] = result
        return result

    def _fixed(self, v, a, node) -> None:
        if self.get(v, a) is None:
            self.set(v, a, FIXED, node)

    def _seed(self, v, a, label, node) -> None:
        self.set(v, a, label, node)

    def _reshape(self, vin, vout, node) -> None:
        s_in, s_out = _shape(vin), _shape(vout)
        for src, dst, s_src, s_dst in ((vin, vout, s_in, s_out), (vout, vin, s_out, s_in)):
            for i, label in enumerate(list(self.labels.get(src, []))):
                if label is None or label == FIXED:
                    continue
                candidates = _map_through_reshape(s_src, i, label, s_dst, self.sizes[label.kind])
                if any(new.same(self.get(dst, j)) for j, new in candidates):
                    continue  # already placed
                if len(candidates) == 1 or (candidates and self.ambiguous):
                    j, new = candidates[0]
                    self.set(dst, j, new, node)
                    if self.ambiguous and self.changed:
                        return

    def _concat(self, node) -> None:
        out = node.outputs[0]
        rank = len(_shape(out) or [])
        axis = norm_axis(attr(node, "axis", 0), rank)
        ins = [v for v in node.inputs if v is not None]
        labels = [self.get(v, axis) for v in ins]
        lo = self.get(out, axis)
        kinds = [lab.kind if lab is not None else None for lab in labels]
        plain = all(lab is None or (lab.before == 1 and lab.after == 1) for lab in labels)
        if len(ins) == 2 and plain:
            if kinds == ["P", "S"] or (kinds[0] == "P" and lo == Label("T")) or (kinds[1] == "S" and lo == Label("T")):
                self.set(ins[0], axis, Label("P"), node)
                self.set(ins[1], axis, Label("S"), node)
                self.set(out, axis, Label("T"), node)


def _say(label: Label) -> str:
    if label == FIXED:
        return "a fixed axis"
    name = {"S": "the new tokens", "P": "the past", "T": "past + new"}[label.kind]
    factor = label.before * label.after
    return name if factor == 1 else f"{name} (times {factor})"


def _map_through_reshape(src: list[int], i: int, label: Label, dst: list[int], x: int) -> list[tuple[int, Label]]:
    """Where axis ``i`` of ``src`` (``label``: before * X * after elements) can go in ``dst``:
    the dst axes whose element strides contain the X sub-axis, the likeliest first. Several
    only when X is 1: then size-1 axes at the same element stride are matched in order (a
    merged size-1 axis keeps its place in ``ub``), else the X atom is merged innermost into the
    axis before it ([B, S, E] -> [B*S, E])."""
    inner = math.prod(src[i + 1:])
    lo = inner * label.after
    hi = lo * x
    candidates = []
    for j in range(len(dst)):
        inner_j = math.prod(dst[j + 1:])
        outer_j = inner_j * dst[j]
        if inner_j and lo % inner_j == 0 and hi and outer_j % hi == 0 and inner_j <= lo and hi <= outer_j:
            candidates.append((j, Label(label.kind, outer_j // hi, lo // inner_j, label.ub)))
    if len(candidates) <= 1:
        return candidates
    units = [j for j, _ in candidates if dst[j] == 1 and math.prod(dst[j + 1:]) == lo]
    if units:
        run_src = [k for k in range(len(src)) if src[k] == 1 and math.prod(src[k + 1:]) == inner]
        position = (run_src.index(i) if i in run_src else 0) + label.ub
        pick = units[min(position, len(units) - 1)]
        first = (pick, Label(label.kind, 1, 1, max(0, position - (len(units) - 1))))
    else:
        pick = next((j for j, lab in candidates if lab.after == 1), candidates[0][0])
        first = next(c for c in candidates if c[0] == pick)
    return [first] + [c for c in candidates if c[0] != pick]


# Output axes = input 0's axes (unary elementwise ops, softmax), or the broadcast of the inputs:
# read from the one op-axis table.
_SAME_SHAPE = opaxes.UNARY | {op for op, e in opaxes.TABLE.items() if e.kind == "softmax"}
_BROADCAST = opaxes.ELEMENTWISE - opaxes.UNARY
_REDUCE = frozenset(op for op, e in opaxes.TABLE.items() if e.kind in ("reduce", "argreduce"))


def _broadcast(p: _Propagation, ins: list[ir.Value | None], out: ir.Value, node) -> None:
    s_out = _shape(out)
    if s_out is None:
        return
    r = len(s_out)
    for v in ins:
        s = _shape(v)
        if s is None:
            continue
        off = r - len(s)
        for a, size in enumerate(s):
            o = a + off
            if o < 0:
                continue
            if size == s_out[o] and size != 1:
                p.eq(v, a, out, o, node)
            elif size == s_out[o] == 1:
                p.soft(v, a, out, o, node)


# -- one sequence rule per kind of the op-axis table -------------------------------------------
# A rule adds the node's constraints between its input and output axes (``eq``: the same label;
# ``soft``: size-1 axes aligned by broadcasting; ``fixed``: an axis that cannot be a sequence
# axis). Which kind an op is comes from opaxes.TABLE; an op outside the table has no rule, and a
# rule returns False where it has none for this node.


def _same_axes(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s, s_out = _shape(x), _shape(out)
    if s is not None and s_out is not None and len(s) == len(s_out):
        for a in range(len(s)):
            p.eq(x, a, out, a, node)


def _elementwise(p: _Propagation, node: ir.Node, entry) -> None:
    if entry.unary:
        _same_axes(p, node, entry)
    else:
        _broadcast(p, [v for i, v in enumerate(node.inputs) if not entry.is_param(i)], node.outputs[0], node)


def _norm(p: _Propagation, node: ir.Node, entry) -> None:
    ins, out = list(node.inputs), node.outputs[0]
    s, s_out = _shape(ins[0]), _shape(out)
    if s is None or s_out is None:
        return
    for k in range(len(s)):
        p.eq(ins[0], k, out, k, node)
    _broadcast(p, [v for v in ins[1:] if v is not None], out, node)


def _matmul(p: _Propagation, node: ir.Node, entry) -> None:
    (a, b), out = node.inputs[:2], node.outputs[0]
    sa, sb, s_out = _shape(a), _shape(b), _shape(out)
    if sa is None or sb is None or s_out is None:
        return
    if len(sa) >= 2 and len(sb) >= 2:
        _broadcast_batch(p, [(a, sa[:-2]), (b, sb[:-2])], out, s_out[:-2], node)
        p.eq(a, len(sa) - 2, out, len(s_out) - 2, node)
        p.eq(b, len(sb) - 1, out, len(s_out) - 1, node)
        p.eq(a, len(sa) - 1, b, len(sb) - 2, node)
    elif len(sb) == 1:
        for k in range(len(sa) - 1):
            p.eq(a, k, out, k, node)
        p.eq(a, len(sa) - 1, b, 0, node)
    elif len(sa) == 1:
        for k in range(len(sb) - 2):
            p.eq(b, k, out, k, node)
        p.eq(b, len(sb) - 1, out, len(s_out) - 1, node)
        p.eq(a, 0, b, len(sb) - 2, node)


def _gemm(p: _Propagation, node: ir.Node, entry) -> None:
    ins, out = list(node.inputs), node.outputs[0]
    a, b = ins[0], ins[1]
    ta, tb = attr(node, "transA", 0), attr(node, "transB", 0)
    p.eq(a, 1 if ta else 0, out, 0, node)
    p.eq(b, 0 if tb else 1, out, 1, node)
    p.eq(a, 0 if ta else 1, b, 1 if tb else 0, node)
    if len(ins) > 2 and ins[2] is not None:
        _broadcast(p, [ins[2]], out, node)


def _conv(p: _Propagation, node: ir.Node, entry) -> None:
    x, w = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    sx, s_out = _shape(x), _shape(out)
    if sx is None or s_out is None:
        return
    p.eq(x, 0, out, 0, node)
    p.eq(w, 0, out, 1, node)
    kernel = list((_shape(w) or [])[2:])
    strides = attr(node, "strides", [1] * len(kernel))
    pads = attr(node, "pads", [0] * 2 * len(kernel))
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
        for k in range(2, len(sx)):
            p.eq(x, k, out, k, node)
    else:
        for k in range(2, len(sx)):
            p.constraints.append(("fixed", x, k, node))


def _transpose(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s = _shape(x)
    if s is None:
        return
    perm = attr(node, "perm", list(range(len(s)))[::-1])
    for j, k in enumerate(perm):
        p.eq(x, k, out, j, node)


def _reshape(p: _Propagation, node: ir.Node, entry) -> None:
    p.constraints.append(("reshape", node.inputs[0], node.outputs[0], node))


def _concat(p: _Propagation, node: ir.Node, entry) -> None:
    out = node.outputs[0]
    s_out = _shape(out)
    if s_out is None:
        return
    axis = norm_axis(attr(node, "axis", 0), len(s_out))
    ins = [v for v in node.inputs if v is not None]
    for v in ins:
        for k in range(len(s_out)):
            if k != axis or len(ins) == 1:  # one input: a copy (traced cache updates make them)
                p.eq(v, k, out, k, node)
    if len(ins) > 1:
        p.constraints.append(("concat", node))


def _split(p: _Propagation, node: ir.Node, entry) -> None:
    x = node.inputs[0]
    s = _shape(x)
    if s is None:
        return
    axis = norm_axis(attr(node, "axis", 0), len(s))
    for o in node.outputs:
        for k in range(len(s)):
            if k != axis:
                p.eq(x, k, o, k, node)


def _slice(p: _Propagation, node: ir.Node, entry) -> None:
    ins, out = list(node.inputs), node.outputs[0]
    x = ins[0]
    s, s_out = _shape(x), _shape(out)
    if s is None or s_out is None:
        return
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(_ints(ins[1]) or [])))
    axes = [norm_axis(a, len(s)) for a in (axes or [])]
    for k in range(len(s)):
        if k not in axes or s[k] == s_out[k]:
            p.eq(x, k, out, k, node)


def _gather(p: _Propagation, node: ir.Node, entry) -> None:
    (data, idx), out = node.inputs[:2], node.outputs[0]
    sd, si = _shape(data), _shape(idx)
    if sd is None or si is None:
        return
    g = norm_axis(attr(node, "axis", 0), len(sd))
    for k in range(g):
        p.eq(data, k, out, k, node)
    for k in range(len(si)):
        p.eq(idx, k, out, g + k, node)
    for k in range(g + 1, len(sd)):
        p.eq(data, k, out, k - 1 + len(si), node)


def _gathernd(p: _Propagation, node: ir.Node, entry) -> None:
    """out = indices axes (but the last) + data axes after the indexed ones; the batch axes are
    shared by data, indices and output. The indexed data axes are addressed by index values
    (the plan refuses a change of their size)."""
    (data, idx), out = node.inputs[:2], node.outputs[0]
    sd, si = _shape(data), _shape(idx)
    if sd is None or si is None:
        return
    b, k = attr(node, "batch_dims", 0), si[-1]
    for j in range(b):
        p.eq(data, j, out, j, node)
    for j in range(len(si) - 1):
        p.eq(idx, j, out, j, node)
    for m in range(b + k, len(sd)):
        p.eq(data, m, out, len(si) - 1 + m - b - k, node)


def _scatternd(p: _Propagation, node: ir.Node, entry) -> None:
    """out has the data's axes; updates = indices axes (but the last) + data axes after the
    indexed ones (a cache written at positions: the plan refuses a change of their size)."""
    (data, idx, upd), out = node.inputs[:3], node.outputs[0]
    sd, si = _shape(data), _shape(idx)
    if sd is None or si is None:
        return
    for j in range(len(sd)):
        p.eq(data, j, out, j, node)
    k = si[-1]
    for j in range(len(si) - 1):
        p.eq(idx, j, upd, j, node)
    for m in range(k, len(sd)):
        p.eq(data, m, upd, len(si) - 1 + m - k, node)


def _scatterelements(p: _Propagation, node: ir.Node, entry) -> None:
    """out has the data's axes; indices and updates have one shape (the plan refuses a change
    of the size of the written axis)."""
    (data, idx, upd), out = node.inputs[:3], node.outputs[0]
    sd, si = _shape(data), _shape(idx)
    if sd is None or si is None:
        return
    for j in range(len(sd)):
        p.eq(data, j, out, j, node)
    for j in range(len(si)):
        p.eq(idx, j, upd, j, node)


def _unsqueeze(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s, s_out = _shape(x), _shape(out)
    if s is None or s_out is None:
        return
    axes = _axes(node, len(s_out)) or []
    kept = [k for k in range(len(s_out)) if k not in axes]
    for k_in, k_out in enumerate(kept):
        p.eq(x, k_in, out, k_out, node)
    for k in axes:
        p.constraints.append(("fixed", out, k, node))


def _squeeze(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s, s_out = _shape(x), _shape(out)
    if s is None or s_out is None:
        return
    axes = _axes(node, len(s))
    if axes is None:
        axes = [k for k in range(len(s)) if s[k] == 1]
    kept = [k for k in range(len(s)) if k not in axes]
    for k_out, k_in in enumerate(kept):
        p.eq(x, k_in, out, k_out, node)


def _expand(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s, s_out = _shape(x), _shape(out)
    if s is None or s_out is None:
        return
    off = len(s_out) - len(s)
    for k, size in enumerate(s):
        if size == s_out[k + off] and size != 1:
            p.eq(x, k, out, k + off, node)
        elif size == s_out[k + off] == 1:
            p.soft(x, k, out, k + off, node)


def _tile(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    reps, s = _ints(node.inputs[1]), _shape(x)
    if s is None or reps is None:
        return
    for k, r in enumerate(reps):
        if r == 1:
            p.eq(x, k, out, k, node)


def _reduce(p: _Propagation, node: ir.Node, entry) -> None:
    x, out = node.inputs[0], node.outputs[0]
    s, s_out = _shape(x), _shape(out)
    if s is None or s_out is None:
        return
    if entry.kind == "argreduce":
        axes = [norm_axis(attr(node, "axis", 0), len(s))]
    else:
        axes = _axes(node, len(s))
        if axes is None:
            axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(len(s)))
    keep = attr(node, "keepdims", 1)
    j = 0
    for k in range(len(s)):
        if k in axes:
            if keep:
                p.constraints.append(("fixed", out, j, node))
                j += 1
            continue
        p.eq(x, k, out, j, node)
        j += 1


def _rotary(p: _Propagation, node: ir.Node, entry) -> None:
    ins = list(node.inputs)
    x, out = ins[0], node.outputs[0]
    s, s_out = _shape(x), _shape(out)
    if s is None or s_out is None:
        return
    for k in range(len(s)):
        p.eq(x, k, out, k, node)
    pos = ins[3] if node.domain in ("", "ai.onnx") and len(ins) > 3 else (ins[1] if node.domain == "com.microsoft" else None)
    if pos is not None and _shape(pos) is not None and len(_shape(pos)) == 2:
        seq_axis = 2 if len(s) == 4 else 1
        p.eq(pos, 0, x, 0, node)
        p.eq(pos, 1, x, seq_axis, node)


def _attention(p: _Propagation, node: ir.Node, entry) -> bool | None:
    ins = list(node.inputs)
    q, k, v = ins[0], ins[1], ins[2]
    sq = _shape(q)
    if node.domain not in ("", "ai.onnx") or sq is None or len(sq) != 4:
        return False  # the com.microsoft contrib op, or a 3-D layout: no rule
    y = node.outputs[0]
    p.eq(q, 0, y, 0, node)
    p.eq(q, 2, y, 2, node)
    p.eq(k, 2, v, 2, node)
    p.eq(k, 0, q, 0, node)
    past_k = ins[4] if len(ins) > 4 else None
    past_v = ins[5] if len(ins) > 5 else None
    present = [o for o in node.outputs[1:3]]
    key_axis_source = (present[0] if present and present[0] is not None else None) if past_k is not None else k
    if past_k is not None:
        for pv, new, pres in ((past_k, k, present[0] if present else None), (past_v, v, present[1] if len(present) > 1 else None)):
            p.constraints.append(("seed", pv, 2, Label("P"), node))
            p.constraints.append(("seed", new, 2, Label("S"), node))
            if pres is not None:
                p.constraints.append(("seed", pres, 2, Label("T"), node))
    mask = ins[3] if len(ins) > 3 else None
    sm = _shape(mask)
    if sm is not None and len(sm) >= 2:
        if sm[-2] == sq[2] and sq[2] != 1:
            p.eq(mask, len(sm) - 2, q, 2, node)
        elif sm[-2] == sq[2] == 1:
            p.soft(mask, len(sm) - 2, q, 2, node)
        if key_axis_source is not None:
            p.eq(mask, len(sm) - 1, key_axis_source, 2, node)


def _no_constraint(p: _Propagation, node: ir.Node, entry) -> None:
    """The output axes are made from parameters (Range, ConstantOfShape: the plan rewrites
    them), carry no data axis (Shape, Size, Constant), or are worked along in a way that the
    plan refuses on a sequence axis (CumSum, Trilu)."""


_RULES = {
    opaxes.ELEMENTWISE_KIND: _elementwise, "softmax": _same_axes, "norm": _norm, "cumsum": _same_axes,
    "trilu": _same_axes, "rotary": _rotary, "reshape": _reshape, "unsqueeze": _unsqueeze,
    "squeeze": _squeeze, "transpose": _transpose, "expand": _expand, "tile": _tile, "concat": _concat,
    "split": _split, "slice": _slice, "gather": _gather, "reduce": _reduce, "argreduce": _reduce,
    "matmul": _matmul, "gemm": _gemm, "conv": _conv, "gathernd": _gathernd, "scatternd": _scatternd,
    "scatterelements": _scatterelements,
    "attention": _attention, "range": _no_constraint, "fill": _no_constraint, "nodata": _no_constraint,
}


def _constraints(p: _Propagation, node: ir.Node) -> bool:
    """Add the node's constraints from its entry in the op-axis table; False when the op is
    not in the table (a sequence axis reaching it refuses the rebuild)."""
    entry = opaxes.lookup(node)
    if entry is None:
        return False
    return _RULES[entry.kind](p, node, entry) is not False


def _broadcast_batch(p, operands, out, s_out, node) -> None:
    r = len(s_out)
    for v, s in operands:
        off = r - len(s)
        for a, size in enumerate(s):
            o = a + off
            if o < 0:
                continue
            if size == s_out[o] and size != 1:
                p.eq(v, a, out, o, node)
            elif size == s_out[o] == 1:
                p.soft(v, a, out, o, node)


def _cache_seeds(graph: ir.Graph) -> list[tuple[ir.Node, ir.Value, ir.Value, int]]:
    """``Concat(past, new)`` with ``past`` a graph input: (node, past, new, axis)."""
    found = []
    inputs = set(graph.inputs)
    for node in graph:
        if node.op_type != "Concat" or len(node.inputs) != 2:
            continue
        past, new = node.inputs
        if past in inputs and new is not None and not is_const(new):
            rank = len(_shape(node.outputs[0]) or [])
            if rank:
                found.append((node, past, new, norm_axis(attr(node, "axis", 0), rank)))
    return found


def _static_cache_writes(graph: ir.Graph) -> list[tuple[ir.Node, int, int]]:
    """A static cache: a graph input (through layout ops) written in place at the step's
    positions, ``ScatterElements(cache, positions, new, axis)`` or ``ScatterND(cache,
    positions [S, 1], new)``: (node, the buffer's sequence axis, the new entries' one). Raises
    when a graph input is written in another way."""
    inputs = set(graph.inputs)
    found = []
    for node in graph:
        if node.op_type not in ("ScatterND", "ScatterElements") or len(node.inputs) < 3:
            continue
        v = node.inputs[0]
        while v is not None and v not in inputs and v.producer() is not None and v.producer().op_type in ("Transpose", "Identity"):
            v = v.producer().inputs[0]
        if v not in inputs:
            continue
        sd, si, su = (_shape(x) for x in node.inputs[:3])
        if sd is None or si is None or su is None:
            raise TokensError("a cache written in place with unknown shapes", node)
        if node.op_type == "ScatterElements":
            axis = norm_axis(attr(node, "axis", 0), len(sd))
            found.append((node, axis, axis))
        elif len(si) == 2 and si[1] == 1 and attr(node, "reduction", "none") == "none":
            found.append((node, 0, 0))  # positions [S, 1] index the buffer's first axis
        else:
            raise TokensError(f"a cache written in place by ScatterND with indices {si}: only [new tokens, 1] position updates are rebuilt", node)
    return found


# -- the rebuild --------------------------------------------------------------------------------


def rebuild_for_tokens(model: ir.Model, tokens: int, context: int | None = None, *, mask_fill: float | None = None) -> RebuildReport:
    """Rebuild ``model`` (in place) for ``tokens`` new tokens per step and a context of
    ``context`` positions (default: unchanged), past = context - tokens. See the module
    docstring. Raises TokensError (nothing changed) when the model cannot be rebuilt."""
    from mha2sha.passes.fold import fold_static_shapes
    from mha2sha.passes.shapes import infer_shapes

    graph = model.graph
    graph.sort()
    infer_shapes(model)
    if fold_static_shapes(graph):
        graph.sort()
        infer_shapes(model)
    for v in graph.inputs:
        if _shape(v) is None:
            raise TokensError(f"graph input {v.name!r} has a symbolic or unknown shape; --ar-tokens rebuilds static-shape models (a model with a symbolic sequence length already takes any number of tokens)")
    seeds = _cache_seeds(graph)
    attention_ops = [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx") and len(n.inputs) > 4 and n.inputs[4] is not None]
    writes = _static_cache_writes(graph) if not seeds and not attention_ops else []
    if not seeds and not attention_ops and not writes:
        raise TokensError("no KV cache found (a graph input concatenated with the new keys or values, or an Attention op with past inputs): only cached decoders can be rebuilt for another number of tokens")
    s_old = p_old = None
    for node, past, new, axis in seeds:
        ps, ns = _shape(past), _shape(new)
        if ps is None or ns is None:
            raise TokensError("the cache concatenation has unknown shapes", node)
        s_old, p_old = _agree(s_old, ns[axis], "new tokens", node), _agree(p_old, ps[axis], "past length", node)
    for node in attention_ops:
        ks, ps = _shape(node.inputs[1]), _shape(node.inputs[4])
        if ks is None or ps is None or len(ks) != 4:
            raise TokensError("the Attention op's key / past shapes are not static 4-D", node)
        s_old, p_old = _agree(s_old, ks[2], "new tokens", node), _agree(p_old, ps[2], "past length", node)
    for node, data_axis, update_axis in writes:
        sd, su = _shape(node.inputs[0]), _shape(node.inputs[2])
        s_old = _agree(s_old, su[update_axis], "new tokens", node)
        p_old = _agree(p_old, sd[data_axis] - su[update_axis], "past length", node)
    if p_old == 0:
        raise TokensError("the model's past length is 0: its past axes cannot be told apart")
    c_old = s_old + p_old
    context = c_old if context is None else int(context)
    tokens = int(tokens)
    if not 1 <= tokens <= context:
        raise TokensError(f"--ar-tokens {tokens}: must be between 1 and the context length {context}")
    if tokens == context:
        raise TokensError(f"--ar-tokens {tokens} leaves no past positions in a context of {context}")
    report = RebuildReport(s_old, p_old, tokens, context - tokens, context)

    prop = _Propagation(graph, {"S": s_old, "P": p_old, "T": c_old})
    for node, data_axis, update_axis in writes:
        # A static cache: the buffer holds the whole context; the step writes its new tokens.
        prop.constraints.append(("seed", node.inputs[0], data_axis, Label("T"), node))
        prop.constraints.append(("seed", node.inputs[2], update_axis, Label("S"), node))
        prop.constraints.append(("seed", node.outputs[0], data_axis, Label("T"), node))
    for node, past, new, axis in seeds:
        prop.constraints.append(("seed", past, axis, Label("P"), node))
        prop.constraints.append(("seed", new, axis, Label("S"), node))
        prop.constraints.append(("seed", node.outputs[0], axis, Label("T"), node))
    no_rule: list[ir.Node] = []
    for node in graph:
        if not _constraints(prop, node):
            no_rule.append(node)
    prop.run()
    for node in no_rule:
        for v in list(node.inputs) + list(node.outputs):
            if v is not None and any(lab not in (None, FIXED) for lab in prop.labels.get(v, [])):
                raise TokensError(f"{node.op_type} reads or writes a sequence axis and has no rule for a rebuild", node)

    new_sizes = {"S": tokens, "P": context - tokens, "T": context, "F": None}

    def new_shape(v: ir.Value) -> list[int] | None:
        s = _shape(v)
        if s is None:
            return None
        labels = prop.labels.get(v) or [None] * len(s)
        return [d if lab is None or lab.kind == "F" else lab.before * new_sizes[lab.kind] * lab.after for d, lab in zip(s, labels)]

    # Plan every change before touching the model.
    plan = _Plan()
    for node in graph:
        _plan_node(node, prop, new_shape, plan, report)
    for value, labels in prop.labels.items():
        if any(lab not in (None, FIXED) for lab in labels) and is_const(value):
            _plan_data_constant(value, labels, prop, new_sizes, plan, report, mask_fill)
    for v in graph.outputs:
        old = _shape(v)
        if old is not None and new_shape(v) != old:
            report.outputs[v.name] = (old, new_shape(v))
    undo = _Undo()
    try:
        _apply_constants(graph, plan, undo)
        for v in list(graph.inputs) + [o for n in graph for o in n.outputs]:
            if is_const(v):
                continue  # a constant's readers were given its rebuilt value (the plan)
            shape = new_shape(v)
            if shape is not None and shape != _shape(v):
                if v in graph.inputs:
                    report.inputs[v.name] = (_shape(v), shape)
                undo.shapes.append((v, v.shape))
                v.shape = ir.Shape(shape)
        _check_shapes(model)
    except BaseException:
        undo.run(graph)
        raise
    from mha2sha.passes.cleanup import remove_dead

    remove_dead(model)
    return report


@dataclass
class _Undo:
    shapes: list = field(default_factory=list)  # (value, old shape)
    values: list = field(default_factory=list)  # (value, old const_value, old shape)
    inputs: list = field(default_factory=list)  # (node, index, old input)
    added: list = field(default_factory=list)  # initializers registered

    def run(self, graph: ir.Graph) -> None:
        for node, index, old in reversed(self.inputs):
            node.replace_input_with(index, old)
        for v in self.added:
            graph.initializers.pop(v.name, None)
        for v, const, shape in reversed(self.values):
            v.const_value = const
            v.shape = shape
        for v, shape in reversed(self.shapes):
            v.shape = shape


def _apply_constants(graph: ir.Graph, plan: _Plan, undo: _Undo) -> None:
    """Give each planned node input its new constant: the old initializer's value is replaced
    when every reader gets the same new value, else new initializers are made."""
    by_value: dict[ir.Value, list] = {}
    for (node, index), array in plan.inputs.items():
        by_value.setdefault(node.inputs[index], []).append((node, index, array))
    names = tensor_names(graph)
    for old, entries in by_value.items():
        arrays = [a for _, _, a in entries]
        everyone = len(entries) == len(old.uses()) and all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays)
        if everyone and old.name in graph.initializers and not old.is_graph_input() and not old.is_graph_output():
            undo.values.append((old, old.const_value, old.shape))
            old.const_value = ir.tensor(arrays[0], name=old.name)
            old.shape = ir.Shape(list(arrays[0].shape))
            continue
        made: list[tuple[np.ndarray, ir.Value]] = []
        for node, index, array in entries:
            v = next((val for arr, val in made if arr.shape == array.shape and np.array_equal(arr, array)), None)
            if v is None:
                v = add_constant(graph, fresh_name(f"{old.name or 'const'}.ar", names, sep=""), array)
                undo.added.append(v)
                made.append((array, v))
            undo.inputs.append((node, index, old))
            node.replace_input_with(index, v)


def _check_shapes(model: ir.Model) -> None:
    """ONNX shape inference over the rebuilt graph must agree with every shape the rebuild set
    (a sequence axis put in the wrong place shows up as a mismatch)."""
    import onnx

    from mha2sha.passes.shapes import _proto_without_weights

    proto = _proto_without_weights(model)
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        message = str(exc)
        if "differ" in message or "Incompatible" in message or "mismatch" in message.lower():
            raise TokensError(f"the rebuilt shapes are inconsistent ({message.strip()[:300]}); a sequence axis could not be located (size-1 axes in the exported model are ambiguous)") from None


def _agree(current: int | None, value: int, what: str, node) -> int:
    if current is not None and current != value:
        raise TokensError(f"the caches disagree on the {what} ({current} and {value})", node)
    return value


@dataclass
class _Plan:
    inputs: dict[tuple[ir.Node, int], np.ndarray] = field(default_factory=dict)

    def put(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        self.inputs[(node, index)] = array


def _labeled(prop: _Propagation, v: ir.Value | None, a: int) -> Label | None:
    if v is None:
        return None
    lab = prop.get(v, a)
    return None if lab == FIXED else lab


def _plan_node(node: ir.Node, prop: _Propagation, new_shape, plan: _Plan, report: RebuildReport) -> None:
    op = node.op_type
    ins = list(node.inputs)
    out = node.outputs[0] if node.outputs else None

    def any_label(v):
        return v is not None and any(lab not in (None, FIXED) for lab in prop.labels.get(v, []))

    if not any(any_label(v) for v in ins + list(node.outputs)):
        return
    s_out, n_out = _shape(out), new_shape(out) if out is not None else None
    if op == "Reshape":
        target = _ints(ins[1])
        if target is None:
            if n_out != s_out:
                raise TokensError("a Reshape whose target is computed at run time reshapes a sequence axis", node)
            return
        allowzero = attr(node, "allowzero", 0)
        new = list(target)
        n_in = new_shape(ins[0])
        for j, t in enumerate(target):
            if t == -1:
                continue
            if t == 0 and not allowzero:
                if n_in[j] != n_out[j]:
                    raise TokensError("a Reshape copies an axis (0) whose size the rebuild changes differently", node)
                continue
            new[j] = n_out[j]
        if new != target:
            plan.put(node, 1, np.array(new, dtype=np.int64))
            report.shape_constants.append(node.name or op)
        return
    if op == "Expand":
        target = _ints(ins[1])
        if target is None:
            raise TokensError("an Expand whose shape is computed at run time expands a sequence axis", node)
        n_in = new_shape(ins[0])
        off = len(n_out) - len(n_in)
        new = list(target)
        t_off = len(n_out) - len(target)
        for j in range(len(n_out)):
            tj = j - t_off
            if tj < 0:
                continue
            from_input = j - off >= 0 and n_in[j - off] == n_out[j]
            new[tj] = 1 if (target[tj] == 1 and from_input) else n_out[j]
        if new != target:
            plan.put(node, 1, np.array(new, dtype=np.int64))
            report.shape_constants.append(node.name or op)
        return
    if op == "ConstantOfShape":
        target = _ints(ins[0])
        if target is None:
            return
        if list(n_out) != target:
            plan.put(node, 0, np.array(n_out, dtype=np.int64))
            report.shape_constants.append(node.name or op)
        return
    if op == "Slice":
        _plan_slice(node, prop, new_shape, plan, report)
        return
    if op == "Range":
        start, limit, delta = (const_array(v) for v in ins[:3])
        if any(x is None for x in (start, limit, delta)):
            raise TokensError("a Range with run-time bounds makes a sequence axis", node)
        count = n_out[0]
        if count != s_out[0]:
            new_start = np.asarray(limit - count * delta, dtype=np.asarray(start).dtype)
            plan.put(node, 0, new_start)
            report.shape_constants.append(node.name or op)
        return
    if op == "Split":
        s = _shape(ins[0])
        axis = norm_axis(attr(node, "axis", 0), len(s))
        if _labeled(prop, ins[0], axis) is not None and len(node.outputs) > 1:
            raise TokensError("a Split along a sequence axis", node)
        return
    if op == "Tile":
        reps = _ints(ins[1]) or []
        for k, r in enumerate(reps):
            if r != 1 and (_labeled(prop, ins[0], k) or _labeled(prop, out, k)):
                raise TokensError("a Tile along a sequence axis", node)
        return
    if op == "Concat":
        rank = len(s_out)
        axis = norm_axis(attr(node, "axis", 0), rank)
        n_ins = [new_shape(v) for v in ins if v is not None]
        if sum(s[axis] for s in n_ins) != n_out[axis]:
            raise TokensError("a Concat along a sequence axis that is not the cache concatenation", node)
        return
    if op in ("GatherND", "ScatterND"):
        s_data, s_idx = _shape(ins[0]), _shape(ins[1])
        if s_data is not None and s_idx is not None:
            b = attr(node, "batch_dims", 0) if op == "GatherND" else 0
            n_data = new_shape(ins[0])
            for a in range(b, b + s_idx[-1]):
                if n_data[a] != s_data[a]:
                    raise TokensError(f"a {op} addresses positions of a sequence axis whose size the rebuild changes (axis {a}: {s_data[a]} -> {n_data[a]})", node)
        return
    if op == "ScatterElements":
        s_data = _shape(ins[0])
        axis = norm_axis(attr(node, "axis", 0), len(s_data))
        if new_shape(ins[0])[axis] != s_data[axis]:
            raise TokensError("a ScatterElements writes positions of a sequence axis whose size the rebuild changes", node)
        return
    if op in ("CumSum", "Trilu"):
        if new_shape(ins[0]) != _shape(ins[0]):
            what = "its sums run along the axis" if op == "CumSum" else "its offset is relative to the shape"
            raise TokensError(f"{op} on a sequence axis whose size the rebuild changes ({what})", node)
        return
    if op in ("Squeeze", "Gather") or op in _REDUCE:
        s_in = _shape(ins[0])
        if op == "Squeeze":
            axes = _axes(node, len(s_in))
            axes = axes if axes is not None else [k for k in range(len(s_in)) if s_in[k] == 1]
            for k in axes:
                if _labeled(prop, ins[0], k) is not None and new_shape(ins[0])[k] != 1:
                    raise TokensError("a sequence axis of size 1 is squeezed away; the rebuilt model would need it", node)
        if op == "Gather":
            g = norm_axis(attr(node, "axis", 0), len(s_in))
            if _labeled(prop, ins[0], g) is not None and is_const(ins[1]) and new_shape(ins[0])[g] != s_in[g]:
                raise TokensError("a Gather with constant indices along a sequence axis", node)
        return
    if op == "Pad" or op == "Resize" or op == "Upsample":
        raise TokensError(f"{op} on a sequence axis", node)
    # Everything else: the shapes follow from the inputs at run time. Check the rule agreed.
    return


def _plan_slice(node, prop, new_shape, plan, report) -> None:
    ins = list(node.inputs)
    x, out = ins[0], node.outputs[0]
    s_in, s_out = _shape(x), _shape(out)
    n_in, n_out = new_shape(x), new_shape(out)
    starts, ends = _ints(ins[1]), _ints(ins[2])
    if starts is None or ends is None:
        if n_in != s_in or n_out != s_out:
            raise TokensError("a Slice with run-time bounds on a sequence axis", node)
        return
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    new_starts, new_ends = list(starts), list(ends)
    for k, a in enumerate(axes):
        a = norm_axis(a, len(s_in))
        if n_in[a] == s_in[a] and n_out[a] == s_out[a]:
            continue
        if steps[k] != 1:
            raise TokensError("a strided Slice on a sequence axis", node)
        start = _clamp(starts[k], s_in[a])
        end = _clamp(ends[k], s_in[a])
        if start == 0 and end == s_in[a] and n_out[a] == n_in[a]:
            new_ends[k] = INT64_MAX  # the whole axis, whatever its size
            continue
        if n_in[a] != s_in[a]:
            raise TokensError("a Slice takes part of a sequence axis", node)
        new_start = end - n_out[a]
        if new_start < 0:
            raise TokensError(f"a Slice makes {n_out[a]} positions out of a buffer of {s_in[a]}", node)
        new_starts[k], new_ends[k] = new_start, end
    if new_starts != starts:
        plan.put(node, 1, np.array(new_starts, dtype=np.int64))
    if new_ends != ends:
        plan.put(node, 2, np.array(new_ends, dtype=np.int64))
    if new_starts != starts or new_ends != ends:
        report.shape_constants.append(node.name or "Slice")


def _clamp(i: int, n: int) -> int:
    if i < 0:
        i += n
    return max(0, min(i, n))


def _plan_data_constant(value: ir.Value, labels, prop: _Propagation, new_sizes, plan: _Plan, report: RebuildReport, mask_fill) -> None:
    """A constant with a sequence axis: a mask or position bias, rebuilt for the new sizes."""
    arr = np.asarray(const_array(value))
    seq = [k for k, lab in enumerate(labels) if lab is not None and lab.kind == "S"]
    keys = [k for k, lab in enumerate(labels) if lab is not None and lab.kind == "T"]
    users = [u.node for u in value.uses()]
    at = users[0] if users else None
    if any(lab is not None and lab.kind == "P" for lab in labels) or len(seq) > 1 or len(keys) > 1:
        raise TokensError(f"constant {value.name!r} has past or several sequence axes", at)
    if any(labels[k].before != 1 or labels[k].after != 1 for k in seq + keys):
        raise TokensError(f"constant {value.name!r} holds a sequence axis merged with others", at)
    sizes = prop.sizes
    s_new, c_new = new_sizes["S"], new_sizes["T"]
    # Indices into a table (relative-position buckets): a continuation stays inside the table.
    bounds = None
    if users and all(u.op_type == "Gather" and v.idx == 1 for u, v in zip(users, value.uses())):
        tables = [_shape(u.inputs[0]) for u in users]
        axes = [norm_axis(attr(u, "axis", 0), len(t)) for u, t in zip(users, tables) if t is not None]
        if len(axes) == len(users):
            bounds = (0, min(t[a] for t, a in zip(tables, axes)) - 1)
    new = _rebuild_array(arr, seq[0] if seq else None, keys[0] if keys else None, sizes["S"], sizes["T"], s_new, c_new, mask_fill, value.name, at, bounds)
    if new is None:
        return
    for use in value.uses():
        plan.put(use.node, use.idx, new)
    report.data_constants.append(value.name)


def _rebuild_array(arr, s_axis, t_axis, s_old, c_old, s_new, c_new, mask_fill, name, at, bounds=None) -> np.ndarray | None:
    if s_axis is None and t_axis is None:
        return None
    if t_axis is None:  # rows only
        rows = np.moveaxis(arr, s_axis, 0)
        if s_old == 1 and s_new > 1:
            # One row says nothing about the others: the same for every token (a bias) or a
            # function of the position (RoPE angles, position ids folded by the exporter).
            raise TokensError(f"constant {name!r} holds one row for the one token the model was exported for; whether the other {s_new - 1} tokens' rows equal it or depend on their position the model does not show (export for the largest number of tokens you need and rebuild down: fewer tokens keep the last rows)", at)
        if all(np.array_equal(rows[0], r) for r in rows[1:]):
            new = np.repeat(rows[:1], s_new, axis=0)
        elif c_new != c_old:
            # Rows are absolute query positions (past + i): with another context the new
            # tokens sit at positions the model does not show.
            raise TokensError(f"constant {name!r} has one row per new token (absolute positions) and the context changes", at)
        elif s_new <= s_old:
            new = rows[s_old - s_new:]
        else:
            raise TokensError(f"constant {name!r} has one row per new token and no rule for the {s_new - s_old} earlier ones", at)
        return np.ascontiguousarray(np.moveaxis(new, 0, s_axis)).astype(arr.dtype)
    if s_axis is None:  # key positions only
        if c_new == c_old:
            return None
        raise TokensError(f"constant {name!r} has one entry per key position and the context changes", at)
    if c_new == c_old and s_new <= s_old:  # the last rows: the same absolute positions
        rows = np.take(arr, range(s_old - s_new, s_old), axis=s_axis)
        return np.ascontiguousarray(rows)
    if s_old == 1 and s_new > 1 and arr.dtype.kind not in "fb":
        # One row is a function of key - query trivially; only a mask (float or bool, whose
        # masked value the caller gives: mask_fill, below) may be extended from it; index
        # tables and positions (integers) may not.
        raise TokensError(f"constant {name!r} holds one row for the one token the model was exported for; what the other {s_new - 1} tokens' rows hold the model does not show (export for the largest number of tokens you need and rebuild down: fewer tokens keep the last rows)", at)
    # Relative positions: value(i, j) = g(j - (past + i)).
    a = np.moveaxis(arr, (s_axis, t_axis), (-2, -1)).astype(np.float64)
    p_old = c_old - s_old
    d_old = np.arange(-(c_old - 1), s_old)  # every key - query offset the model shows
    g = np.full(a.shape[:-2] + (len(d_old),), np.nan)
    i = np.arange(s_old)[:, None]
    j = np.arange(c_old)[None, :]
    d = j - (p_old + i)
    for idx in np.ndindex(*d.shape):
        g[..., d[idx] + c_old - 1] = a[(..., *idx)]
    check = g[..., d + c_old - 1]
    if not np.array_equal(check, a):
        raise TokensError(f"constant {name!r} is not a function of the relative position (key - query); cannot extend it to {s_new} tokens / context {c_new}", at)
    p_new = c_new - s_new
    d_new = np.arange(-(c_new - 1), s_new)
    lo_known, hi_known = -(c_old - 1), s_old - 1
    ext = np.empty(g.shape[:-1] + (len(d_new),))
    for k, off in enumerate(d_new):
        if lo_known <= off <= hi_known:
            ext[..., k] = g[..., off - lo_known]
    if d_new[0] < lo_known:
        low = g[..., : min(len(d_old), c_old)]  # offsets up to 0 (the past)
        ext_low = _continue(low, lo_known - d_new[0], backwards=True, name=name, at=at, bounds=bounds)
        ext[..., : lo_known - d_new[0]] = ext_low
    if d_new[-1] > hi_known:
        future = g[..., c_old:]  # offsets 1 .. s_old - 1
        count = d_new[-1] - hi_known
        if future.shape[-1] == 0:
            if mask_fill is None:
                raise TokensError(f"constant {name!r} (a mask or bias exported for one token) shows no future position; give the value masked positions take (mask_fill)", at)
            tail = np.full(g.shape[:-1] + (count,), float(mask_fill))
        else:
            tail = _continue(future, count, backwards=False, name=name, at=at, bounds=bounds)
        ext[..., len(d_new) - count:] = tail
    i = np.arange(s_new)[:, None]
    j = np.arange(c_new)[None, :]
    new = ext[..., (j - (p_new + i)) + (c_new - 1)]
    new = np.moveaxis(new, (-2, -1), (s_axis, t_axis))
    return np.ascontiguousarray(new.astype(arr.dtype))


def _continue(values: np.ndarray, count: int, *, backwards: bool, name, at, bounds=None) -> np.ndarray:
    """``count`` more values beyond the last (or before the first) of ``values`` along the
    last axis: constant when the nearest known values are equal, linear when all known values
    are an arithmetic progression (held inside ``bounds``, for indices into a table: buckets
    saturate)."""
    v = values[..., ::-1] if backwards else values
    edge = v[..., -1:]
    steps = np.arange(1, count + 1)
    if v.shape[-1] >= 2 and np.array_equal(v[..., -1], v[..., -2]):
        out = np.repeat(edge, count, axis=-1)
    elif v.shape[-1] == 1:
        out = np.repeat(edge, count, axis=-1)
    else:
        diffs = np.diff(v, axis=-1)
        if not np.allclose(diffs, diffs[..., :1]):
            raise TokensError(f"constant {name!r} cannot be continued to positions the model does not show (neither constant nor linear)", at)
        out = edge + diffs[..., :1] * steps
        if bounds is not None:
            out = np.clip(out, *bounds)
    return out[..., ::-1] if backwards else out
