"""Find attention blocks by structure and work out where the heads are in every tensor.

An attention block is anchored on its core: a Softmax between MatMul(Q, K^T) and
MatMul(P, V), or an opset-23 ``Attention`` op. From the scores, every batch axis becomes a
candidate *root* (see layout.py); the walk then carries the layout of each tensor upward,
op by op, along the query, key and value paths until it meets a projection (MatMul, Gemm
or Conv with a constant weight whose output channels hold the head digits) or a tensor it
cannot see through (a leaf, sliced at run time). The query projection tells which roots
are heads. Walking down from the core output through layout ops finds the merge point,
where the heads are folded back into channels before the output projection.

Nothing here depends on tensor or node names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from mha2sha.analysis import opaxes, rules
from mha2sha.analysis.layout import Atom, Axis, HeadSpace, Layout, free, head_atoms, per_head_layout
from mha2sha.analysis.rules import Unsupported
from mha2sha.errors import Refusal
from mha2sha.graph.ir_utils import attr, const_array, describe, dims, is_const

ValueKey = tuple[ir.Value, Layout]


@dataclass(eq=False)
class Instance:
    """One node of the block, with the layouts of its tensors on one walk path."""

    node: ir.Node
    inputs: list[Layout | None]
    outputs: dict[int, Layout]
    along: list[int] = field(default_factory=list)
    path: str = ""
    keep_rank: frozenset[int] = frozenset()  # inputs whose per-head piece keeps a size-1 head axis


@dataclass(eq=False)
class Projection:
    """A projection whose output channels are sliced per head (weight sliced, input shared)."""

    node: ir.Node
    layout: Layout  # of output 0
    channel: int  # output channel axis
    weight_index: int
    path: str


@dataclass(eq=False)
class Leaf:
    value: ir.Value
    layout: Layout
    path: str
    reason: str = ""  # why the walk stopped here (empty for constants and graph inputs)
    # A normalisation across all heads (OLMo-2's q/k RMSNorm over H*D): computed once on the
    # shared projection output, and its head channels are this block's projections.
    spans_heads: bool = False


@dataclass
class Block:
    name: str
    anchor: ir.Node
    space: HeadSpace
    instances: list[Instance]
    projections: dict[ValueKey, Projection]
    leaves: dict[ValueKey, Leaf]
    produced: dict[ValueKey, tuple[Instance, int]]
    merges: list[ValueKey]
    num_heads: int
    num_kv_heads: int
    head_dim: int | None
    features: dict[str, str]


BlockError = Refusal  # the analysis' refusals are the converter's one refusal type


_PROJECTION_OPS = ("MatMul", "Gemm", "Conv")
# Views of the probabilities on their way to MatMul(P, V): heads folded back into the batch
# after a softmax over [B, H, S, T] (Bloom: Softmax -> Cast -> Reshape([B*H, S, T]) -> MatMul).
_PROBS_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_MAX_CORE_DEPTH = 12


def _root_axis(size, root: int) -> Axis:
    return Axis((Atom(size, root, 1, size if isinstance(size, int) else None),))


def _has_roots(layout: Layout) -> bool:
    return any(a.root is not None and a.extent != 1 for ax in layout for a in ax.atoms)


def _broadcast_over_roots(layout: Layout) -> bool:
    return any(a.root is not None and a.broadcast and a.size != 1 for ax in layout for a in ax.atoms)


class _Walker:
    def __init__(self) -> None:
        self.produced: dict[ValueKey, tuple[Instance, int]] = {}
        self.projections: dict[ValueKey, Projection] = {}
        self.leaves: dict[ValueKey, Leaf] = {}
        self.instances: list[Instance] = []
        self.stops: list[tuple[str, ir.Node, str]] = []  # (path, node, reason)
        self.path_override: dict[ir.Node, list[str]] = {}
        self.root_sizes: list = []  # sizes of the candidate roots (batch axes of the scores)

    # -- registration ----------------------------------------------------------------
    def add_instance(self, inst: Instance) -> None:
        self.instances.append(inst)
        for idx, layout in inst.outputs.items():
            self.produced[(inst.node.outputs[idx], layout)] = (inst, idx)

    def leaf(self, value: ir.Value, layout: Layout, path: str, reason: str = "") -> None:
        key = (value, layout)
        if key not in self.leaves and key not in self.produced and key not in self.projections:
            self.leaves[key] = Leaf(value, layout, path, reason)

    # -- the upward walk -------------------------------------------------------------
    def up(self, value: ir.Value, layout: Layout, path: str) -> None:
        work = [(value, layout, path)]
        while work:
            v, lay, p = work.pop()
            key = (v, lay)
            if key in self.produced or key in self.projections or key in self.leaves:
                continue
            node = v.producer()
            if node is None or is_const(v):
                self.leaf(v, lay, p)
                continue
            out_index = list(node.outputs).index(v)
            proj = self._projection(node, out_index, lay, p)
            if proj is not None:
                self.projections[key] = proj
                continue
            if _norm_across_heads(node, out_index, lay):
                # Kept whole before the split: each head reads its channels of the result.
                self.leaves[key] = Leaf(v, lay, p, spans_heads=True)
                continue
            try:
                res = rules.backward(node, out_index, lay)
            except Unsupported as exc:
                self.leaf(v, lay, p, str(exc))
                self.stops.append((p, node, str(exc)))
                continue
            outputs = {out_index: lay}
            if res.outputs:
                outputs.update(res.outputs)
            inst = Instance(node, res.inputs, outputs, res.along, p)
            self.add_instance(inst)
            paths = self.path_override.get(node, [p] * len(node.inputs))
            for i, (inp, in_layout) in enumerate(zip(node.inputs, res.inputs)):
                if inp is None or in_layout is None:
                    continue
                shared = res.broadcast_is_leaf and _broadcast_over_roots(in_layout)
                if is_const(inp) or inp.producer() is None or shared or not _has_roots(in_layout):
                    self.leaf(inp, in_layout, paths[i])
                else:
                    work.append((inp, in_layout, paths[i]))

    def keep_whole_projections(self) -> None:
        """A projection whose output is also read whole inside the block (the statistic of a
        decomposed RMSNorm over H*D, OLMo-2 at opset 17/18) is computed once, as in the
        original: its heads become slices of its output instead of per-head projections that
        would compute the full projection a second time."""
        whole = {id(key[0]) for key in self.produced if not _has_roots(key[1])}
        walked = {id(inst.node) for inst in self.instances}
        for key, proj in list(self.projections.items()):
            if id(key[0]) in whole or _feeds_statistic(key[0], walked):
                del self.projections[key]
                self.leaves[key] = Leaf(key[0], key[1], proj.path, spans_heads=True)

    def _projection(self, node: ir.Node, out_index: int, layout: Layout, path: str) -> Projection | None:
        if out_index != 0 or node.op_type not in _PROJECTION_OPS or node.domain not in ("", "ai.onnx"):
            return None
        axis = rules.channel_axis(node, len(layout))
        if node.op_type == "MatMul":
            a, b = node.inputs
            bd = dims(b) or []
            if is_const(b) and len(bd) == 2:
                weight_index, axis = 1, len(layout) - 1
            elif is_const(a) and len(dims(a) or []) == 2:
                weight_index, axis = 0, len(layout) - 2
            else:
                return None
        elif node.op_type == "Gemm":
            if not is_const(node.inputs[1]) or attr(node, "transA", 0):
                return None
            weight_index = 1
        else:  # Conv
            if not is_const(node.inputs[1]) or attr(node, "group", 1) != 1:
                return None
            weight_index = 1
        channel = layout[axis]
        # Head digits next to free channel digits (size-1 head digits too: a single head).
        has_head = any(a.root is not None and not a.broadcast for a in channel.atoms)
        has_free = any(a.root is None and a.extent != 1 for a in channel.atoms)
        if not has_head or not (has_free or any(a.extent != 1 for a in channel.atoms)):
            return None
        return Projection(node, layout, axis, weight_index, path)


_NORMS = ("RMSNormalization", "LayerNormalization", "SimplifiedLayerNormalization")


def _norm_across_heads(node: ir.Node, out_index: int, layout: Layout) -> bool:
    """A fused normalisation whose statistic spans an axis holding head digits next to free
    ones (the full projection width H*D), as opposed to a per-head q/k norm over D."""
    if out_index != 0 or node.op_type not in _NORMS or node.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    axis = attr(node, "axis", -1)
    axis = axis + len(layout) if axis < 0 else axis
    for ax in layout[axis:]:
        roots = [a for a in ax.atoms if a.root is not None and not a.broadcast and a.extent != 1]
        frees = [a for a in ax.atoms if a.root is None and a.extent != 1]
        if roots and frees:
            return True
    return False


_REDUCTIONS = ("ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceSum")


def _feeds_statistic(value: ir.Value, walked: set[int], depth: int = 3) -> bool:
    """Whether ``value`` also feeds, outside the walked nodes and through a few elementwise
    ops, a reduction (the mean square of a decomposed RMSNorm over the projection width)."""
    # The statistic may read the projection output after a cast on the walked path.
    values = [value]
    for _ in range(depth):
        values += [o for v in values for u in v.uses() if id(u.node) in walked and u.node.op_type in ("Cast", "Identity") for o in u.node.outputs]
    frontier = [u.node for v in values for u in v.uses() if id(u.node) not in walked]
    for _ in range(depth):
        nxt = []
        for node in frontier:
            if node.op_type in _REDUCTIONS:
                return True
            if node.op_type in opaxes.ELEMENTWISE:
                nxt.extend(u.node for out in node.outputs for u in out.uses() if id(u.node) not in walked)
        frontier = nxt
    return False


def _head_channels(layout: Layout) -> list[tuple[int, int, int | None]]:
    """Head digits of a boundary's channel axis (the innermost axis holding roots next to
    free digits), outermost first."""
    for ax in reversed(layout):
        roots = [a for a in ax.atoms if a.root is not None and not a.broadcast]
        if roots and any(a.root is None and a.extent != 1 for a in ax.atoms):
            return [(a.root, a.div, a.mod) for a in roots]
    return []


def _bfs_core_matmul(start: ir.Value) -> ir.Node | None:
    """The MatMul(Q, K^T) above the scores: through elementwise ops on non-constant inputs."""
    frontier = [start]
    seen: set[int] = set()
    for _ in range(_MAX_CORE_DEPTH):
        nxt = []
        for v in frontier:
            node = v.producer()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "MatMul" and not is_const(node.inputs[0]) and not is_const(node.inputs[1]):
                return node
            if node.op_type in opaxes.ELEMENTWISE:
                nxt.extend(i for i in node.inputs if i is not None and not is_const(i))
            elif node.op_type in ("Reshape", "Transpose", "Unsqueeze", "Squeeze"):
                # Scores viewed as [B, H, S, T] to add a mask, then back to [B*H, S, T] (BART).
                nxt.append(node.inputs[0])
        frontier = nxt
    return None


def _forward_to_pv(probs: ir.Value) -> tuple[ir.Node, list[ir.Node]] | None:
    """The MatMul(P, V) below the softmax and the elementwise nodes between them."""
    parents: dict[int, tuple[ir.Node, ir.Value]] = {}
    frontier = [probs]
    for _ in range(_MAX_CORE_DEPTH):
        nxt = []
        for v in frontier:
            for use in v.uses():
                node, index = use.node, use.idx
                if node.op_type == "MatMul" and index == 0:
                    chain: list[ir.Node] = []
                    cur = v
                    while cur is not probs:
                        prod = cur.producer()
                        chain.append(prod)
                        cur = parents[id(prod)][1]
                    return node, _between(probs, node.inputs[0])
                if (node.op_type in opaxes.ELEMENTWISE or (node.op_type in _PROBS_VIEWS and index == 0)) and id(node) not in parents:
                    parents[id(node)] = (node, v)
                    nxt.extend(node.outputs)
        frontier = nxt
    return None


def _between(start: ir.Value, end: ir.Value) -> list[ir.Node]:
    """Nodes on every path from ``start`` to ``end`` (both excluded), in topological order."""
    above: dict[int, ir.Node] = {}
    stack = [end]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if v is start or id(v) in seen:
            continue
        seen.add(id(v))
        node = v.producer()
        if node is None:
            continue
        above[id(node)] = node
        stack.extend(i for i in node.inputs if i is not None)
    below: dict[int, ir.Node] = {}
    stack = [start]
    seen.clear()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        for use in v.uses():
            data = use.node.op_type in opaxes.ELEMENTWISE or (use.node.op_type in _PROBS_VIEWS and use.idx == 0)
            if id(use.node) in above and data:  # not the shape arithmetic of a view's target
                below[id(use.node)] = use.node
                stack.extend(use.node.outputs)
    ordered: list[ir.Node] = []
    placed: set[int] = set()
    # Topological order by repeatedly placing nodes whose inputs from the set are placed.
    pending = list(below.values())
    while pending:
        progress = False
        for node in list(pending):
            deps = [i.producer() for i in node.inputs if i is not None and i.producer() is not None]
            if all(id(d) not in below or id(d) in placed for d in deps):
                ordered.append(node)
                placed.add(id(node))
                pending.remove(node)
                progress = True
        if not progress:
            break
    return ordered


def _head_space(walker: _Walker, anchor: ir.Node, matrix_roots: frozenset[int] = frozenset()) -> HeadSpace:
    digits: list[tuple[int, int, int]] | None = None
    boundaries = [(proj.layout[proj.channel].atoms, proj.node) for proj in walker.projections.values() if proj.path == "q"]
    boundaries += [(tuple(Atom(1, r, d, m) for r, d, m in _head_channels(leaf.layout)), leaf.value.producer())
                   for leaf in walker.leaves.values() if leaf.spans_heads and leaf.path == "q"]
    for atoms, at in boundaries:
        found = [(a.root, a.div, a.mod) for a in atoms if a.root is not None and not a.broadcast]
        if any(m is None for _, _, m in found):
            raise BlockError("the head count is not static", at)
        found = [f for f in found if f[2] != 1]
        if digits is None:
            digits = found  # type: ignore[assignment]
        elif digits != found:
            raise BlockError("query projections disagree on the head layout", at)
    if digits is None:
        if walker.root_sizes and all(size == 1 for size in walker.root_sizes[1:]):
            raise BlockError("the attention has a single head: nothing to split", anchor)
        every = [f"{p}: {r} at {describe(n)}" for p, n, r in walker.stops]
        stops = [(n, r) for p, n, r in walker.stops if p == "q"]
        if stops:
            node, reason = stops[0]
            raise BlockError(f"the query path does not reach a projection: {reason}", node, every)
        if walker.stops:  # stopped before the query path could be told apart (on the scores)
            _, node, reason = walker.stops[0]
            raise BlockError(f"the walk from the softmax stopped: {reason}", node, every)
        raise BlockError("the query path does not reach a projection", anchor)
    return HeadSpace(tuple(digits), matrix_roots=matrix_roots)


def _check(block_walker: _Walker, space: HeadSpace) -> None:
    """Every atom must be clearly head or free, and ops must not work along head axes."""
    for inst in block_walker.instances:
        for layout in list(inst.outputs.values()) + [lay for lay in inst.inputs if lay is not None]:
            for ax in layout:
                for a in space.refine_axis(ax).atoms:
                    try:
                        space.classify(a)
                    except ValueError as exc:
                        raise BlockError(str(exc), inst.node) from None
        for layout in inst.outputs.values():
            for axis in inst.along:
                # A head digit of size 1 along the op (one kv head) holds one head: no mixing.
                if axis < len(layout) and any(a.extent != 1 for a in head_atoms((layout[axis],), space)):
                    raise BlockError(f"{inst.node.op_type} works along the head axis", inst.node)
    for leaf in block_walker.leaves.values():
        for ax in leaf.layout:
            for a in space.refine_axis(ax).atoms:
                try:
                    space.classify(a)
                except ValueError as exc:
                    raise BlockError(str(exc), leaf.value.producer()) from None


def _merge_ready(layout: Layout, space: HeadSpace) -> bool:
    """True when every head digit sits in one axis, outside its free (channel) digits."""
    carrying = [i for i, ax in enumerate(layout) if head_atoms((ax,), space)]
    if len(carrying) != 1:
        return False
    ax = space.refine_axis(layout[carrying[0]])
    kinds = [space.classify(a) for a in ax.atoms if a.extent != 1]
    if "free" not in kinds:
        return False
    first_free = kinds.index("free")
    return all(k == "free" for k in kinds[first_free:])


def _walk_down(walker: _Walker, start: ir.Value, layout: Layout, space: HeadSpace) -> ValueKey:
    value = start
    while not _merge_ready(layout, space):
        # Shape readers only size a later Reshape (TorchScript's view targets); once that
        # Reshape is in the block they die with it, and otherwise the split rebuilds the value.
        uses = [u for u in value.uses() if u.node.op_type not in ("Shape", "Size")]
        if len(uses) != 1 or value.is_graph_output():
            break
        node, index = uses[0].node, uses[0].idx
        if index != 0 or node.op_type not in opaxes.FORWARD:
            break
        try:
            nxt = rules.forward(node, layout)
        except Unsupported:
            break
        inputs: list[Layout | None] = [layout] + [None] * (len(node.inputs) - 1)
        walker.add_instance(Instance(node, inputs, {0: nxt}, path="out"))
        value, layout = node.outputs[0], nxt
    return (value, layout)


def _features(walker: _Walker, space: HeadSpace) -> dict[str, str]:
    ops = {inst.node.op_type for inst in walker.instances}
    q_ops = {inst.node.op_type for inst in walker.instances if inst.path == "q"}
    k_ops = [inst for inst in walker.instances if inst.path == "k"]
    rope = "none"
    if "RotaryEmbedding" in q_ops:
        rope = "RotaryEmbedding op"
    elif {"Neg", "Concat"} <= q_ops:
        rope = "rotate-half"
    elif ({"Neg"} <= q_ops or {"Mul", "Sub"} <= q_ops) and "Slice" in q_ops:
        rope = "half-split"  # x1*cos - x2*sin, x1*sin + x2*cos (with Neg or with Sub)
    elif "Mul" in q_ops and ("Gather" in q_ops or "Slice" in q_ops):
        rope = "rotary (other form)"
    masks = [leaf for leaf in walker.leaves.values() if leaf.path == "scores"]
    mask = "none"
    for inst in walker.instances:
        if inst.path != "scores":
            continue
        if inst.node.op_type == "Where":
            mask = "boolean (Where)"
        elif inst.node.op_type == "Add" and mask == "none":
            operands = [leaf for leaf in masks if any(leaf.value is i for i in inst.node.inputs)]
            if operands:
                has_head = any(not a.broadcast for leaf in operands for a in head_atoms(leaf.layout, space))
                const = all(is_const(leaf.value) for leaf in operands)
                mask = ("per-head " if has_head else "") + ("constant" if const else "additive input")
    past = "none"
    for inst in k_ops:
        if inst.node.op_type == "Concat" and any(
            inp is not None and inp.is_graph_input() for inp in inst.node.inputs
        ):
            past = "concat"
    if "Attention" in ops:
        rope = rope if rope != "none" else "none"
    lora = _adds_projections(walker)
    projection_ops = sorted({p.node.op_type for p in walker.projections.values() if p.path == "q"})
    return {
        "rope": rope,
        "mask": mask,
        "past_kv": past,
        "lora": "yes" if lora else "no",
        "projection": "/".join(projection_ops) or "none",
        "qk_norm": "yes" if any(i.node.op_type in ("ReduceMean", "RMSNormalization", "SimplifiedLayerNormalization", "LayerNormalization") for i in walker.instances if i.path in ("q", "k"))
        or any(leaf.spans_heads for leaf in walker.leaves.values()) else "no",
    }


def _adds_projections(walker: _Walker) -> bool:
    """LoRA on the query path: an Add joining the outputs of different query projections
    (base + B(A(x))). Projections joined by a Concat (joint attention's image and text
    streams) or one projection feeding both RoPE terms are not LoRA."""
    memo: dict[int, frozenset[int]] = {}

    def sources(key) -> frozenset[int]:
        proj = walker.projections.get(key)
        if proj is not None:
            return frozenset({id(proj.node)})  # one projection node reached with two layouts (RoPE pairs) is one
        found = walker.produced.get(key)
        if found is None:
            return frozenset()
        inst = found[0]
        if id(inst) not in memo:
            memo[id(inst)] = frozenset()  # cycles cannot occur in a DAG; guards re-entry
            acc: set[int] = set()
            for v, lay in zip(inst.node.inputs, inst.inputs):
                if v is not None and lay is not None:
                    acc |= sources((v, lay))
            memo[id(inst)] = frozenset(acc)
        return memo[id(inst)]

    for inst in walker.instances:
        if inst.path != "q" or inst.node.op_type not in ("Add", "Sum"):
            continue
        parts = [sources((v, lay)) for v, lay in zip(inst.node.inputs, inst.inputs) if v is not None and lay is not None]
        parts = [p for p in parts if p]
        if len(parts) >= 2 and any(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:]):
            return True
    return False


def _grouped(space: HeadSpace, group: int, anchor: ir.Node) -> HeadSpace:
    """The block's split space for ``group`` heads per block (AR-M), or a clear refusal."""
    if group == 1:
        return space
    heads = space.num_heads
    if heads % group:
        raise BlockError(f"--build-ar {group} does not divide the {heads} heads of this block (AR is the heads per block; to change tokens per step use --ar-tokens)", anchor)
    try:
        return space.grouped(group)
    except ValueError as exc:
        raise BlockError(str(exc), anchor) from None


def _kv_heads(walker: _Walker, space: HeadSpace) -> int:
    keys = set()
    boundaries = [(p.layout, p.path) for p in walker.projections.values()] + [(leaf.layout, leaf.path) for leaf in walker.leaves.values()]
    for layout, path in boundaries:
        if path != "k":
            continue
        atoms = [a for a in head_atoms(layout, space) if not a.broadcast]
        if atoms:
            for h in range(space.num_heads):
                keys.add(tuple(space.index(a, h) for a in atoms))
    return len(keys) if keys else 1


def _finish(name: str, anchor: ir.Node, walker: _Walker, heads: HeadSpace, space: HeadSpace, outputs: list[ValueKey],
            head_dim: int | None = None) -> Block:
    """``heads``: one query head per piece (for reporting); ``space``: how the block is split."""
    if heads.num_heads < 2:
        raise BlockError("the attention has a single head: nothing to split", anchor)
    if space.num_heads < 2:
        raise BlockError(f"--build-ar {space.group} keeps the block whole", anchor)
    num_kv = _kv_heads(walker, heads)
    if space.group > 1 and num_kv < heads.num_heads:
        group_size = heads.num_heads // num_kv
        if space.group % group_size and group_size % space.group:
            raise BlockError(f"--build-ar {space.group}: a block of {space.group} query heads must cover whole kv groups of {group_size} or share one", anchor)
    try:
        _check(walker, space)
    except BlockError as exc:
        if space.group > 1:
            raise BlockError(f"--build-ar {space.group}: the groups of query heads do not map onto whole kv heads here ({exc.reason})", exc.at) from None
        raise
    for proj in walker.projections.values():
        if proj.path == "q" and head_dim is None:
            per_head, _ = per_head_layout(proj.layout, heads)
            size = per_head[proj.channel].size
            head_dim = size if isinstance(size, int) else None
    for leaf in walker.leaves.values():
        if leaf.spans_heads and leaf.path == "q" and head_dim is None:
            size = per_head_layout(leaf.layout, heads)[0][-1].size
            head_dim = size if isinstance(size, int) else None
    # Keep only the nodes that carry heads; the others stay shared and feed the block.
    kept = [inst for inst in walker.instances if any(head_atoms(lay, space) for lay in inst.outputs.values())]
    kept_ids = {id(i) for i in kept}
    produced = {k: v for k, v in walker.produced.items() if id(v[0]) in kept_ids}
    leaves = dict(walker.leaves)
    for key, (inst, _idx) in walker.produced.items():
        if id(inst) not in kept_ids:
            leaves[key] = Leaf(key[0], key[1], inst.path)
    outs = []
    for key in outputs:
        outs.append(key)
    return Block(
        name=name,
        anchor=anchor,
        space=space,
        instances=kept,
        projections=dict(walker.projections),
        leaves=leaves,
        produced=produced,
        merges=outs,
        num_heads=heads.num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        features=_features(walker, heads),
    )


def analyze_softmax(name: str, softmax: ir.Node, group: int = 1) -> Block:
    scores, probs = softmax.inputs[0], softmax.outputs[0]
    sd = dims(scores)
    if sd is None:
        raise BlockError("the rank of the attention scores is unknown", softmax)
    if len(sd) < 3:
        raise BlockError("scores have no batch or head axis", softmax)
    qk = _bfs_core_matmul(scores)
    if qk is None:
        raise BlockError("no MatMul(Q, K^T) above the softmax", softmax)
    found = _forward_to_pv(probs)
    if found is None:
        raise BlockError("the softmax output does not reach MatMul(P, V)", softmax)
    pv, between = found
    walker = _Walker()
    walker.root_sizes = list(sd[:-2])
    # Batch axes are candidate roots, and so is the query axis: an exporter may fold the query
    # heads of a kv group into it (q [B, H, S, D] -> [B, KV, n*S, D] for GQA). Only the key
    # axis, contracted with V, never carries heads.
    layout: Layout = tuple(_root_axis(sd[i], i) for i in range(len(sd) - 1)) + (Axis((free(sd[-1]),)),)
    walker.path_override[qk] = ["q", "k"]
    # The core: softmax, the guards between it and MatMul(P, V), and MatMul(P, V) itself.
    axis = attr(softmax, "axis", -1)
    if axis not in (-1, len(sd) - 1):
        raise BlockError("softmax is not over the key axis", softmax)
    walker.add_instance(Instance(softmax, [layout], {0: layout}, along=[len(sd) - 1], path="scores"))
    # Carry the probabilities' layout forward to MatMul(P, V): guards keep it, views regroup it.
    layouts: dict[int, Layout] = {id(probs): layout}
    between_insts = []
    for node in between:
        data = node.inputs[0]
        in_layout = layouts.get(id(data))
        if in_layout is None:
            raise BlockError("an op between softmax and MatMul(P, V) reads the probabilities twice", node)
        if node.op_type in _PROBS_VIEWS:
            try:
                out_layout = rules.forward(node, in_layout)
            except Unsupported as exc:
                raise BlockError(f"the probabilities cannot be followed to MatMul(P, V): {exc}", node) from None
            inputs: list[Layout | None] = [in_layout] + [None] * (len(node.inputs) - 1)
        else:
            if dims(node.outputs[0]) != [ax.full_size for ax in in_layout] and dims(node.outputs[0]) != dims(data):
                raise BlockError("an op between softmax and MatMul(P, V) changes the shape", node)
            out_layout = in_layout
            inputs = list(rules.backward(node, 0, out_layout).inputs)
        layouts[id(node.outputs[0])] = out_layout
        inst = Instance(node, inputs, {0: out_layout}, path="probs")
        walker.add_instance(inst)
        between_insts.append(inst)
    p_layout = layouts.get(id(pv.inputs[0]))
    if p_layout is None:
        raise BlockError("the softmax output does not reach MatMul(P, V)", softmax)
    o_dims = dims(pv.outputs[0])
    if o_dims is None or len(o_dims) != len(p_layout):
        raise BlockError("MatMul(P, V) output rank differs from the probabilities", pv)
    o_layout: Layout = p_layout[:-1] + (Axis((free(o_dims[-1]),)),)
    res = rules.backward(pv, 0, o_layout)
    res.inputs[0] = p_layout
    walker.add_instance(Instance(pv, res.inputs, {0: o_layout}, path="core"))
    for inst in between_insts:
        for inp, lay in zip(inst.node.inputs, inst.inputs):
            if inp is not None and lay is not None and (inp, lay) not in walker.produced and inp is not probs:
                walker.leaf(inp, lay, "probs")
    walker.up(pv.inputs[1], res.inputs[1], "v")
    walker.up(scores, layout, "scores")
    walker.keep_whole_projections()
    heads = _head_space(walker, softmax, frozenset({len(sd) - 2}))
    space = _grouped(heads, group, softmax)
    merge = _walk_down(walker, pv.outputs[0], o_layout, space)
    return _finish(name, softmax, walker, heads, space, [merge])


def analyze_attention_op(name: str, node: ir.Node, group: int = 1) -> Block:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    qd, kd = dims(q), dims(k)
    if qd is None or kd is None:
        raise BlockError("the rank of the Attention inputs is unknown", node)
    if len(node.outputs) > 3 and node.outputs[3] is not None and node.outputs[3].uses():
        raise BlockError("the Attention op's qk_matmul_output is used", node)
    if len(qd) == 4:
        heads, kv_heads = qd[1], kd[1]
    else:
        heads, kv_heads = attr(node, "q_num_heads"), attr(node, "kv_num_heads")
    if not isinstance(heads, int) or not isinstance(kv_heads, int) or heads % kv_heads:
        raise BlockError("the Attention op's head counts are not static", node)
    rep = heads // kv_heads
    batch = _root_axis(qd[0], 0)
    h_atom = Atom(heads, 1, 1, heads)
    kv_atom = Atom(kv_heads, 1, rep, kv_heads)
    vd = dims(v)
    y_dims = dims(node.outputs[0])
    walker = _Walker()

    def four_d(atom: Atom, d: list, seq_axis: int) -> Layout:
        return (batch, Axis((atom,)), Axis((free(d[seq_axis]),)), Axis((free(d[-1]),)))

    if len(qd) == 4:
        lq, lk, lv = four_d(h_atom, qd, 2), four_d(kv_atom, kd, 2), four_d(kv_atom, vd, 2)
        ly = four_d(h_atom, y_dims, 2)
    else:
        d_q = qd[2] // heads if isinstance(qd[2], int) else None
        d_k = kd[2] // kv_heads if isinstance(kd[2], int) else None
        d_v = vd[2] // kv_heads if isinstance(vd[2], int) else None
        if None in (d_q, d_k, d_v):
            raise BlockError("the Attention op's hidden sizes are not static", node)
        lq = (batch, Axis((free(qd[1]),)), Axis((h_atom, free(d_q))))
        lk = (batch, Axis((free(kd[1]),)), Axis((kv_atom, free(d_k))))
        lv = (batch, Axis((free(vd[1]),)), Axis((kv_atom, free(d_v))))
        ly = (batch, Axis((free(y_dims[1]),)), Axis((h_atom, free(d_v))))
    inputs: list[Layout | None] = [lq, lk, lv]
    keep = set()
    scores_like = (batch, Axis((h_atom,)), Axis((free(None),)), Axis((free(None),)))
    for idx in range(3, len(node.inputs)):
        inp = node.inputs[idx]
        if inp is None:
            inputs.append(None)
            continue
        # Per head, the mask and the caches lose their head axis (the emitter decomposes
        # the op into 3-D MatMul/Softmax per head, mha2sha.split.attention_op).
        if idx == 3:  # attn_mask, broadcast to [B, H, S, T]
            inputs.append(rules.align_operand(scores_like, [None] * 4, inp))
        elif idx in (4, 5):  # past key / value [B, KV, P, D]
            pd = dims(inp)
            inputs.append((batch, Axis((kv_atom,)), Axis((free(pd[2]),)), Axis((free(pd[3]),))))
        else:
            inputs.append(None)
    outputs: dict[int, Layout] = {0: ly}
    for idx in (1, 2):
        if len(node.outputs) > idx and node.outputs[idx] is not None:
            od = dims(node.outputs[idx])
            outputs[idx] = (batch, Axis((kv_atom,)), Axis((free(od[2]),)), Axis((free(od[3]),)))
    inst = Instance(node, inputs, outputs, path="core", keep_rank=frozenset(keep))
    walker.add_instance(inst)
    for idx, (inp, lay) in enumerate(zip(node.inputs, inputs)):
        if inp is None or lay is None:
            continue
        path = {0: "q", 1: "k", 2: "v"}.get(idx, "scores")
        if idx < 3 and not is_const(inp) and inp.producer() is not None:
            walker.up(inp, lay, path)
        else:
            walker.leaf(inp, lay, path)
    walker.keep_whole_projections()
    head_space = HeadSpace(((1, 1, heads),))
    space = _grouped(head_space, group, node)
    if group > 1:
        raise BlockError("--build-ar > 1 is not supported for the opset-23 Attention op yet", node)
    merge = _walk_down(walker, node.outputs[0], ly, space)
    d = qd[-1] if len(qd) == 4 else d_q
    return _finish(name, node, walker, head_space, space, [merge], head_dim=d if isinstance(d, int) else None)


def _two_dimensional(softmax: ir.Node) -> bool:
    """A softmax over a 2-D tensor (an MoE router's [tokens, experts], a classifier) has no
    batch or head axis: it is not multi-head attention, and nothing in it could be split."""
    sd = dims(softmax.inputs[0])
    return sd is not None and len(sd) < 3


def find_anchors(graph: ir.Graph) -> list[ir.Node]:
    """Softmax and Attention nodes, in the graph's (topological) order."""
    return [
        n
        for n in graph
        if (n.op_type == "Softmax" and n.domain in ("", "ai.onnx") and not _two_dimensional(n))
        or (n.op_type == "Attention" and n.domain in ("", "ai.onnx"))
    ]


def analyze(name: str, anchor: ir.Node, group: int = 1) -> Block:
    """Analyse one attention core; ``group`` is the number of heads per block after the
    split (1 = single-head attention, AR-M otherwise)."""
    if anchor.op_type == "Attention":
        return analyze_attention_op(name, anchor, group)
    return analyze_softmax(name, anchor, group)


__all__ = ["Block", "BlockError", "analyze", "find_anchors", "Instance", "Projection", "Leaf", "const_array"]
