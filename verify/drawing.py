"""A drawing of one attention block, for the HTML report: the first attention core of a model
with its projections, as an SVG.

The region is found by structure, never by names: the first Softmax (or opset-23 Attention)
in graph order anchors it; it reaches back to the Q and K projections (a MatMul, Gemm or
Conv with a constant weight), forward through MatMul(P, V) to the output projection, and back
from MatMul(P, V) to the V projection. In an SHA model the first Softmax is one head, so the
same function draws "one head of SHA" beside "the MHA block". Graphviz ``dot`` lays it out
when it is installed; otherwise a plain layered layout is drawn.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from dataclasses import dataclass, field

import onnx

ANCHORS = ("Softmax", "Attention")
PROJECTIONS = ("MatMul", "Gemm", "Conv")
# How far a walk goes from the core before it stops (masks and RoPE tables are shared chains).
BACK_DEPTH = 10
FORWARD_DEPTH = 6
MAX_NODES = 60


@dataclass
class Region:
    """The drawn nodes (indices into the graph), their labels, and the edges between them."""

    labels: dict[int, str] = field(default_factory=dict)
    edges: set[tuple[int, int]] = field(default_factory=set)
    inputs: dict[str, int] = field(default_factory=dict)  # graph input name -> a node it feeds
    kinds: dict[int, str] = field(default_factory=dict)  # "core", "projection" or "op"


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.producer = {out: i for i, n in enumerate(self.nodes) for out in n.output if out}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.shapes = {t.name: list(t.dims) for t in graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.shapes[n.output[0]] = list(a.t.dims)
        self.graph_inputs = {v.name for v in graph.input} - set(self.shapes)

    def constant_shape(self, name: str) -> list[int] | None:
        """The shape of a constant, also through DequantizeLinear/Cast/Transpose of one."""
        seen = 0
        while name not in self.shapes and name in self.producer and seen < 3:
            node = self.nodes[self.producer[name]]
            if node.op_type not in ("DequantizeLinear", "Cast", "Transpose", "Identity"):
                return None
            name, seen = node.input[0], seen + 1
        return self.shapes.get(name)

    def weight_of(self, i: int) -> list[int] | None:
        node = self.nodes[i]
        if node.op_type not in PROJECTIONS:
            return None
        weights = [self.constant_shape(x) for x in node.input[:2] if x]
        weights = [w for w in weights if w is not None and len(w) >= 2]
        return weights[0] if weights else None

    def is_constant(self, name: str) -> bool:
        return self.constant_shape(name) is not None


def attention_region(graph: onnx.GraphProto) -> Region | None:
    """The first attention core of ``graph`` with its projections, or None without one."""
    g = _Graph(graph)
    anchor = next((i for i, n in enumerate(g.nodes) if n.op_type in ANCHORS), None)
    if anchor is None:
        return None
    region = Region()

    def add(i: int, kind: str = "op") -> bool:
        if i in region.labels or len(region.labels) >= MAX_NODES:
            return False
        node = g.nodes[i]
        weight = g.weight_of(i)
        region.labels[i] = node.op_type + (f"\nweight {'x'.join(map(str, weight))}" if weight else "")
        region.kinds[i] = kind if weight is None else "projection"
        return True

    def back(start: int, depth: int) -> None:
        if depth == 0 or g.weight_of(start) is not None and start != anchor:
            return
        for name in g.nodes[start].input:
            if not name or g.is_constant(name):
                continue
            if name in g.graph_inputs:
                region.inputs.setdefault(name, start)
                continue
            p = g.producer.get(name)
            if p is None:
                continue
            if add(p):
                back(p, depth - 1)
            region.edges.add((p, start))

    add(anchor, "core")
    back(anchor, BACK_DEPTH)
    # forward to the output projection; the first MatMul after the core (P @ V) reaches back to V
    frontier, depth, pv_done = [anchor], 0, g.nodes[anchor].op_type == "Attention"
    while frontier and depth < FORWARD_DEPTH:
        nxt = []
        for i in frontier:
            for out in g.nodes[i].output:
                for c in g.consumers.get(out, []):
                    region.edges.add((i, c))
                    if not add(c):
                        continue
                    if g.nodes[c].op_type == "MatMul" and not pv_done:
                        pv_done = True
                        region.kinds[c] = "core"
                        back(c, BACK_DEPTH)
                    elif g.weight_of(c) is not None:
                        continue  # the output projection: stop here
                    nxt.append(c)
        frontier, depth = nxt, depth + 1
    region.edges = {(a, b) for a, b in region.edges if a in region.labels and b in region.labels}
    return region


_FILL = {"core": "#ffe7b3", "projection": "#cfe3ff", "op": "#f2f2f2"}


def to_dot(region: Region, title: str) -> str:
    lines = ["digraph block {", "  rankdir=TB; bgcolor=transparent;",
             f'  label="{title}"; labelloc=t; fontname="Helvetica"; fontsize=14;',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];']
    for i, label in region.labels.items():
        text = label.replace("\n", "\\n").replace('"', "'")
        lines.append(f'  n{i} [label="{text}", fillcolor="{_FILL[region.kinds[i]]}"];')
    for k, (name, target) in enumerate(sorted(region.inputs.items())):
        lines.append(f'  in{k} [label="{name.replace(chr(34), chr(39))}", shape=ellipse, style=filled, fillcolor="#e8f5e9"];')
        lines.append(f"  in{k} -> n{target};")
    lines += [f"  n{a} -> n{b};" for a, b in sorted(region.edges)] + ["}"]
    return "\n".join(lines)


def _dot_svg(dot_text: str) -> str | None:
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        run = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if run.returncode != 0 or "<svg" not in run.stdout:
        return None
    return run.stdout[run.stdout.index("<svg"):]  # drop the XML prolog: the SVG is inlined in HTML


def _plain_svg(region: Region, title: str) -> str:
    """A layered layout without graphviz: a node's row is its longest path from the sources."""
    boxes = {f"n{i}": (label, _FILL[region.kinds[i]]) for i, label in region.labels.items()}
    edges = {(f"n{a}", f"n{b}") for a, b in region.edges}
    for k, (name, target) in enumerate(sorted(region.inputs.items())):
        boxes[f"in{k}"] = (name, "#e8f5e9")
        edges.add((f"in{k}", f"n{target}"))
    row = {key: 0 for key in boxes}
    for _ in range(len(boxes)):  # longest path by relaxation (the region is acyclic)
        changed = False
        for a, b in edges:
            if row[b] < row[a] + 1:
                row[b], changed = row[a] + 1, True
        if not changed:
            break
    rows: dict[int, list[str]] = {}
    for key in boxes:
        rows.setdefault(row[key], []).append(key)
    w, h, gap_x, gap_y, top = 150, 38, 20, 26, 30
    width = max(len(r) for r in rows.values()) * (w + gap_x) + gap_x
    height = top + len(rows) * (h + gap_y) + gap_y
    pos = {key: (gap_x + j * (w + gap_x), top + r * (h + gap_y)) for r, keys in rows.items() for j, key in enumerate(keys)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-family="Helvetica" font-size="14">{html.escape(title)}</text>']
    for a, b in sorted(edges):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        out.append(f'<line x1="{xa + w / 2}" y1="{ya + h}" x2="{xb + w / 2}" y2="{yb}" stroke="#777"/>')
    for key, (label, fill) in boxes.items():
        x, y = pos[key]
        out.append(f'<g class="node"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="#555"/>')
        for k, line in enumerate(label.split("\n")[:2]):
            out.append(f'<text x="{x + w / 2}" y="{y + 15 + 14 * k}" text-anchor="middle" font-family="Helvetica" font-size="11">{html.escape(line[:24])}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def block_svg(model_path: str, title: str) -> tuple[str | None, str]:
    """``(svg, how)``: the drawing of the model's first attention core, and "graphviz" or
    "plain layout" (svg None and the reason when the model cannot be read or has no core)."""
    try:
        proto = onnx.load(model_path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a drawing is optional; say why it is missing
        return None, f"cannot read {model_path}: {type(exc).__name__}: {exc}"
    region = attention_region(proto.graph)
    if region is None:
        return None, "no Softmax or Attention op in the model"
    svg = _dot_svg(to_dot(region, title))
    if svg is not None:
        return svg, "graphviz"
    return _plain_svg(region, title), "plain layout (graphviz `dot` not installed)"
