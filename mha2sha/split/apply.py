"""Apply the per-head rewrite of one block to the graph, all or nothing."""

from __future__ import annotations

import onnx_ir as ir

from mha2sha.analysis.discover import Block
from mha2sha.split.emit import BlockSplitter, SplitError, SplitRecord


def _live_outside(graph: ir.Graph, block_nodes: set[int]) -> set[int]:
    """Nodes the graph outputs need, not counting the block's own nodes (they are replaced)."""
    live: set[int] = set()
    stack = [v for v in graph.outputs]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        node = v.producer()
        if node is None or id(node) in block_nodes or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(i for i in node.inputs if i is not None)
    return live


def _rename_for_replacement(value: ir.Value, names: set[str]) -> str:
    original = value.name
    alt, k = f"{original}.mha", 1
    while alt in names:
        k += 1
        alt = f"{original}.mha{k}"
    names.add(alt)
    value.name = alt
    return original


def split_block(graph: ir.Graph, block: Block, names: set[str]) -> SplitRecord:
    """Rewrite ``block`` into per-head computation; on failure the graph is left unchanged."""
    splitter = BlockSplitter(graph, block, names)
    block_nodes = {id(inst.node) for inst in block.instances}
    live = _live_outside(graph, block_nodes)
    targets: list[tuple[ir.Value, list]] = []
    seen: set[int] = set()
    for (value, layout), _ in block.produced.items():
        if id(value) in seen:
            continue
        outside = [u for u in value.uses() if id(u.node) not in block_nodes and id(u.node) in live]
        if outside or value.is_graph_output():
            seen.add(id(value))
            targets.append((value, layout))
    initializers_before = set(graph.initializers)
    try:
        rebuilt = [(value, splitter.reconstruct(value, layout)) for value, layout in targets]
    except (SplitError, ValueError) as exc:
        _rollback(graph, splitter, initializers_before)
        at = exc.at if isinstance(exc, SplitError) else None
        raise SplitError(getattr(exc, "reason", str(exc)), at) from None
    for value, new in rebuilt:
        for use in list(value.uses()):
            if id(use.node) not in block_nodes and use.node not in splitter.nodes:
                use.node.replace_input_with(use.idx, new)
        original = _rename_for_replacement(value, names)
        new.name = original
        if value.is_graph_output():
            outputs = graph.outputs
            for i, out in enumerate(outputs):
                if out is value:
                    outputs[i] = new
        splitter.record.outputs.append(original)
    splitter.record.inputs = list(splitter.external_inputs)
    return splitter.record


def _rollback(graph: ir.Graph, splitter: BlockSplitter, initializers_before: set[str]) -> None:
    """Remove everything the failed split added: the graph is as it was."""
    for node in reversed(splitter.nodes):
        for i in range(len(node.inputs)):
            node.replace_input_with(i, None)
    graph.remove(splitter.nodes, safe=False)
    for name in list(graph.initializers):
        if name not in initializers_before:
            graph.initializers.pop(name)
