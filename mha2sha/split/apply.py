"""Apply the per-head rewrite of one block to the graph, all or nothing."""

from __future__ import annotations

import onnx_ir as ir

from mha2sha.analysis.discover import Block
from mha2sha.graph.build import fresh_name
from mha2sha.ledger import BlockBoundary, CacheSplit, Ledger, TensorPieces, WeightSlice
from mha2sha.split.emit import BlockSplitter, SplitError, SplitRecord


def _needed_outside(node: ir.Node, block_nodes: set[int], depth: int = 12) -> bool:
    """Whether ``node`` (outside the block, reading a block tensor) matters once the block
    is replaced: true unless everything it feeds ends in block nodes (a Shape chain that
    only computes a Reshape target inside the block)."""
    stack = [(node, 0)]
    seen: set[int] = set()
    while stack:
        n, d = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if d > depth:
            return True
        for out in n.outputs:
            if out.is_graph_output():
                return True
            for use in out.uses():
                if id(use.node) not in block_nodes:
                    stack.append((use.node, d + 1))
    return False


def _rename_for_replacement(value: ir.Value, names: set[str]) -> str:
    original = value.name
    value.name = fresh_name(f"{original}.mha", names, sep="")
    return original


def split_block(graph: ir.Graph, block: Block, names: set[str], *, per_head_cache_io: bool = True, requantized=None,
                positions: dict[int, int] | None = None, ledger: Ledger | None = None) -> SplitRecord:
    """Rewrite ``block`` into per-head computation; on failure the graph is left unchanged
    (and nothing is appended to ``ledger``).

    With ``per_head_cache_io``, KV-cache graph inputs and outputs (graph inputs read on the
    key/value paths, graph outputs written there) become one tensor per kv head.
    ``positions`` (id(node) -> index in the sorted graph): the new nodes go in before the
    first node reading the block's outputs instead of at the end, so the graph stays sorted
    in the usual case (the caller still checks).
    """
    splitter = BlockSplitter(graph, block, names, per_head_cache_io=per_head_cache_io, requantized=requantized)
    block_nodes = {id(inst.node) for inst in block.instances}
    targets: list[tuple[ir.Value, list]] = []
    seen: set[int] = set()
    for (value, layout), _ in block.produced.items():
        if id(value) in seen or any(ax.is_window for ax in layout):
            # A window of a fused projection read outside the block (the K/V part of a
            # fused QKV when K/V are shared): the original projection stays and feeds it.
            continue
        outside = [u for u in value.uses() if id(u.node) not in block_nodes and _needed_outside(u.node, block_nodes)]
        if outside or value.is_graph_output():
            seen.add(id(value))
            targets.append((value, layout))
    initializers_before = set(graph.initializers)
    per_head_out: list[tuple[ir.Value, object]] = []
    try:
        rebuilt = []
        for value, layout in targets:
            path = block.produced[(value, layout)][0].path
            only_output = value.is_graph_output() and not [u for u in value.uses() if id(u.node) not in block_nodes and _needed_outside(u.node, block_nodes)]
            if per_head_cache_io and only_output and path in ("k", "v"):
                split = splitter.per_head_outputs(value, layout)
                if split is not None:
                    per_head_out.append((value, split))
                    continue
            if path == "scores" and (value, layout) not in block.merges:
                # A bias read outside the block too (Bloom's ALiBi table [B*H, 1, T], shared
                # by every layer): where the heads cannot be put back together, the original
                # nodes keep computing it for the other readers, once.
                try:
                    rebuilt.append((value, splitter.reconstruct(value, layout)))
                except SplitError:
                    pass
                continue
            rebuilt.append((value, splitter.reconstruct(value, layout)))
    except (SplitError, ValueError) as exc:
        _rollback(graph, splitter, initializers_before)
        at = exc.at if isinstance(exc, SplitError) else None
        raise SplitError(getattr(exc, "reason", str(exc)), at) from None
    consumers = [u.node for value, _ in rebuilt for u in value.uses() if id(u.node) not in block_nodes and u.node not in splitter._new]
    _insert(graph, splitter.nodes, consumers, positions)
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
    for value, split in per_head_out:
        outputs = graph.outputs
        position = next(i for i, out in enumerate(outputs) if out is value)
        pieces = [v for node in splitter.nodes for v in node.outputs if v.name in split.names]
        by_name = {v.name: v for v in pieces}
        outputs.pop(position)
        for offset, name in enumerate(split.names):
            outputs.insert(position + offset, by_name[name])
        splitter.record.io_splits[split.original] = split
        splitter.record.outputs.extend(split.names)
    splitter.record.io_splits.update(splitter.io_splits)
    splitter.record.inputs = list(splitter.external_inputs)
    if ledger is not None:
        ledger.extend(ledger_entries(splitter.record))
    return splitter.record


def ledger_entries(record: SplitRecord) -> list:
    """What a block's split did, as ledger entries (mha2sha.ledger), in the record's order."""
    block = record.block
    entries: list = [TensorPieces(original, tuple(pieces), "split", block) for original, pieces in record.activations.items()]
    entries += [WeightSlice(p.source, p.target, p.axis, tuple(p.indices), tuple(p.source_shape), block) for p in record.params]
    entries.append(BlockBoundary(block, tuple(record.inputs), tuple(record.outputs)))
    entries += [CacheSplit(block, s.original, s.kind, s.axis, tuple(s.names), tuple(s.indices), s.graph_layout)
                for s in record.io_splits.values()]
    return entries


def _insert(graph: ir.Graph, nodes: list[ir.Node], consumers: list[ir.Node], positions: dict[int, int] | None) -> None:
    known = [positions.get(id(n)) for n in consumers] if positions is not None else []
    if consumers and all(p is not None for p in known):
        first = min(range(len(consumers)), key=lambda i: known[i])
        graph.insert_before(consumers[first], nodes)
    else:
        graph.extend(nodes)


def _rollback(graph: ir.Graph, splitter: BlockSplitter, initializers_before: set[str]) -> None:
    """Remove everything the failed split added (its nodes never entered the graph): the
    graph is as it was."""
    for node in reversed(splitter.nodes):
        for i in range(len(node.inputs)):
            node.replace_input_with(i, None)
    if splitter.new_inputs:
        kept = [v for v in graph.inputs if v not in splitter.new_inputs]
        graph.inputs.clear()
        graph.inputs.extend(kept)
    for name in list(graph.initializers):
        if name not in initializers_before:
            graph.initializers.pop(name)
