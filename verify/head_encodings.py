"""Every head of a converted block is encoded as the original block is.

A missing activation encoding on one head moves the simulated quantized output by less than
a quantization step, so simulation alone does not see it; and a pair made by another tool
has no name mapping to look it up by. Instead, each activation of a block is placed by
structure: its op and its distance (in nodes, upstream or downstream) from the attention
core it belongs to. An original activation with an encoding requires an encoding on every
converted activation at the same place relative to its own head's core.
"""

from __future__ import annotations

from collections import deque

import onnx

_ANCHORS = {"Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention"}


def _places(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """tensor -> (producer op, signed distance from the nearest attention core)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    anchors = [n for n in model.graph.node if n.op_type in _ANCHORS]
    best: dict[int, int] = {}
    for anchor in anchors:
        dist = {id(anchor): 0}
        queue = deque([(anchor, 0)])
        while queue:
            node, d = queue.popleft()
            for o in node.output:  # downstream
                for c in consumers.get(o, []):
                    if c.op_type not in _ANCHORS and id(c) not in dist:
                        dist[id(c)] = d + 1
                        queue.append((c, d + 1))
            if d <= 0:  # upstream only from the core upwards
                for i in node.input:
                    p = producer.get(i)
                    if p is not None and p.op_type not in _ANCHORS and id(p) not in dist:
                        dist[id(p)] = d - 1
                        queue.append((p, d - 1))
        for nid, d in dist.items():
            if nid not in best or abs(d) < abs(best[nid]):
                best[nid] = d
    out = {}
    for n in model.graph.node:
        if id(n) in best:
            for o in n.output:
                out[o] = (n.op_type, best[id(n)])
    return out


def missing_head_encodings(mha: onnx.ModelProto, sha: onnx.ModelProto, mha_enc: dict, sha_enc: dict) -> list[str]:
    """Converted activations without an encoding where the original's has one."""
    mha_places, sha_places = _places(mha), _places(sha)
    # A place is required only where the original encodes every tensor at it: a place is an
    # (op, distance) pair, so tensors of different paths can share it (the q and k RoPE Slices
    # when the converter lays one head out with one Transpose fewer), and a place the original
    # itself encodes only in part says nothing about a converted tensor that lands there.
    status: dict[tuple[str, int], set[bool]] = {}
    for name, place in mha_places.items():
        status.setdefault(place, set()).add(name in mha_enc)
    encoded = {place for place, seen in status.items() if seen == {True}}
    return sorted(name for name, place in sha_places.items() if place in encoded and name not in sha_enc)
