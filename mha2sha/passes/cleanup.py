"""After the rewrite: drop dead nodes and initializers, sort, and fill in missing shapes."""

from __future__ import annotations

import onnx_ir as ir

from mha2sha.passes.shapes import infer_shapes


def is_sorted(graph: ir.Graph) -> bool:
    """Whether every node of ``graph`` comes after the producers of its inputs (a linear
    check: onnx_ir's sort is ten times slower, and the split keeps most graphs sorted).
    A node with a subgraph counts as unsorted: its subgraph's reads are not checked here."""
    seen: set[int] = set()
    for node in graph:
        for v in node.inputs:
            if v is not None:
                producer = v.producer()
                if producer is not None and id(producer) not in seen:
                    return False
        for a in node.attributes.values():
            if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                return False
        seen.add(id(node))
    return True


def ensure_sorted(graph: ir.Graph) -> None:
    if not is_sorted(graph):
        graph.sort()


def remove_dead(model: ir.Model) -> int:
    """Remove nodes none of whose outputs is read, and unread initializers.

    Unlike a generic dead-code pass this never trims unused optional outputs of a live node:
    an opset-23 Attention node given a past cache must keep its present outputs.
    """
    graph = model.graph
    ensure_sorted(graph)
    outputs = set(map(id, graph.outputs))
    removed = 0
    for node in reversed(list(graph)):
        if any(out.uses() or id(out) in outputs for out in node.outputs):
            continue
        graph.remove(node, safe=True)
        removed += 1
    inputs = set(map(id, graph.inputs))
    for name, init in list(graph.initializers.items()):
        if not init.uses() and id(init) not in outputs and id(init) not in inputs:
            del graph.initializers[name]
    return removed


def cleanup(model: ir.Model) -> None:
    remove_dead(model)
    infer_shapes(model, only_missing=True)


__all__ = ["cleanup", "ensure_sorted", "infer_shapes", "is_sorted", "remove_dead"]
