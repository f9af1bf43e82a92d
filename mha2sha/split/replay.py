"""Replay of one head's emission for the other heads.

The splitter runs an instance's handler (split/handlers.py) for the first head while recording
the nodes it makes; the recording becomes a :class:`Recipe`, and every further head gets the
same nodes again with its own input pieces and names, without redoing the handler's layout
work. Valid because the handlers decide from layouts alone: a head changes only the input
pieces and the names. A handler whose nodes cannot be described this way (a subgraph
attribute, a name outside the head's prefix, a result that is a shared value) gets no recipe
and runs again for every head.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

# Where a recorded node input comes from, per head: the handler's input piece i, output k
# of recorded node j, or the same value for every head (a shared constant or target).
IN, NEW, FIXED = 0, 1, 2


@dataclass
class NodeRecipe:
    op: str
    domain: str
    version: int | None
    attributes: tuple[ir.Attr, ...]
    inputs: tuple[tuple | None, ...]  # (IN, i) | (NEW, j, k) | (FIXED, value) | None
    name: str  # after "<block>.<tag>."
    outputs: tuple[tuple[str, ir.Shape | None, ir.DataType | None], ...]  # name after the prefix, shape, dtype


@dataclass
class Recipe:
    """The nodes an instance's handler made for one head (see the module docstring)."""

    nodes: list[NodeRecipe]
    results: dict[int, tuple]  # output index -> (IN, i) | (NEW, j, k)


def make_recipe(recording: list[tuple[ir.Node, str]], bases: dict[str, str], ins: list,
                results: dict[int, ir.Value], prefix: str) -> Recipe | None:
    """The recipe of the nodes ``recording`` holds (node, name asked for), made from the input
    pieces ``ins`` and giving ``results``; names are kept relative to the head's ``prefix``
    (``bases``: unique name -> name asked for). None when the emission cannot be replayed."""
    made: dict[int, tuple[int, int]] = {}  # id(value) -> (node j, output k)
    nodes: list[NodeRecipe] = []

    def source(v: ir.Value | None):
        if v is None:
            return None
        found = made.get(id(v))
        if found is not None:
            return (NEW, *found)
        for i, piece in enumerate(ins):
            if piece is v:
                return (IN, i)
        return (FIXED, v)

    def suffix(name: str | None) -> str | None:
        base = bases.get(name, name)
        return base[len(prefix):] if base is not None and base.startswith(prefix) else None

    for j, (node, base) in enumerate(recording):
        name = base[len(prefix):] if base.startswith(prefix) else None
        outs = [(suffix(o.name), o.shape, o.dtype) for o in node.outputs]
        for o in node.outputs:
            if o.shape is not None:
                o.shape.freeze()  # shared with the other heads' copies from now on
        if name is None or any(o[0] is None for o in outs) or any(a.type == ir.AttributeType.GRAPH for a in node.attributes.values()):
            return None
        nodes.append(NodeRecipe(node.op_type, node.domain, node.version, tuple(node.attributes.values()),
                                tuple(source(v) for v in node.inputs), name, tuple(outs)))
        for k, out in enumerate(node.outputs):
            made[id(out)] = (j, k)
    result_sources = {idx: source(v) for idx, v in results.items()}
    if any(src is None or src[0] == FIXED for src in result_sources.values()):
        return None
    return Recipe(nodes, result_sources)


def replay(em, recipe: Recipe, ins: list, prefix: str) -> dict[int, ir.Value]:
    """Make ``recipe``'s nodes again in the splitter ``em`` from the input pieces ``ins``, named
    under ``prefix`` ("<block>.<tag>."); a node identical to one already made is shared.
    Returns the results by output index, as the handler would have."""
    made: list[ir.Node] = []
    for nr in recipe.nodes:
        inputs = []
        for src in nr.inputs:
            if src is None:
                inputs.append(None)
            elif src[0] == IN:
                inputs.append(ins[src[1]])
            elif src[0] == NEW:
                inputs.append(made[src[1]].outputs[src[2]])
            else:
                inputs.append(src[1])
        same = em._same_node(nr.op, nr.domain, inputs, nr.attributes)
        if same is not None:
            made.append(same)
            continue
        outputs = []
        for name, shape, dtype in nr.outputs:
            v = ir.Value(name=em._unique(prefix + name), shape=shape)
            v.dtype = dtype
            outputs.append(v)
        node = ir.Node(nr.domain, nr.op, inputs, nr.attributes, outputs=outputs, name=em._unique(prefix + nr.name), version=nr.version)
        em._add(node)
        em._remember_node(node)
        made.append(node)
    return {idx: ins[src[1]] if src[0] == IN else made[src[1]].outputs[src[2]] for idx, src in recipe.results.items()}
