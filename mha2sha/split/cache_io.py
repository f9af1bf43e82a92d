"""Which KV-cache graph inputs/outputs of the converted blocks stayed whole, and why.

With per-head cache I/O (the default) every cache a converted block reads from a graph input,
or writes to a graph output, should become one tensor per kv head. Where the splitter could
not do that it slices the whole cache inside the graph (or concatenates the heads back) and
the model stays correct; this module names those tensors with the reason, so the report and
the console say it, and ``--strict`` can refuse the run.
"""

from __future__ import annotations

from mha2sha.analysis.layout import head_atoms, per_head_layout


def _reason(layout, space) -> str:
    if getattr(space, "group", 1) > 1:
        return (f"--build-ar {space.group}: each block reads {space.group} heads of it; "
                "caches are made one per kv head for single-head blocks only")
    carrying = [i for i, ax in enumerate(layout) if any(not a.broadcast for a in head_atoms((ax,), space))]
    _, removed = per_head_layout(layout, space)
    if len(carrying) != 1:
        return f"its heads are spread over {len(carrying)} axes where the block reads it"
    if carrying != removed:
        return (f"its heads share axis {carrying[0]} with another dimension where the block reads it "
                "(folded, e.g. [B*H, S, D] by a Reshape), so one head is not a slice of an axis of its own")
    return "the block reads it in a layout the splitter does not turn into cache tensors"


def _carries_heads(layout, space) -> bool:
    """Whether a tensor holds the heads along an axis of its own data: a cache does; a scalar
    or per-channel operand on the key/value path (a LoRA alpha input, a scale) is only
    broadcast over the heads and is no cache, whatever it is called."""
    return any(not a.broadcast for a in head_atoms(layout, space))


_IN_PLACE = ("ScatterND", "ScatterElements")
_VIEWS = ("Transpose", "Identity")
STATIC_REASON = ("it is a full-context buffer written in place ({op}: a static cache); caches are made one "
                 "per kv head where the block reads a graph input or concatenates it with the new entries")


def _written_in_place(value):
    """(scatter node, the graph input it writes, the graph outputs it becomes) when ``value`` is
    a static cache: a graph input, through views, written by ScatterND / ScatterElements."""
    node = value.producer()
    if node is None or node.op_type not in _IN_PLACE or not node.inputs:
        return None
    data = node.inputs[0]
    while data is not None and not data.is_graph_input() and data.producer() is not None and data.producer().op_type in _VIEWS:
        data = data.producer().inputs[0]
    if data is None or not data.is_graph_input():
        return None
    outputs, todo = [], [value]
    while todo:
        v = todo.pop()
        if v.is_graph_output():
            outputs.append(v)
        todo += [u.node.outputs[0] for u in v.uses() if u.node.op_type in _VIEWS]
    return node, data, outputs


def cache_candidates(block) -> list[dict]:
    """Before the split: the graph inputs the block reads and the graph outputs it writes on
    its key/value paths that carry heads, with the reason they would stay whole."""
    out: dict[str, dict] = {}
    for leaf in block.leaves.values():
        value = leaf.value
        if leaf.path in ("k", "v") and value.is_graph_input() and _carries_heads(leaf.layout, block.space) and value.name not in out:
            out[value.name] = {"tensor": value.name, "kind": "input", "block": block.name, "reason": _reason(leaf.layout, block.space)}
        static = _written_in_place(value) if leaf.path in ("k", "v") and _carries_heads(leaf.layout, block.space) else None
        if static is not None:
            node, data, outputs = static
            reason = STATIC_REASON.format(op=node.op_type)
            for v, kind in [(data, "input")] + [(o, "output") for o in outputs]:
                out.setdefault(v.name, {"tensor": v.name, "kind": kind, "block": block.name, "reason": reason})
    for (value, layout), (inst, _idx) in block.produced.items():
        if inst.path in ("k", "v") and value.is_graph_output() and _carries_heads(layout, block.space) and value.name not in out:
            out[value.name] = {"tensor": value.name, "kind": "output", "block": block.name, "reason": _reason(layout, block.space)}
    return list(out.values())


def whole_caches(model, candidates: list[dict]) -> list[dict]:
    """After the split: the candidates still in the graph's inputs/outputs under their own
    name (a cache made per head is replaced by ``<name>_h<k>`` tensors)."""
    inputs = {v.name for v in model.graph.inputs}
    outputs = {v.name for v in model.graph.outputs}
    return [c for c in candidates if c["tensor"] in (inputs if c["kind"] == "input" else outputs)]
