"""How each op carries axis layouts from its output(s) back to its inputs.

Which ops the walk sees through, and what kind of axis map each one is, is the table in
opaxes.py; here is one rule per *kind* of op. A rule receives the layout of the output the
walk arrived on and returns one entry per input: the input's layout, or None for operands
that are not data (the table's parameters: shapes, axes, indices that are rebuilt per head,
per-tensor quantization scales). A rule raises ``Unsupported`` with a reason a user can act
on; the walk then stops there (the tensor becomes a leaf sliced at run time, or, on the path
that must reach a projection, the block is reported and left unchanged).

Each rule also lists the axes its op works *along* (softmax, reductions, normalization):
those must not carry heads, which is checked once the heads are known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from mha2sha.analysis import opaxes
from mha2sha.analysis.layout import Atom, Axis, Layout, free, product, sizes_equal
from mha2sha.analysis.opaxes import OpAxes
from mha2sha.analysis.regroup import RegroupError, regroup
from mha2sha.graph.build import axes_are_computed, axes_of
from mha2sha.graph.ir_utils import attr, const_array, dims, node_opset, norm_axis


class Unsupported(Exception):
    """The walk cannot carry head axes through this node."""


@dataclass
class RuleResult:
    inputs: list[Layout | None]
    along: list[int] = field(default_factory=list)  # output axes that must be free of heads
    outputs: dict[int, Layout] | None = None  # layouts of other outputs, when they follow
    # Elementwise operands broadcast over the heads (a mask, cos/sin) are shared inputs, not
    # part of the per-head path; for other ops (Expand of a GQA repeat, a 5-D MatMul) the
    # broadcast input is the path itself.
    broadcast_is_leaf: bool = False


def _dims_or_fail(value: ir.Value) -> list:
    d = dims(value)
    if d is None:
        raise Unsupported(f"the rank of {value.name!r} is unknown")
    return d


def align_operand(out: Layout, out_dims: list, operand: ir.Value) -> Layout:
    """Layout of an operand broadcast into an output with layout ``out`` (numpy rules)."""
    od = _dims_or_fail(operand)
    shift = len(out) - len(od)
    if shift < 0:
        raise Unsupported(f"operand {operand.name!r} has a higher rank than the result")
    axes: list[Axis] = []
    for j, size in enumerate(od):
        target = out[j + shift]
        if size == 1 and not sizes_equal(target.full_size, 1):
            axes.append(Axis(tuple(a.as_broadcast() for a in target.atoms)))
        elif size is None or target.full_size is None or sizes_equal(size, target.full_size) or not isinstance(size, int) or not isinstance(target.full_size, int):
            axes.append(target)
        else:
            raise Unsupported(f"operand {operand.name!r} does not broadcast (dim {size} vs {target.full_size})")
    return tuple(axes)


def _one_element(value: ir.Value) -> bool:
    d = dims(value)
    if d is None:
        return False
    return all(isinstance(x, int) for x in d) and product(d) == 1


def _elementwise(node: ir.Node, out: Layout, entry: OpAxes) -> RuleResult:
    out_dims = [ax.full_size for ax in out]
    inputs: list[Layout | None] = []
    for i, v in enumerate(node.inputs):
        if v is None:
            inputs.append(None)
        elif entry.is_param(i):
            if entry.scalar_params and not _one_element(v):
                raise Unsupported(f"{node.op_type} with a per-axis or blocked {v.name!r} (only per-tensor parameters are shared by the heads)")
            inputs.append(None)
        else:
            inputs.append(align_operand(out, out_dims, v))
    return RuleResult(inputs, broadcast_is_leaf=True)


def _softmax(node: ir.Node, out: Layout) -> RuleResult:
    axis = norm_axis(attr(node, "axis", -1 if node_opset(node) >= 13 else 1), len(out))
    if node_opset(node) < 13:
        along = list(range(axis, len(out)))
    else:
        along = [axis]
    return RuleResult([out], along=along)


def _transpose(node: ir.Node, out: Layout) -> RuleResult:
    perm = attr(node, "perm") or list(reversed(range(len(out))))
    inp: list[Axis | None] = [None] * len(out)
    for i, p in enumerate(perm):
        inp[p] = out[i]
    return RuleResult([tuple(inp)])  # type: ignore[arg-type]


def _reshape(node: ir.Node, out: Layout) -> RuleResult:
    src = node.inputs[0]
    in_dims = _dims_or_fail(src)
    out_dims = [ax.full_size for ax in out]
    shape_out = dims(node.outputs[0])
    if shape_out is not None and len(shape_out) == len(out_dims):
        out_dims = [o if o is not None else s for o, s in zip(out_dims, shape_out)]
    try:
        return RuleResult([regroup(out, out_dims, in_dims), None])
    except RegroupError as exc:
        raise Unsupported(f"Reshape {in_dims} -> {out_dims}: {exc}") from None


def _raw_axes(node: ir.Node) -> list[int] | None:
    """The axes attribute or (newer opsets) constant axes input of Squeeze/Unsqueeze/Reduce*."""
    if axes_are_computed(node):
        raise Unsupported(f"{node.op_type} axes are computed at run time")
    return axes_of(node)


def _axes_operand(node: ir.Node, rank_: int) -> list[int] | None:
    axes = _raw_axes(node)
    return None if axes is None else sorted(norm_axis(a, rank_) for a in axes)


def _unsqueeze(node: ir.Node, out: Layout) -> RuleResult:
    axes = _axes_operand(node, len(out))
    if axes is None:
        raise Unsupported("Unsqueeze without axes")
    for a in axes:
        if not sizes_equal(out[a].size, 1):
            raise Unsupported("Unsqueeze of a non-unit axis")
    return RuleResult([tuple(ax for i, ax in enumerate(out) if i not in axes), None])


def _squeeze(node: ir.Node, out: Layout) -> RuleResult:
    in_dims = _dims_or_fail(node.inputs[0])
    axes = _axes_operand(node, len(in_dims))
    if axes is None:
        axes = [i for i, d in enumerate(in_dims) if d == 1]
    inp: list[Axis] = []
    it = iter(out)
    for i in range(len(in_dims)):
        inp.append(Axis(()) if i in axes else next(it))
    return RuleResult([tuple(inp), None])


def _expand(node: ir.Node, out: Layout) -> RuleResult:
    out_dims = [ax.full_size for ax in out]
    return RuleResult([align_operand(out, out_dims, node.inputs[0]), None])


def _tile(node: ir.Node, out: Layout) -> RuleResult:
    repeats = const_array(node.inputs[1])
    if repeats is None:
        raise Unsupported("Tile repeats computed at run time")
    in_dims = _dims_or_fail(node.inputs[0])
    inp: list[Axis] = []
    for ax, r, d in zip(out, repeats.tolist(), in_dims):
        if r == 1:
            inp.append(ax)
            continue
        if ax.is_window:
            raise Unsupported("Tile of a window")
        try:
            parts = regroup((ax,), [ax.size], [int(r), d])
        except RegroupError as exc:
            raise Unsupported(f"Tile: {exc}") from None
        inp.append(parts[1])  # the repeated copy index (outer part) does not reach the input
    return RuleResult([tuple(inp), None])


def _whole_root(ax: Axis) -> bool:
    """An axis that is one whole candidate root (the query sequence of joint attention), not a
    digit of a folded one: concatenating along it joins positions, never heads. Should heads
    turn out to live there, the block is refused (Concat works along the axis)."""
    return len(ax.atoms) == 1 and ax.atoms[0].root is not None and ax.atoms[0].div == 1 and not ax.atoms[0].broadcast \
        and (ax.atoms[0].mod is None or ax.atoms[0].mod == ax.atoms[0].size)


def _concat(node: ir.Node, out: Layout) -> RuleResult:
    axis = norm_axis(attr(node, "axis"), len(out))
    if out[axis].is_window or (any(a.root is not None for a in out[axis].atoms) and not _whole_root(out[axis])):
        raise Unsupported("Concat along an axis that carries heads")
    inputs = []
    for v in node.inputs:
        d = _dims_or_fail(v)
        inputs.append(tuple(ax if i != axis else Axis((free(d[axis]),)) for i, ax in enumerate(out)))
    return RuleResult(inputs, along=[axis])


def _split_sizes(node: ir.Node, in_dim, n_out: int) -> list[int]:
    split = attr(node, "split")
    if split is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        if arr is None:
            raise Unsupported("Split sizes computed at run time")
        split = [int(x) for x in arr.reshape(-1)]
    if split is None:
        if not isinstance(in_dim, int):
            raise Unsupported("Split of a symbolic axis into equal parts")
        n = attr(node, "num_outputs", n_out)
        chunk = -(-in_dim // n)
        split = [min(chunk, in_dim - k * chunk) for k in range(n)]
    return [int(s) for s in split]


def _window_or_free(ax: Axis, start: int, in_dim) -> Axis:
    """The input axis of a Split/Slice whose output axis is ``ax`` starting at ``start``."""
    if any(a.root is not None for a in ax.atoms):
        return Axis(ax.atoms, ax.offset + start, in_dim)
    return Axis((free(in_dim),))


def _split(node: ir.Node, out: Layout, out_index: int) -> RuleResult:
    axis = norm_axis(attr(node, "axis", 0), len(out))
    in_dims = _dims_or_fail(node.inputs[0])
    sizes = _split_sizes(node, in_dims[axis], len(node.outputs))
    start = sum(sizes[:out_index])
    inp = list(out)
    inp[axis] = _window_or_free(out[axis], start, in_dims[axis])
    return RuleResult([tuple(inp)] + [None] * (len(node.inputs) - 1))


def _slice(node: ir.Node, out: Layout) -> RuleResult:
    in_dims = _dims_or_fail(node.inputs[0])
    if node_opset(node) < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        arrays = []
        for i in range(1, 5):
            v = node.inputs[i] if len(node.inputs) > i else None
            if v is None:
                arrays.append(None)
                continue
            arr = const_array(v)
            if arr is None:
                raise Unsupported("Slice bounds computed at run time")
            arrays.append([int(x) for x in arr.reshape(-1)])
        starts, ends, axes, steps = arrays
    if axes is None:
        axes = list(range(len(starts)))
    steps = steps or [1] * len(starts)
    inp = list(out)
    for s, _end, a, st in zip(starts, ends, axes, steps):
        a = norm_axis(a, len(in_dims))
        if any(x.root is not None for x in out[a].atoms):
            if st != 1 or not isinstance(in_dims[a], int):
                raise Unsupported("strided or symbolic Slice of an axis that carries heads")
            start = max(0, min(s + in_dims[a] if s < 0 else s, in_dims[a]))
            inp[a] = Axis(out[a].atoms, out[a].offset + start, in_dims[a])
        elif not out[a].atoms and sizes_equal(dims(node.outputs[0])[a] if dims(node.outputs[0]) else None, 1) and a > 0 \
                and any(x.root is not None and not x.broadcast for x in out[a - 1].atoms):
            # One position picked next to head digits (the k or v selector of Falcon's
            # [B, S, KV, n + 2, D] reshaped away at once): a window of the fused channels,
            # as Gather of one index is.
            start = s + in_dims[a] if s < 0 else s
            inp[a] = Axis((), start, in_dims[a])
        else:
            inp[a] = Axis((free(in_dims[a]),))
    return RuleResult([tuple(inp)] + [None] * (len(node.inputs) - 1))


def _gather(node: ir.Node, out: Layout) -> RuleResult:
    data_dims = _dims_or_fail(node.inputs[0])
    axis = norm_axis(attr(node, "axis", 0), len(data_dims))
    idx = node.inputs[1]
    idx_dims = _dims_or_fail(idx)
    k = len(idx_dims)
    before, middle, after = out[:axis], out[axis : axis + k], out[axis + k :]
    if k == 0:
        arr = const_array(idx)
        if arr is None:
            raise Unsupported("Gather of one run-time index")
        i = int(arr)
        if i < 0:
            if not isinstance(data_dims[axis], int):
                raise Unsupported("negative Gather index on a symbolic axis")
            i += data_dims[axis]
        neighbours = ([before[-1]] if before else []) + ([after[0]] if after else [])
        if any(a.root is not None for ax in neighbours for a in ax.atoms):
            # The picked index sits next to head digits ([B, S, 3, H, D]): upstream it is a
            # window of the fused channels, folded into the projection's slice.
            picked = Axis((), i, data_dims[axis])
        else:
            picked = Axis((free(data_dims[axis]),))  # an ordinary gather (a RoPE pair)
        return RuleResult([tuple(before) + (picked,) + tuple(after), None])
    data = tuple(before) + (Axis((free(data_dims[axis]),)),) + tuple(after)
    return RuleResult([data, tuple(middle)])


def _matmul(node: ir.Node, out: Layout) -> RuleResult:
    a, b = node.inputs
    ad, bd = _dims_or_fail(a), _dims_or_fail(b)
    if len(ad) < 2 or len(bd) < 2:
        raise Unsupported("MatMul with a vector operand")
    k = Axis((free(ad[-1]),))
    batch = out[:-2]
    batch_dims = [ax.full_size for ax in batch]

    def operand(d: list, last_two: tuple[Axis, Axis]) -> Layout:
        n = len(d) - 2
        shift = len(batch) - n
        axes: list[Axis] = []
        for j in range(n):
            target = batch[j + shift]
            if d[j] == 1 and not sizes_equal(batch_dims[j + shift], 1):
                axes.append(Axis(tuple(x.as_broadcast() for x in target.atoms)))
            else:
                axes.append(target)
        return tuple(axes) + last_two

    return RuleResult([operand(ad, (out[-2], k)), operand(bd, (k, out[-1]))])


def _normalization(node: ir.Node, out: Layout) -> RuleResult:
    axis = norm_axis(attr(node, "axis", -1), len(out))
    out_dims = [ax.full_size for ax in out]
    inputs: list[Layout | None] = [out]
    for v in node.inputs[1:]:
        inputs.append(None if v is None else align_operand(out, out_dims, v))
    return RuleResult(inputs, along=list(range(axis, len(out))), broadcast_is_leaf=True)


def _reduce(node: ir.Node, out: Layout) -> RuleResult:
    in_dims = _dims_or_fail(node.inputs[0])
    axes = _axes_operand(node, len(in_dims))
    keep = attr(node, "keepdims", 1)
    if axes is None:
        if attr(node, "noop_with_empty_axes", 0):
            return RuleResult([out] + [None] * (len(node.inputs) - 1))
        axes = list(range(len(in_dims)))
    inp: list[Axis] = []
    it = iter(out)
    for i, d in enumerate(in_dims):
        if i in axes:
            if keep:
                next(it)
            inp.append(Axis((free(d),)))
        else:
            inp.append(next(it))
    return RuleResult([tuple(inp)] + [None] * (len(node.inputs) - 1), along=[])


def _rotary(node: ir.Node, out: Layout) -> RuleResult:
    # RotaryEmbedding (opset 23): X [B, H, S, D] or [B, S, H*D]; caches and positions are shared.
    along = [len(out) - 1] if len(out) == 4 else []
    return RuleResult([out] + [None] * (len(node.inputs) - 1), along=along)


def _cumsum(node: ir.Node, out: Layout) -> RuleResult:
    arr = const_array(node.inputs[1])
    if arr is None:
        raise Unsupported("CumSum axis computed at run time")
    return RuleResult([out, None], along=[norm_axis(int(arr), len(out))])


def _trilu(node: ir.Node, out: Layout) -> RuleResult:
    return RuleResult([out] + [None] * (len(node.inputs) - 1), along=[len(out) - 2, len(out) - 1])


# One rule per kind of the op-axis table (opaxes.TABLE says which ops are of which kind).
_BY_KIND = {
    "softmax": _softmax, "transpose": _transpose, "reshape": _reshape, "unsqueeze": _unsqueeze,
    "squeeze": _squeeze, "expand": _expand, "tile": _tile, "concat": _concat, "slice": _slice,
    "gather": _gather, "matmul": _matmul, "norm": _normalization, "reduce": _reduce,
    "rotary": _rotary, "cumsum": _cumsum, "trilu": _trilu,
}


def backward(node: ir.Node, out_index: int, out: Layout) -> RuleResult:
    """Input layouts of ``node`` given the layout of its output ``out_index``."""
    if node.domain not in opaxes.DOMAINS:
        raise Unsupported(f"op {node.domain}::{node.op_type} is from an unknown domain")
    entry = opaxes.lookup(node)
    if entry is None or not entry.heads:
        raise Unsupported(f"no rule for {node.op_type}")
    if entry.kind == "split":
        return _split(node, out, out_index)
    if entry.outputs is not None and out_index not in entry.outputs:
        raise Unsupported(f"{node.op_type} output {out_index}")
    if entry.kind == opaxes.ELEMENTWISE_KIND:
        return _elementwise(node, out, entry)
    return _BY_KIND[entry.kind](node, out)


# ---------------------------------------------------------------------------------------
# Forward rules: only for the layout ops between the attention core and the merge point.

def forward(node: ir.Node, inp: Layout) -> Layout:
    """Output layout of a layout op (opaxes.FORWARD) given the layout of its data input."""
    entry = opaxes.lookup(node)
    if entry is None or not entry.forward:
        raise Unsupported(f"no forward rule for {node.op_type}")
    op = node.op_type
    if entry.kind == opaxes.ELEMENTWISE_KIND:
        if entry.scalar_params and not all(_one_element(v) for i, v in enumerate(node.inputs) if v is not None and entry.is_param(i)):
            raise Unsupported(f"{op} with per-axis parameters")
        return inp
    if op == "Transpose":
        perm = attr(node, "perm") or list(reversed(range(len(inp))))
        return tuple(inp[p] for p in perm)
    if op in ("Reshape", "Flatten"):
        out_dims = _dims_or_fail(node.outputs[0])
        in_dims = [ax.full_size for ax in inp]
        try:
            return regroup(inp, in_dims, out_dims)
        except RegroupError as exc:
            raise Unsupported(f"{op} {in_dims} -> {out_dims}: {exc}") from None
    if op == "Unsqueeze":
        out_rank = len(inp) + len(_raw_axes(node) or [])
        axes = _axes_operand(node, out_rank) or []
        it = iter(inp)
        return tuple(Axis(()) if i in axes else next(it) for i in range(out_rank))
    if op == "Squeeze":
        in_dims = [ax.full_size for ax in inp]
        axes = _axes_operand(node, len(inp))
        if axes is None:
            axes = [i for i, d in enumerate(in_dims) if d == 1]
        for a in axes:
            if any(x.extent != 1 for x in inp[a].atoms):
                raise Unsupported("Squeeze of a non-unit axis")
        return tuple(ax for i, ax in enumerate(inp) if i not in axes)
    raise Unsupported(f"no forward rule for {op}")


def channel_axis(node: ir.Node, out_rank: int) -> int | None:
    """The output-channel axis of a projection op, or None when ``node`` is not one."""
    if node.op_type == "MatMul":
        return out_rank - 1
    if node.op_type in ("Gemm", "Conv"):
        return 1
    return None


__all__ = ["Unsupported", "RuleResult", "backward", "forward", "align_operand", "channel_axis", "product", "Atom"]
