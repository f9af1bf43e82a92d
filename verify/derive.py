"""The correspondence of two models derived from their structure, for a pair whose maker
wrote no correspondence file (another tool's SHA model, a model written by hand).

1. Shared tensors. Two tensors stand for each other when both models compute them the same
   way: graph inputs and outputs of the same name and shape are the seeds; from there, a
   node of one model matches a node of the other when op, attributes and inputs agree
   (constants compared by value, so a weight matches its copy, not a head's slice of it).
   Matching runs forward from the inputs (embeddings, norms, masks, RoPE tables) and
   backward from the outputs (residual adds, the output projection when the SHA model keeps
   it whole) until nothing changes.
2. Blocks. The nodes left unmatched form connected regions; a region of the original
   around a Softmax / Attention op is an attention block, bounded by shared tensors. The
   converted model's region(s) bounded by the partners of those tensors stand for it.
3. Caches. A graph input/output of the original that only the block reads/writes (a KV
   cache) is matched with the converted model's per-head tensors by shape (the head axis
   removed, kept as 1, or moved first) and by role (a key reaches the scores, a value only
   the weighted sum); which head's slice each one is follows from the heads that read it,
   in the order the converted block concatenates its heads.

Whatever cannot be matched is returned with the reason; those blocks are checked end to
end only. Names are never used to understand the graphs, only to name what was found.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from verify.correspondence import BlockCorrespondence, CacheSplit, Correspondence
from verify.graphs import const_array, is_const

ANCHORS = {("", "Softmax"), ("", "Attention"), ("com.microsoft", "Attention"), ("com.microsoft", "MultiHeadAttention"),
           ("com.microsoft", "GroupQueryAttention")}
_PASS_THROUGH = {"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Transpose"}


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _is_anchor(node: ir.Node) -> bool:
    return (_domain(node), node.op_type) in ANCHORS


def _attr_key(attr) -> object:
    if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return object()  # subgraphs never compare equal: such nodes stay unmatched
    if attr.type == ir.AttributeType.TENSOR:
        return ("tensor", attr.value.numpy().tobytes())
    value = attr.value
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _signature(node: ir.Node) -> tuple:
    return (_domain(node), node.op_type, len(node.inputs), len(node.outputs),
            tuple(sorted((k, _attr_key(a)) for k, a in node.attributes.items())))


def _dims(v: ir.Value) -> tuple | None:
    if v.shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(getattr(d, "value", d)) for d in v.shape)


class _Constants:
    """Constant values compared by content (read once each, cached by value identity)."""

    def __init__(self):
        self._cache: dict[int, tuple] = {}

    def key(self, v: ir.Value) -> tuple | None:
        k = self._cache.get(id(v))
        if k is None:
            array = const_array(v)
            if array is None:
                return None
            array = np.ascontiguousarray(array)
            k = (str(array.dtype), array.shape, hash(array.tobytes()))
            self._cache[id(v)] = k
        return k

    def equal(self, a: ir.Value, b: ir.Value) -> bool:
        ka, kb = self.key(a), self.key(b)
        if ka is None or kb is None or ka != kb:
            return False
        return bool(np.array_equal(const_array(a), const_array(b)))


def _static_values(graph: ir.Graph) -> set[int]:
    """Tensors computed from shapes and constants only (run-time shape arithmetic, masks built
    from a sequence length). A converter may fold them into constants, so they are matched
    as constants are, never by the nodes that compute them."""
    static: set[int] = set()
    for node in graph:
        sources = [i for i in node.inputs if i is not None]
        if node.op_type in ("Shape", "Size") or (sources and all(is_const(i) or id(i) in static for i in sources)):
            static.update(id(o) for o in node.outputs)
    return static


def _all(array: np.ndarray | None, value: float) -> bool:
    return array is not None and array.size > 0 and bool(np.all(array == value))


def _noop_source(node: ir.Node) -> ir.Value | None:
    """The input a no-op node's output equals (a converter may drop the node): Identity, a
    Cast to the same type, a multiplication by ones, an addition of zeros, an identity
    Transpose, a Reshape to the same static shape. None for any other node."""
    if _domain(node) != "" or len(node.outputs) != 1 or not node.inputs or node.inputs[0] is None:
        return None
    x, y, op = node.inputs[0], node.outputs[0], node.op_type
    if op in ("Identity", "Dropout"):
        return x
    if op == "Cast":
        return x if x.dtype is not None and "to" in node.attributes and int(node.attributes["to"].value) == int(x.dtype) else None
    if op in ("Mul", "Div", "Add", "Sub") and len(node.inputs) == 2 and node.inputs[1] is not None:
        neutral = 1.0 if op in ("Mul", "Div") else 0.0
        order = [(0, 1), (1, 0)] if op in ("Mul", "Add") else [(0, 1)]
        for data, other in order:
            d = node.inputs[data]
            if _all(const_array(node.inputs[other]), neutral) and d.shape is not None and y.shape is not None \
                    and _dims(d) == _dims(y) and all(isinstance(k, int) for k in _dims(d)):
                return d
        return None
    if op == "Transpose":
        perm = node.attributes.get("perm")
        return x if perm is not None and list(perm.value) == list(range(len(perm.value))) else None
    if op == "Reshape" and x.shape is not None and y.shape is not None and _dims(x) == _dims(y) and all(isinstance(k, int) for k in _dims(x)):
        return x
    return None


def _is_noop(node: ir.Node) -> bool:
    return _noop_source(node) is not None


def _canonical(graph: ir.Graph) -> dict[int, ir.Value]:
    """value -> the value it equals through no-op nodes (only for values that differ)."""
    canon: dict[int, ir.Value] = {}
    for node in graph:
        src = _noop_source(node)
        if src is not None:
            canon[id(node.outputs[0])] = canon.get(id(src), src)
    return canon


def _readers(graph: ir.Graph, canon: dict[int, ir.Value]) -> dict[int, list[ir.Node]]:
    out: dict[int, list[ir.Node]] = {}
    for node in graph:
        for i in node.inputs:
            if i is not None:
                out.setdefault(id(canon.get(id(i), i)), []).append(node)
    return out


class _Pairing:
    def __init__(self, a: ir.Graph, b: ir.Graph):
        self.a, self.b = a, b
        self.static_a, self.static_b = _static_values(a), _static_values(b)
        self.canon_a, self.canon_b = _canonical(a), _canonical(b)
        self.readers_a, self.readers_b = _readers(a, self.canon_a), _readers(b, self.canon_b)
        self.ab: dict[int, ir.Value] = {}  # original's tensor -> the converted model's standing for it
        self.ba: dict[int, ir.Value] = {}
        self.nodes_a: set[int] = set()  # nodes computing the same thing in both
        self.nodes_b: set[int] = set()
        self.consts = _Constants()

    def ca(self, v: ir.Value) -> ir.Value:
        return self.canon_a.get(id(v), v)

    def cb(self, v: ir.Value) -> ir.Value:
        return self.canon_b.get(id(v), v)

    def partner_a(self, v: ir.Value) -> ir.Value | None:
        """The converted model's tensor standing for the original's ``v``."""
        return self.ab.get(id(self.ca(v)))

    def partner_b(self, v: ir.Value) -> ir.Value | None:
        return self.ba.get(id(self.cb(v)))

    def b_values(self):
        yield from self.b.inputs
        for n in self.b:
            yield from n.outputs

    def pair(self, va: ir.Value, vb: ir.Value) -> bool:
        va, vb = self.ca(va), self.cb(vb)
        if self.ab.get(id(va)) is vb:
            return False
        if id(va) in self.ab or id(vb) in self.ba:
            return False  # already paired otherwise: keep the first answer
        self.ab[id(va)], self.ba[id(vb)] = vb, va
        return True

    def _inputs_agree(self, na: ir.Node, nb: ir.Node, *, need_pairs: bool) -> list[tuple[ir.Value, ir.Value]] | None:
        new = []
        for ia, ib in zip(na.inputs, nb.inputs):
            if ia is None or ib is None:
                if ia is not ib:
                    return None
                continue
            sa, sb = id(ia) in self.static_a, id(ib) in self.static_b
            ca, cb = is_const(ia), is_const(ib)
            if sa or sb:
                if not ((sa or ca) and (sb or cb)):
                    return None
                continue  # shape arithmetic on either side: taken to agree (the checks judge the values)
            if ca or cb:
                if not (ca and cb and self.consts.equal(ia, ib)):
                    return None
                continue
            ia, ib = self.ca(ia), self.cb(ib)
            partner = self.ab.get(id(ia))
            if partner is ib:
                continue
            if need_pairs or partner is not None or id(ib) in self.ba:
                return None
            new.append((ia, ib))
        return new

    def _match_nodes(self, na: ir.Node, nb: ir.Node) -> bool:
        self.nodes_a.add(id(na))
        self.nodes_b.add(id(nb))
        changed = False
        for oa, ob in zip(na.outputs, nb.outputs):
            changed |= self.pair(oa, ob)
        return changed

    def seed(self, skip: set[int] = frozenset()) -> None:
        """Graph inputs and outputs of the same name, shape and type (except ``skip``)."""
        for mine, theirs in ((self.a.inputs, self.b.inputs), (self.a.outputs, self.b.outputs)):
            by_name = {v.name: v for v in theirs}
            for va in mine:
                vb = by_name.get(va.name)
                if vb is not None and id(va) not in skip and _dims(va) == _dims(vb) and va.dtype == vb.dtype:
                    self.pair(va, vb)

    def forward(self) -> bool:
        changed = False
        for nb in self.b:
            if id(nb) in self.nodes_b or nb.op_type == "Constant" or _is_noop(nb):
                continue
            sources = [self.cb(i) for i in nb.inputs if i is not None and not is_const(i) and id(i) not in self.static_b]
            if not sources or not all(id(i) in self.ba for i in sources):
                continue
            sig = _signature(nb)
            partner = self.ba[id(sources[0])]
            for na in self.readers_a.get(id(partner), []):
                if id(na) in self.nodes_a or _signature(na) != sig or _is_noop(na):
                    continue
                if self._inputs_agree(na, nb, need_pairs=True) is not None:
                    changed |= self._match_nodes(na, nb)
                    break
        return changed

    def backward(self) -> bool:
        changed = False
        for na in reversed(list(self.a)):
            if id(na) in self.nodes_a or na.op_type == "Constant" or _is_noop(na):
                continue
            paired_out = next(((k, o) for k, o in enumerate(na.outputs) if id(o) in self.ab), None)
            if paired_out is None:
                continue
            k, oa = paired_out
            ob = self.ab[id(oa)]
            nb = ob.producer()
            if nb is None or id(nb) in self.nodes_b or _signature(nb) != _signature(na) or nb.outputs[k] is not ob:
                continue
            new = self._inputs_agree(na, nb, need_pairs=False)
            if new is None:
                continue
            for ia, ib in new:
                self.pair(ia, ib)
            changed = True
            self._match_nodes(na, nb)
        return changed

    def _propagate(self, skip: set[int]) -> None:
        self.ab, self.ba, self.nodes_a, self.nodes_b = {}, {}, set(), set()
        self.seed(skip)
        while self.forward() | self.backward():
            pass
        # No-op nodes between shared tensors are shared too.
        for graph, nodes, partner in ((self.a, self.nodes_a, self.partner_a), (self.b, self.nodes_b, self.partner_b)):
            for n in graph:
                if _is_noop(n) and partner(n.outputs[0]) is not None:
                    nodes.add(id(n))

    def run(self) -> None:
        self._propagate(set())
        # A graph input/output paired by name and shape only, that no matched node reads or
        # writes, may still be laid out differently (a head-major [KV, B, P, D] cache has the
        # shape of [B, KV, P, D] when B == KV). Such pairs are undone and the matching run
        # again without them; blocks try them as cache splits first and fall back to the
        # pair (``fallback``) when no split fits.
        self.fallback: dict[int, ir.Value] = {}
        b_outputs = {v.name: v for v in self.b.outputs}
        b_inputs = {v.name: v for v in self.b.inputs}
        for va in self.a.inputs:
            vb = self.partner_a(va)
            if vb is not None and not any(id(n) in self.nodes_b for n in self.readers_b.get(id(vb), [])):
                self.fallback[id(va)] = b_inputs.get(va.name, vb)
        for va in self.a.outputs:
            vb = self.partner_a(va)
            if vb is not None and (vb.producer() is None or id(vb.producer()) not in self.nodes_b):
                self.fallback[id(va)] = b_outputs.get(va.name, vb)
        if self.fallback:
            self._propagate(set(self.fallback))
        self.tentative: set[int] = set()


class _Region:
    """The unmatched nodes around one attention core (or several whose outputs merge, as the
    heads of a SHA block do): what lies downstream of the cores up to the shared tensors, and
    everything unmatched that this reads. A node both layers read (an Unsqueeze of the RoPE
    table the SHA model does not need) belongs to both regions."""

    def __init__(self, nodes: list[ir.Node], down: set[int], anchors: list[ir.Node]):
        self.nodes, self.down, self.anchors = nodes, down, anchors
        self.ids = {id(n) for n in nodes}


def _regions(graph: ir.Graph, matched: set[int], static: set[int]) -> list[_Region]:
    def free(n: ir.Node) -> bool:
        return id(n) not in matched and n.op_type != "Constant" and not any(id(o) in static for o in n.outputs)

    anchors = [n for n in graph if _is_anchor(n) and free(n)]
    downs = []
    for anchor in anchors:
        down, stack = {id(anchor)}, list(anchor.outputs)
        while stack:
            v = stack.pop()
            for use in v.uses():
                if free(use.node) and id(use.node) not in down:
                    down.add(id(use.node))
                    stack.extend(use.node.outputs)
        downs.append(down)
    parent = list(range(len(anchors)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[int, int] = {}
    for k, down in enumerate(downs):
        for nid in down:
            if nid in owner:
                parent[find(k)] = find(owner[nid])
            else:
                owner[nid] = k
    groups: dict[int, list[int]] = {}
    for k in range(len(anchors)):
        groups.setdefault(find(k), []).append(k)
    by_id = {id(n): n for n in graph}
    # Tails: nodes that only lead to graph outputs (a present cache written per head through
    # Identity / Unsqueeze -> Concat); they belong to the region whose tensors they read.
    graph_outputs = {id(v) for v in graph.outputs}
    tail: set[int] = set()
    for n in reversed(list(graph)):
        if free(n) and n.outputs and all((id(o) in graph_outputs or any(True for _ in o.uses()))
                                         and all(id(u.node) in tail for u in o.uses()) for o in n.outputs):
            tail.add(id(n))
    regions = []
    for members in groups.values():
        down = set().union(*(downs[k] for k in members))
        ids, stack = set(down), [by_id[nid] for nid in down]
        while stack:
            node = stack.pop()
            for i in node.inputs:
                p = i.producer() if i is not None else None
                if p is not None and id(p) not in ids and free(p):
                    ids.add(id(p))
                    stack.append(p)
        for n in graph:  # topological order: a tail reading a tail is reached
            if id(n) in tail and id(n) not in ids and any(i is not None and i.producer() is not None and id(i.producer()) in ids
                                                          for i in n.inputs):
                ids.add(id(n))
        regions.append(_Region([n for n in graph if id(n) in ids], down, [anchors[k] for k in members]))
    return regions


def _boundary(region: _Region, graph: ir.Graph, static: set[int]) -> tuple[list[ir.Value], list[ir.Value]]:
    """What the region reads, and what it writes that is read outside it or is a graph
    output (tensors only the region's upstream part computes are recomputed by every region
    that reads them, and are not outputs)."""
    ids = region.ids
    outputs_of_graph = {id(v) for v in graph.outputs}
    inputs, outputs = [], []
    for n in region.nodes:
        for i in n.inputs:
            if i is None or is_const(i) or id(i) in static:
                continue
            p = i.producer()
            if (p is None or id(p) not in ids) and all(i is not x for x in inputs):
                inputs.append(i)
        for o in n.outputs:
            if id(o) in outputs_of_graph or (id(n) in region.down and any(id(u.node) not in ids for u in o.uses())):
                outputs.append(o)
    return inputs, outputs


def _reach(start: ir.Value, ids: set[int]) -> set[int]:
    """Nodes of the region reached forward from ``start``."""
    seen: set[int] = set()
    stack = [start]
    while stack:
        v = stack.pop()
        for use in v.uses():
            n = use.node
            if id(n) in ids and id(n) not in seen:
                seen.add(id(n))
                stack.extend(n.outputs)
    return seen


class _Heads:
    """Which anchor (head) of a region each node belongs to, and the heads' order."""

    def __init__(self, comp: list[ir.Node]):
        self.ids = {id(n) for n in comp}
        self.anchors = [n for n in comp if _is_anchor(n)]
        self.below: dict[int, set[int]] = {}  # node -> anchors (by index) it is downstream of
        for k, anchor in enumerate(self.anchors):
            for o in anchor.outputs:
                for nid in _reach(o, self.ids):
                    self.below.setdefault(nid, set()).add(k)
            self.below.setdefault(id(anchor), set()).add(k)
        self.order = self._order(comp)

    def _order(self, comp) -> dict[int, int] | None:
        """anchor index -> head position: the input of the Concat that merges all heads."""
        n_heads = len(self.anchors)
        if n_heads == 1:
            return {0: 0}
        for node in comp:
            if node.op_type != "Concat" or len(node.inputs) != n_heads:
                continue
            order = {}
            for pos, i in enumerate(node.inputs):
                p = i.producer() if i is not None else None
                heads = self.below.get(id(p), set()) if p is not None else set()
                if len(heads) != 1:
                    break
                order[next(iter(heads))] = pos
            if len(order) == n_heads:
                return order
        return None

    def heads_of(self, value: ir.Value) -> set[int]:
        """Head positions whose computation reads ``value``."""
        reached = _reach(value, self.ids)
        out = set()
        for k, anchor in enumerate(self.anchors):
            if id(anchor) in reached:
                out.add(k)
        for nid in reached:
            below = self.below.get(nid, set())
            if len(below) == 1:
                out |= below
        if self.order is None:
            return set()
        return {self.order[k] for k in out}

    def is_key(self, value: ir.Value) -> bool:
        reached = _reach(value, self.ids)
        return any(id(a) in reached for a in self.anchors)


def _upstream_core(v: ir.Value) -> ir.Value:
    """Through layout-only producers (Identity, Unsqueeze, ...) to the tensor they copy."""
    while True:
        p = v.producer()
        if p is None or p.op_type not in _PASS_THROUGH or not p.inputs or p.inputs[0] is None:
            return v
        v = p.inputs[0]


class BlockMismatch(Exception):
    pass


def _cache_role(value: ir.Value, heads: _Heads, kind: str) -> str:
    """"key" when the cache feeds the attention scores, else "value". An output is judged by
    the tensor it copies, or for a stack of heads (Concat) by the tensors stacked."""
    if kind == "input":
        return "key" if heads.is_key(value) else "value"
    probe = _upstream_core(value)
    probes = [probe]
    producer = probe.producer()
    if producer is not None and producer.op_type == "Concat":
        probes += [_upstream_core(i) for i in producer.inputs if i is not None]
    return "key" if any(heads.is_key(v) for v in probes) else "value"


def _split_for(a: ir.Value, kind: str, a_heads: _Heads, candidates: list[ir.Value], b_heads: _Heads, used: set[int]) -> CacheSplit:
    sa = _dims(a)
    if sa is None:
        raise BlockMismatch(f"the cache {a.name!r} has no known shape")
    role = _cache_role(a, a_heads, kind)
    free = [c for c in candidates if id(c) not in used and _dims(c) is not None and _cache_role(c, b_heads, kind) == role]
    n_heads = len(b_heads.anchors)
    for axis in sorted(range(len(sa)), key=lambda ax: (ax != 1, ax)):  # the head axis is axis 1 in most layouts
        n = sa[axis]
        if not isinstance(n, int) or n < 1 or n_heads % n:
            continue
        without = sa[:axis] + sa[axis + 1:]
        keep = sa[:axis] + (1,) + sa[axis + 1:]
        pieces = [c for c in free if _dims(c) == without]
        layout, keepdims = "pieces", False
        if len(pieces) != n:
            pieces, keepdims = [c for c in free if _dims(c) == keep], True
        if len(pieces) != n:
            stacked = [c for c in free if _dims(c) == (n,) + without]
            if len(stacked) == 1:
                return _head_major(a, kind, axis, n, stacked[0], b_heads, used)
            continue
        indices = [_kv_index(c, kind, b_heads, n) for c in pieces]
        if sorted(indices) != list(range(n)):
            raise BlockMismatch(f"the per-head tensors for {a.name!r} do not map one to one onto its {n} heads")
        used.update(id(c) for c in pieces)
        return CacheSplit(a.name, kind, axis, [c.name for c in pieces], indices, layout=layout, keepdims=keepdims)
    raise BlockMismatch(f"no tensor (or set of per-head tensors) of the converted model has the shape of {a.name!r} {list(sa)} "
                        "split by head")


def _kv_index(piece: ir.Value, kind: str, heads: _Heads, n: int) -> int:
    probe = _upstream_core(piece) if kind == "output" else piece
    read_by = heads.heads_of(probe)
    if not read_by:
        raise BlockMismatch(f"cannot tell which head reads {piece.name!r}")
    group = len(heads.anchors) // n
    return Counter(h // group for h in read_by).most_common(1)[0][0]


def _head_major(a: ir.Value, kind: str, axis: int, n: int, stacked: ir.Value, heads: _Heads, used: set[int]) -> CacheSplit:
    """One tensor with the heads first: each slab read (Gather/Split on axis 0) or written
    (Concat on axis 0) by the heads of one kv head."""
    slabs: dict[int, ir.Value] = {}
    if kind == "input":
        for use in stacked.uses():
            node = use.node
            if node.op_type == "Gather" and (node.attributes.get("axis").value if "axis" in node.attributes else 0) == 0:
                index = const_array(node.inputs[1])
                if index is not None and index.size == 1:
                    slabs[int(index.reshape(()))] = node.outputs[0]
            elif node.op_type == "Split" and (node.attributes.get("axis").value if "axis" in node.attributes else 0) == 0:
                slabs.update(dict(enumerate(node.outputs)))
    else:
        producer = stacked.producer()
        if producer is not None and producer.op_type == "Concat" and producer.attributes.get("axis").value == 0:
            slabs = {k: i for k, i in enumerate(producer.inputs)}
    if sorted(slabs) != list(range(n)):
        raise BlockMismatch(f"cannot tell which head each slab of {stacked.name!r} holds")
    indices = [_kv_index(slabs[k], kind, heads, n) for k in range(n)]
    if sorted(indices) != list(range(n)):
        raise BlockMismatch(f"the slabs of {stacked.name!r} do not map one to one onto the heads of {a.name!r}")
    used.add(id(stacked))
    return CacheSplit(a.name, kind, axis, [stacked.name], indices, layout="head_major")


def derive_correspondence(original: ir.Model, converted: ir.Model) -> tuple[Correspondence, dict]:
    """The blocks both models have, and ``{"blocks": [{name, anchor, reason}], "reason"}``
    for the attention cores of the original that could not be matched."""
    a, b = original.graph, converted.graph
    pairing = _Pairing(a, b)
    pairing.run()
    regions_a = _regions(a, pairing.nodes_a, pairing.static_a)
    regions_b = _regions(b, pairing.nodes_b, pairing.static_b)
    graph_sets = ({id(v) for v in a.inputs}, {id(v) for v in b.inputs}, {id(v) for v in a.outputs}, {id(v) for v in b.outputs})
    blocks, unmatched = [], []
    claimed: dict[int, str] = {}
    anchors_total = sum(1 for n in a if _is_anchor(n))
    for k, region in enumerate(regions_a):
        anchor = region.anchors[0]
        name = f"block{k}"
        try:
            blocks.append(_block(name, region, a, b, pairing, regions_b, claimed, graph_sets))
        except BlockMismatch as exc:
            unmatched.append({"name": name, "anchor": f"{anchor.op_type} {anchor.name}", "reason": str(exc)})
    reason = ""
    if not regions_a:
        reason = ("the original model has no attention core (Softmax / Attention op)" if not anchors_total
                  else "the two models compute every attention core the same way: nothing to verify per block")
    elif unmatched and not blocks:
        reason = f"none of the original's {len(regions_a)} attention blocks could be matched in the converted model"
    graph_inputs = [[va.name, pairing.partner_a(va).name] for va in a.inputs if pairing.partner_a(va) is not None and pairing.partner_a(va).name != va.name]
    graph_outputs = [[va.name, vb.name] for va in a.outputs for vb in b.outputs if pairing.partner_a(va) is not None and pairing.cb(vb) is pairing.partner_a(va) and vb.name != va.name and va.name not in {o.name for o in b.outputs}]
    corr = Correspondence(blocks, graph_inputs, graph_outputs, source="derived by structure")
    return corr, {"blocks": unmatched, "reason": reason}


def _block(name, region: _Region, a, b, pairing, regions_b: list[_Region], claimed, graph_sets) -> BlockCorrespondence:
    graph_inputs_a, graph_inputs_b, graph_outputs_a, graph_outputs_b = graph_sets
    inputs_a, outputs_a = _boundary(region, a, pairing.static_a)
    tentative = pairing.tentative
    pairs_in, pairs_out, cache_in, cache_out = [], [], [], []
    b_producers: list[ir.Node] = []  # converted nodes writing what the block writes: they find its region
    a_reads: dict[int, list[ir.Value]] = {}  # by the converted model's (canonical) tensor: what the block reads
    for v in inputs_a:
        partner = pairing.partner_a(v)
        if partner is not None and id(v) in tentative:
            cache_in.append(v)
        elif partner is not None:
            a_reads.setdefault(id(partner), []).append(v)
        elif id(v) in graph_inputs_a:
            cache_in.append(v)
        else:
            raise BlockMismatch(f"the block reads {v.name!r}, which the converted model does not compute")
    for v in outputs_a:
        partner = pairing.partner_a(v)
        if partner is not None and id(v) in tentative:
            cache_out.append(v)
        elif partner is not None:
            pairs_out.append([v.name, partner.name])
            if partner.producer() is not None:
                b_producers.append(partner.producer())
        elif id(v) in graph_outputs_a:
            cache_out.append(v)
        else:
            raise BlockMismatch(f"the block writes {v.name!r}, for which the converted model has no counterpart")
    if not pairs_out:
        raise BlockMismatch("none of the block's outputs (other than caches) has a counterpart in the converted model")
    mine = [k for k, r in enumerate(regions_b) if any(id(p) in r.down for p in b_producers)]
    if not mine:
        raise BlockMismatch("the converted model computes this block's outputs without an attention core in between")
    for k in mine:
        if k in claimed:
            raise BlockMismatch(f"its converted region is shared with {claimed[k]}")
    region_b = regions_b[mine[0]] if len(mine) == 1 else _Region(
        [n for n in b if any(id(n) in regions_b[k].ids for k in mine)], set().union(*(regions_b[k].down for k in mine)),
        [x for k in mine for x in regions_b[k].anchors])
    comp, comp_b, anchors_b = region.nodes, region_b.nodes, region_b.anchors
    b_comp_ids = mine
    inputs_b, outputs_b = _boundary(region_b, b, pairing.static_b)
    b_cache_in, b_cache_out = [], []
    b_reads: dict[int, list[ir.Value]] = {}
    canonical_b: dict[int, ir.Value] = {}
    for v in inputs_b:
        partner = pairing.partner_b(v)
        if partner is not None and id(v) in tentative:
            b_cache_in.append(v)
        elif partner is not None:
            b_reads.setdefault(id(pairing.cb(v)), []).append(v)
            canonical_b[id(pairing.cb(v))] = pairing.cb(v)
        elif id(v) in graph_inputs_b:
            b_cache_in.append(v)
        else:
            raise BlockMismatch(f"the converted block reads {v.name!r}, which the original does not compute")
    # Pairs of the tensors each block actually reads (a model may read a no-op's copy of the
    # shared tensor, the other the tensor itself: the values are equal).
    for key in list(dict.fromkeys(list(a_reads) + list(b_reads))):
        reads_a, reads_b = a_reads.get(key, []), b_reads.get(key, [])
        if not reads_a:
            reads_a = [pairing.ba[key]]
        if not reads_b:
            reads_b = [canonical_b.get(key) or next(v for v in pairing.b_values() if id(v) == key)]
        for va in reads_a:
            pairs_in.append([va.name, reads_b[0].name])
        for vb in reads_b[1:]:
            pairs_in.append([reads_a[0].name, vb.name])
    known_b_outputs = {s for _, s in pairs_out}
    for v in outputs_b:
        if v.name in known_b_outputs:
            continue
        if id(v) in graph_outputs_b or id(v) in tentative:
            b_cache_out.append(v)
        elif pairing.partner_b(v) is None:
            raise BlockMismatch(f"the converted block writes {v.name!r}, which stands for no tensor of the original")
    heads_a, heads_b = _Heads(comp), _Heads(comp_b)
    if (cache_in or cache_out) and heads_b.order is None:
        raise BlockMismatch("cannot tell the converted block's head order (no Concat merging its heads)")
    used: set[int] = set()
    splits = []
    for v, kind, candidates, pairs in [(v, "input", b_cache_in, pairs_in) for v in cache_in] + [(v, "output", b_cache_out, pairs_out) for v in cache_out]:
        try:
            splits.append(_split_for(v, kind, heads_a, candidates, heads_b, used))
        except BlockMismatch:
            partner = pairing.fallback.get(id(v))
            if partner is None or id(partner) in used:
                raise
            pairs.append([v.name, partner.name])  # the same tensor in both after all
            used.add(id(partner))
    left = [v.name for v in b_cache_in + b_cache_out if id(v) not in used]
    if left:
        raise BlockMismatch(f"the converted block reads or writes graph tensors that stand for nothing of the original: {', '.join(left[:3])}")
    for k in b_comp_ids:
        claimed[k] = name
    kv = next((len(s.indices) for s in splits), None)
    return BlockCorrespondence(name, pairs_in, pairs_out, splits, heads=len(anchors_b), kv_heads=kv,
                               features={"derived": "by structure"})


def _names(model: ir.Model) -> set[str]:
    names = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for node in model.graph:
        names.update(o.name for o in node.outputs)
    return names


def missing_names(corr: Correspondence, original: ir.Model, converted: ir.Model) -> list[str]:
    """Names a correspondence gives that the models do not have."""
    a, b = _names(original), _names(converted)
    out = []
    for blk in corr.blocks:
        out += [n for n in blk.mha_inputs + blk.mha_outputs if n not in a]
        out += [n for n in blk.sha_inputs + blk.sha_outputs if n not in b]
    return list(dict.fromkeys(out))
