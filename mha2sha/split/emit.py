"""Rewrite one analysed attention block into per-head computation.

For every query head h the block's nodes are cloned with the head's piece of each tensor:
axes that only index heads disappear, channel axes keep the head's channels, constants
that carry heads are sliced, projections get the head's slice of their weight. Tensors
whose key (the head digits they depend on) is the same for several heads are built once:
a K/V projection is shared by the query heads of its kv group. Where the original graph
reads a block tensor outside the block (the output projection, a present-KV output), the
heads are concatenated back into the original tensor, which keeps its name.

The parts: this module holds the BlockSplitter (naming, the piece cache, node building, the
leaves and projections, the replay of one head's emission for the others, putting heads back
together); split/handlers.py the per-op handlers, registered by op type or op-axis kind;
split/rope.py and split/attention_op.py the RoPE and Attention-op forms; split/records.py
the splitter's record of what it did.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mha2sha.analysis import opaxes
from mha2sha.analysis.discover import Block, Instance, Leaf, Projection
from mha2sha.analysis.layout import (
    Axis,
    Layout,
    axis_indices,
    head_atoms,
    key_of,
    per_head_layout,
)
from mha2sha.errors import Refusal
from mha2sha.graph.build import add_constant, axes_of, fresh_name
from mha2sha.graph.derived import Take, derived_tensor, take
from mha2sha.graph.ir_utils import (
    attr,
    const_array,
    const_tensor,
    dims,
    is_const,
)
from mha2sha.split import handlers, replay, rope
from mha2sha.split.records import IOSplit, ParamSlice, SplitRecord

SplitError = Refusal  # the splitter's refusals are the converter's one refusal type


def _shape_of(layout: Layout) -> ir.Shape:
    out = []
    for ax in layout:
        s = ax.size
        out.append(s if isinstance(s, int) else (ir.SymbolicDim(s) if isinstance(s, str) else ir.SymbolicDim(None)))
    return ir.Shape(out)


class BlockSplitter:
    def __init__(self, graph: ir.Graph, block: Block, names: set[str], *, per_head_cache_io: bool = True, requantized=None):
        self.graph = graph
        self.requantized = requantized  # (output name, input name) -> bool: a distinct encoding
        self.per_head_cache_io = per_head_cache_io
        self.io_splits: dict[str, IOSplit] = {}
        self.block = block
        self.space = block.space
        self._num_heads = block.space.num_heads
        self.names = names
        self.pieces: dict[tuple[int, int, tuple[int, ...]], ir.Value] = {}  # (id(value), layout id, key)
        self.emitted: dict[tuple, ir.Node] = {}
        self.record = SplitRecord(block.name)
        self.nodes: list[ir.Node] = []
        self._new: set[ir.Node] = set()
        # Layouts are compared by content but hashed in Python: each distinct layout gets a
        # small int once (by object id: the block keeps its layouts alive), and its keys for
        # every head are computed once.
        self._layout_ids: dict[int, int] = {}
        self._layout_by_content: dict[Layout, int] = {}
        self._layouts_seen: list[Layout] = []
        self._keys: dict[int, list[tuple[int, ...]]] = {}
        self._distinct_keys: dict[int, int] = {}
        self._shapes: dict[int, ir.Shape] = {}
        # What makes each (value, layout id): the block's dicts, looked up by ints. Later
        # entries win, as in piece(): an instance output over a projection over a leaf.
        self._sources: dict[tuple[int, int], tuple[str, object]] = {}
        for kind, table in (("leaf", block.leaves), ("projection", block.projections), ("produced", block.produced)):
            for (value, layout), what in table.items():
                self._sources[(id(value), self._layout_id(layout))] = (kind, what)
        self._int_consts: dict[tuple, ir.Value] = {}
        self._io_values: dict[tuple[str, int], ir.Value] = {}
        self.new_inputs: list[ir.Value] = []
        self.external_inputs: dict[str, None] = {}  # non-constant tensors the new nodes read
        # Recipe replay (see split/replay.py): per instance, its recipe or None (not replayable).
        self._recipes: dict[int, replay.Recipe | None] = {}
        self._recording: list[tuple[ir.Node, str]] | None = None  # (node, base name) while recording
        self._bases: dict[str, str] = {}  # unique name -> name asked for, while recording
        self._shared = 0  # > 0 while making nodes every head shares (cached run-time targets)
        self._emissions = 0  # counts emissions: a handler that emits others is not replayed
        self._replayable = True
        self._tags: dict[tuple[int, int], str] = {}

    # -- naming ----------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base = name
        name = fresh_name(base, self.names)
        if self._recording is not None:
            self._bases[name] = base
        return name

    def _tag(self, layout: Layout, head: int) -> str:
        # Layouts live as long as the block: their ids are stable keys for the cache.
        lid = self._layout_id(layout)
        found = self._tags.get((lid, head))
        if found is None:
            found = self._tags[(lid, head)] = self._make_tag(lid, head)
        return found

    def _make_tag(self, lid: int, head: int) -> str:
        keys = self._keys[lid]
        key = keys[head]
        if not key:
            return "shared"
        count = self._distinct_keys.get(lid)
        if count is None:
            count = self._distinct_keys[lid] = len(set(keys))
        prefix = "h" if self.space.group == 1 else "g"  # a head, or a group of heads (AR-M)
        if count == self._num_heads:
            return f"{prefix}{head}"
        return "kv" + "_".join(str(k) for k in key)

    def _layout_id(self, layout: Layout) -> int:
        lid = self._layout_ids.get(id(layout))
        if lid is None:
            lid = self._layout_by_content.get(layout)
            if lid is None:
                lid = self._layout_by_content[layout] = len(self._layout_by_content)
                self._keys[lid] = [key_of(layout, self.space, h) for h in range(self._num_heads)]
            self._layout_ids[id(layout)] = lid
            self._layouts_seen.append(layout)  # keeps the id valid
        return lid

    def _piece_key(self, value: ir.Value, layout: Layout, head: int, keep_rank: bool) -> tuple:
        lid = self._layout_id(layout)
        key = self._keys[lid][head]
        return (id(value), lid, key + (-1,) if keep_rank else key)

    def _name(self, tag: str, original: str | None, fallback: str) -> str:
        return self._unique(f"{self.block.name}.{tag}.{original or fallback}")

    # -- graph building --------------------------------------------------------------
    def _node(self, op: str, inputs, attrs: dict | None, name: str, outputs: list[ir.Value], domain: str = "", version=None) -> ir.Node:
        node = ir.node(op, list(inputs), attrs or {}, domain=domain, outputs=outputs, name=self._unique(name), version=version)
        self._add(node)
        if self._recording is not None and not self._shared:
            self._recording.append((node, name))
        return node

    def _add(self, node: ir.Node) -> None:
        for v in node.inputs:
            if v is not None and v.name and v.producer() not in self._new and not is_const(v):
                self.external_inputs.setdefault(v.name, None)
        self._new.add(node)
        self.nodes.append(node)  # put into the graph by split_block once the whole block succeeded

    def _value(self, name: str, like: ir.Value | None, layout: Layout | None = None, dtype=None) -> ir.Value:
        v = ir.Value(name=name)
        v.dtype = dtype if dtype is not None else (like.dtype if like is not None else None)
        if layout is not None:
            v.shape = self._shape(layout)
        return v

    def _shape(self, layout: Layout) -> ir.Shape:
        """The shape of a layout, one frozen object per distinct layout (shared by values)."""
        lid = self._layout_id(layout)
        found = self._shapes.get(lid)
        if found is None:
            found = self._shapes[lid] = _shape_of(layout)
            found.freeze()
        return found

    def _const(self, name: str, array: np.ndarray) -> ir.Value:
        return add_constant(self.graph, self._unique(name), array)

    def _ints(self, tag: str, what: str, values: list[int]) -> ir.Value:
        """A small int64 constant, shared by every head that needs the same values."""
        key = (what, tuple(int(v) for v in values))
        found = self._int_consts.get(key)
        if found is None:
            suffix = "_".join(str(v).replace("-", "m") for v in values)
            found = self._const(f"{self.block.name}.{what}_{suffix}", np.array(values, dtype=np.int64))
            self._int_consts[key] = found
        return found

    # -- pieces ----------------------------------------------------------------------
    def piece(self, value: ir.Value, layout: Layout, head: int, keep_rank: bool = False) -> ir.Value:
        key = self._piece_key(value, layout, head, keep_rank)
        found = self.pieces.get(key)
        if found is not None:
            return found
        self._emissions += 1
        source = self._sources.get(key[:2])
        if source is None:
            raise SplitError(f"tensor {value.name!r} has no layout in the block", value.producer())
        kind, what = source
        if kind == "produced":
            self._emit_instance(what[0], head)
        elif kind == "projection":
            self._emit_projection(what, head)
        else:
            self._emit_leaf(what, head, keep_rank)
        return self.pieces[key]

    def _set_piece(self, value: ir.Value, layout: Layout, head: int, piece: ir.Value, keep_rank=False) -> None:
        self.pieces[self._piece_key(value, layout, head, keep_rank)] = piece
        if value.name and piece.name:
            self.record.add_activation(value.name, piece.name)

    # -- leaves ----------------------------------------------------------------------
    def _selection(self, layout: Layout, head: int, keep_rank: bool):
        """Per axis: indices to take (None = all) and whether the axis disappears."""
        sel: list[tuple[list[int] | None, bool]] = []
        for ax in layout:
            ax = self.space.refine_axis(ax)
            heads = head_atoms((ax,), self.space)
            if not heads:
                sel.append((None, False))
                continue
            free = [a for a in ax.atoms if a not in heads]
            # The per-head layout decides which axes disappear (never a matrix row axis).
            keep = keep_rank or bool(free) or any(a.root in self.space.matrix_roots for a in ax.atoms)
            if all(a.broadcast for a in heads) and not free:
                sel.append((None, not keep))
                continue
            idx = axis_indices(ax, self.space, head)
            sel.append((idx, not keep))
        return sel

    def _folded_axes(self, layout: Layout) -> list[int]:
        """Axes holding head digits next to digits of run-time size ([B*H] with a symbolic
        batch): a head's indices there are not static, so the tensor is unfolded first."""
        found = []
        for i, ax in enumerate(layout):
            atoms = self.space.refine_axis(ax).atoms
            if len(atoms) > 1 and head_atoms((ax,), self.space) and any(not isinstance(a.extent, int) for a in atoms):
                found.append(i)
        return found

    def _unfold(self, value: ir.Value, layout: Layout, axes: list[int]) -> tuple[ir.Value, Layout]:
        """``value`` reshaped so that each axis in ``axes`` becomes one axis per digit (made
        once, shared by every head): Shape -> Concat(prefix, digit sizes, suffix) -> Reshape."""
        key = ("unfold", id(value), layout)
        cached = self.emitted.get(key)
        if cached is not None:
            return cached
        self._shared += 1
        try:
            current, current_layout = value, layout
            for axis in sorted(axes, reverse=True):  # later axes first: earlier indices stay valid
                atoms = self.space.refine_axis(current_layout[axis]).atoms
                sizes = [a.extent if isinstance(a.extent, int) else -1 for a in atoms]
                if sizes.count(-1) > 1:
                    raise SplitError(f"cannot unfold the heads of {value.name!r}: several run-time sizes in one axis", value.producer())
                shape = self._value(self._unique(f"{self.block.name}.{value.name}.shape"), None, dtype=ir.DataType.INT64)
                self._node("Shape", [current], None, f"{self.block.name}.unfold_shape", [shape])
                parts = []
                if axis > 0:
                    head_part = self._value(self._unique(f"{self.block.name}.{value.name}.outer"), None, dtype=ir.DataType.INT64)
                    self._node("Slice", [shape, self._ints("shared", "starts", [0]), self._ints("shared", "ends", [axis])], None, f"{self.block.name}.unfold_outer", [head_part])
                    parts.append(head_part)
                parts.append(self._ints("shared", "dims", sizes))
                tail = self._value(self._unique(f"{self.block.name}.{value.name}.inner"), None, dtype=ir.DataType.INT64)
                self._node("Slice", [shape, self._ints("shared", "starts", [axis + 1]), self._ints("shared", "ends", [2**62])], None, f"{self.block.name}.unfold_inner", [tail])
                parts.append(tail)
                target = self._value(self._unique(f"{self.block.name}.{value.name}.unfolded_shape"), None, dtype=ir.DataType.INT64)
                self._node("Concat", parts, {"axis": 0}, f"{self.block.name}.unfold_target", [target])
                out = self._value(self._unique(f"{self.block.name}.{value.name}.unfolded"), value)
                self._node("Reshape", [current, target], None, f"{self.block.name}.unfold", [out])
                current_layout = current_layout[:axis] + tuple(Axis((a,)) for a in atoms) + current_layout[axis + 1:]
                current = out
        finally:
            self._shared -= 1
        self.emitted[key] = (current, current_layout)
        return current, current_layout

    def _emit_leaf(self, leaf: Leaf, head: int, keep_rank: bool) -> None:
        value, layout = leaf.value, leaf.layout
        folded = self._folded_axes(layout) if const_array(value) is None else []
        if folded:
            unfolded, unfolded_layout = self._unfold(value, layout, folded)
            if len(per_head_layout(unfolded_layout, self.space)[0]) != len(per_head_layout(layout, self.space)[0]):
                raise SplitError(f"cannot take one head of {value.name!r}: its batch and head digits are folded with others", value.producer())
            self._emit_leaf(Leaf(unfolded, unfolded_layout, leaf.path), head, keep_rank)
            self._set_piece(value, layout, head, self.pieces[self._piece_key(unfolded, unfolded_layout, head, keep_rank)], keep_rank)
            return
        sel = self._selection(layout, head, keep_rank)
        tag = self._tag(layout, head)
        if all(idx is None and not rm for idx, rm in sel):
            self._set_piece(value, layout, head, value, keep_rank)
            return
        if self.per_head_cache_io and leaf.path in ("k", "v") and value.is_graph_input() and not keep_rank:
            piece = self._cache_input(value, sel, head)
            if piece is not None:
                self._set_piece(value, layout, head, piece, keep_rank)
                return
        arr = const_array(value)
        if arr is not None:
            for axis in range(len(sel) - 1, -1, -1):
                idx, removed = sel[axis]
                if idx is not None:
                    arr = np.take(arr, idx, axis=axis)
                if removed:
                    arr = np.squeeze(arr, axis=axis)
            piece = self._const(f"{self.block.name}.{tag}.{value.name}", np.ascontiguousarray(arr))
            self._record_const(value, piece, layout, sel)
            self._set_piece(value, layout, head, piece, keep_rank)
            return
        # A run-time tensor: take the head's indices, then squeeze the axes that disappear.
        current = value
        removed_axes = [i for i, (_, rm) in enumerate(sel) if rm]
        only_squeeze = all(idx is None for idx, _ in sel)
        producer = value.producer()
        if only_squeeze and producer is not None and producer.op_type == "Unsqueeze":
            added = _unsqueeze_axes(producer)
            # Seen through unless the Unsqueeze output carries an encoding of its own (then
            # the quantized tensor is kept and squeezed, so the quantizer chain stays).
            distinct = self.requantized is not None and self.requantized(value.name, producer.inputs[0].name)
            if added == removed_axes and not distinct:
                self._set_piece(value, layout, head, producer.inputs[0], keep_rank)
                return
        shape = list(value.shape) if value.shape is not None else None
        gathered_away: list[int] = []
        for axis, (idx, removed) in enumerate(sel):
            if idx is None:
                continue
            out = self._value(self._name(tag, value.name, "leaf") + f".sel{axis}", value)
            if removed and len(idx) == 1:
                # One head's index on an axis that disappears. With a static axis the tensor is
                # split once into per-head pieces (one Split, then a Squeeze per head); several
                # scalar Gathers of one tensor trip onnxruntime's Gather-to-Split fusion.
                position = axis - len(gathered_away)
                dim = shape[position] if shape is not None else None
                if isinstance(dim, int) and current is value:
                    pieces = self._split_once(value, position, dim, tag)
                    self._node("Squeeze", [pieces[idx[0]], self._ints(tag, "axes", [position])], None, f"{self.block.name}.{tag}.Squeeze", [out])
                else:
                    self._node("Gather", [current, self._const(f"{self.block.name}.index_{idx[0]}", np.array(idx[0], dtype=np.int64))], {"axis": position}, f"{self.block.name}.{tag}.Gather", [out])
                gathered_away.append(axis)
                if shape is not None:
                    shape = [d for i, d in enumerate(shape) if i != position]
                    out.shape = ir.Shape(shape)
                current = out
                continue
            if shape is not None:
                shape[axis - len(gathered_away)] = len(idx)
                out.shape = ir.Shape(shape)
            axis = axis - len(gathered_away)
            if idx == list(range(idx[0], idx[0] + len(idx))):
                self._node("Slice", [current, self._ints(tag, "starts", [idx[0]]), self._ints(tag, "ends", [idx[-1] + 1]), self._ints(tag, "axes", [axis])], None, f"{self.block.name}.{tag}.Slice", [out])
            else:
                self._node("Gather", [current, self._ints(tag, "indices", idx)], {"axis": axis}, f"{self.block.name}.{tag}.Gather", [out])
            current = out
        squeeze = [a - sum(1 for g in gathered_away if g < a) for a in removed_axes if a not in gathered_away]
        if squeeze:
            out = self._value(self._name(tag, value.name, "leaf"), value)
            if shape is not None:
                out.shape = ir.Shape([d for i, d in enumerate(shape) if i not in squeeze])
            self._node("Squeeze", [current, self._ints(tag, "axes", squeeze)], None, f"{self.block.name}.{tag}.Squeeze", [out])
            current = out
        self._set_piece(value, layout, head, current, keep_rank)

    def _split_once(self, value: ir.Value, axis: int, dim: int, tag: str) -> list[ir.Value]:
        key = ("split", id(value), axis)
        node = self.emitted.get(key)
        if node is None:
            outs = [self._value(self._name("split", value.name, "leaf") + f".{k}", value) for k in range(dim)]
            from mha2sha.graph.ir_utils import opset

            if opset(self.graph) >= 13:
                node = self._node("Split", [value, self._ints("shared", "split", [1] * dim)], {"axis": axis}, f"{self.block.name}.Split", outs)
            else:
                node = self._node("Split", [value], {"axis": axis, "split": [1] * dim}, f"{self.block.name}.Split", outs)
            self.emitted[key] = node
        return list(node.outputs)

    def _cache_input(self, value: ir.Value, sel, head: int) -> ir.Value | None:
        """A new graph input holding one kv head's cache, in place of slicing the whole."""
        heads = [(axis, idx) for axis, (idx, removed) in enumerate(sel) if idx is not None or removed]
        if len(heads) != 1 or heads[0][1] is None or len(heads[0][1]) != 1 or not sel[heads[0][0]][1]:
            return None
        axis, (index,) = heads[0][0], heads[0][1]
        split = self.io_splits.setdefault(value.name, IOSplit(value.name, "input", axis, [], []))
        if index in split.indices:
            return self._io_values[(value.name, index)]
        name = self._unique(f"{value.name}_h{index}")
        v = ir.Value(name=name)
        v.dtype = value.dtype
        if value.shape is not None:
            v.shape = ir.Shape([d for i, d in enumerate(value.shape) if i != axis])
        self.graph.inputs.append(v)
        self.new_inputs.append(v)
        split.names.append(name)
        split.indices.append(index)
        self._io_values[(value.name, index)] = v
        return v

    def _record_const(self, value: ir.Value, piece: ir.Value, layout: Layout, sel) -> None:
        shape = tuple(int(d) for d in const_tensor(value).shape)
        for axis, (idx, _) in enumerate(sel):
            if idx is not None:
                self.record.params.append(ParamSlice(value.name, piece.name, axis, tuple(idx), shape))
                return
        self.record.params.append(ParamSlice(value.name, piece.name, -1, (), shape))

    # -- projections -----------------------------------------------------------------
    def _lazy_slice(self, name: str, source: ir.Value, indices: list[int], axis: int) -> ir.Value:
        """A per-head weight read from the source only when it is written (weights stay on
        disk until then: memory does not grow with the model)."""
        tensor = const_tensor(source)
        shape = list(tensor.shape)
        shape[axis] = len(indices)
        name = self._unique(name)
        lazy = derived_tensor(Take(tensor, indices, axis), shape, name)
        v = ir.Value(name=name, const_value=lazy)
        v.shape = ir.Shape(shape)
        v.dtype = tensor.dtype
        self.graph.register_initializer(v)
        return v

    def _emit_projection(self, proj: Projection, head: int) -> None:
        node, layout = proj.node, proj.layout
        idx = axis_indices(layout[proj.channel], self.space, head)
        tag = self._tag(layout, head)
        out_layout, _ = per_head_layout(layout, self.space)
        inputs = list(node.inputs)
        w_value = inputs[proj.weight_index]
        w_shape = tuple(int(d) for d in const_tensor(w_value).shape)
        op = node.op_type
        if op == "MatMul":
            w_axis = 1 if proj.weight_index == 1 else 0
        elif op == "Gemm":
            w_axis = 0 if attr(node, "transB", 0) else 1
        else:
            w_axis = 0
        role = f"{self.block.name}.{tag}.{proj.path}_proj" if proj.path in ("q", "k", "v") else f"{self.block.name}.{tag}.proj"
        role = self._unique(role)
        new_w = self._lazy_slice(f"{role}.weight", w_value, idx, w_axis)
        self.record.params.append(ParamSlice(w_value.name, new_w.name, w_axis, tuple(idx), w_shape))
        inputs[proj.weight_index] = new_w
        if op in ("Gemm", "Conv") and len(inputs) > 2 and inputs[2] is not None:
            bias = inputs[2]
            b = const_array(bias)
            if b is None:
                raise SplitError("projection bias computed at run time", node)
            if b.ndim >= 1 and b.shape[-1] > 1:
                b_axis = b.ndim - 1 if op == "Gemm" else 0
                new_b = self._const(f"{role}.bias", take(b, idx, b_axis))
                self.record.params.append(ParamSlice(bias.name, new_b.name, b_axis, tuple(idx), tuple(b.shape)))
                inputs[2] = new_b
        out = self._value(role, node.outputs[0], out_layout)
        attrs = {k: a for k, a in node.attributes.items()}
        self._node(op, inputs, attrs, role, [out], domain=node.domain)
        self._set_piece(node.outputs[0], layout, head, out)

    # -- cloned nodes ----------------------------------------------------------------
    def _emit_instance(self, inst: Instance, head: int) -> None:
        node = inst.node
        out_index, out_layout = next(iter(inst.outputs.items()))
        tag = self._tag(out_layout, head)
        if node.op_type in ("Concat", "Div", "Mul"):
            # RoPE: one MatMul, not Slice/Neg/Concat; the score scale folded into it.
            emit = rope.emit_rotate_half if node.op_type == "Concat" else rope.emit_scaled_scores
            rotated = emit(self, inst, head, tag)
            if rotated is not None:
                for idx, piece in rotated.items():
                    self._set_piece(node.outputs[idx], inst.outputs[idx], head, piece)
                return
        ins: list[ir.Value | None] = []
        for i, (v, lay) in enumerate(zip(node.inputs, inst.inputs)):
            if v is None or lay is None:
                ins.append(v)
            else:
                ins.append(self.piece(v, lay, head, keep_rank=i in inst.keep_rank))
        recipe = self._recipes.get(id(inst), False)
        if recipe:
            results = replay.replay(self, recipe, ins, f"{self.block.name}.{tag}.")
        else:
            results = self._run_handler(inst, ins, head, tag, record=recipe is False)
        for idx, piece in results.items():
            self._set_piece(node.outputs[idx], inst.outputs[idx], head, piece)

    def _run_handler(self, inst: Instance, ins: list, head: int, tag: str, *, record: bool) -> dict[int, ir.Value]:
        # A handler for the op itself, else the one for its kind in the op-axis table.
        op = inst.node.op_type
        handler = handlers.lookup(op, opaxes.kind_of(op))
        if not record:
            return handler(self, inst, ins, head, tag)
        outer = (self._recording, self._bases, self._replayable)
        self._recording, self._bases, self._replayable = [], {}, True
        emissions = self._emissions
        try:
            results = handler(self, inst, ins, head, tag)
            replayable = self._replayable and self._emissions == emissions
            recipe = replay.make_recipe(self._recording, self._bases, ins, results, f"{self.block.name}.{tag}.") if replayable else None
        finally:
            recorded_bases = self._bases
            self._recording, self._bases, self._replayable = outer
            if self._recording is not None:
                self._bases.update(recorded_bases)
        self._recipes[id(inst)] = recipe
        return results

    def _outputs_for(self, inst: Instance, head: int, tag: str) -> list[ir.Value]:
        outs = []
        for idx, original in enumerate(inst.node.outputs):
            layout = inst.outputs.get(idx)
            per, _ = per_head_layout(layout, self.space) if layout is not None else (None, None)
            outs.append(self._value(self._name(tag, original.name, f"{inst.node.op_type}_out"), original, per))
        return outs

    def _clone(self, inst: Instance, ins, head: int, tag: str, attrs: dict | None = None, extra_inputs=None) -> dict[int, ir.Value]:
        node = inst.node
        attributes = {k: a for k, a in node.attributes.items()}
        if attrs:
            for k, v in attrs.items():
                if v is None:
                    attributes.pop(k, None)
                else:
                    attributes[k] = v
        inputs = list(ins) if extra_inputs is None else extra_inputs
        same = self._same_node(node.op_type, node.domain, inputs, attributes)
        if same is not None:  # another head already computes this (K^T after a GQA repeat)
            return {idx: same.outputs[idx] for idx in inst.outputs}
        outs = self._outputs_for(inst, head, tag)
        made = self._node(node.op_type, inputs, attributes, f"{self.block.name}.{tag}.{node.name or node.op_type}", outs, domain=node.domain, version=node.version)
        self._remember_node(made)
        return {idx: outs[idx] for idx in inst.outputs}

    # One node per distinct (op, inputs, attributes): heads that read the same pieces (the
    # query heads of a kv group after repeat_kv) share the node instead of repeating it.
    _NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                                   "Multinomial", "Bernoulli", "Dropout"})

    def _node_key(self, op: str, domain: str, inputs, attributes) -> tuple | None:
        if op in self._NONDETERMINISTIC:
            return None
        items = attributes.items() if hasattr(attributes, "items") else ((a.name, a) for a in attributes)
        sig = []
        for name, a in items:  # ir.Attr, or a plain value set by a handler
            if isinstance(a, ir.Attr):
                if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.TENSOR):
                    return None
                a = a.value
            if not isinstance(a, int | float | str | list | tuple):
                return None
            sig.append((name, tuple(a) if isinstance(a, list | tuple) else a))
        return (op, domain, tuple(id(v) if v is not None else None for v in inputs), tuple(sorted(sig, key=lambda t: t[0])))

    def _same_node(self, op, domain, inputs, attributes) -> ir.Node | None:
        key = self._node_key(op, domain, inputs, attributes)
        return None if key is None else self.__dict__.setdefault("_cse", {}).get(key)

    def _remember_node(self, node: ir.Node) -> None:
        key = self._node_key(node.op_type, node.domain, node.inputs, node.attributes)
        if key is not None:
            self.__dict__.setdefault("_cse", {})[key] = node

    def _alias(self, inst: Instance, piece: ir.Value, index: int, tag: str) -> dict[int, ir.Value]:
        """A node that is the identity for one head. Its output is the input's piece, unless
        the original output was quantized differently from its input (an AIMET encoding on a
        Split or Transpose output): then an Identity keeps a tensor to carry that encoding,
        so that the quantizers stay the same chain as in the MHA model."""
        node = inst.node
        source = node.inputs[0]
        if self.requantized is None or source is None or not self.requantized(node.outputs[index].name, source.name):
            return {index: piece}
        out = self._value(self._name(tag, node.outputs[index].name, "requantized"), node.outputs[index], per_head_layout(inst.outputs[index], self.space)[0])
        self._node("Identity", [piece], None, f"{self.block.name}.{tag}.{node.name or node.op_type}", [out])
        return {index: out}

    # -- putting heads back together -------------------------------------------------
    def per_head_outputs(self, value: ir.Value, layout: Layout) -> IOSplit | None:
        """Expose one graph output per (kv) head instead of reassembling the whole."""
        carrying = [i for i, ax in enumerate(layout) if any(not a.broadcast for a in head_atoms((ax,), self.space))]
        _, removed = per_head_layout(layout, self.space)
        if len(carrying) != 1 or carrying != removed:
            return None
        axis = carrying[0]
        split = IOSplit(value.name, "output", axis, [], [])
        seen: set[tuple[int, ...]] = set()
        for h in range(self.space.num_heads):
            k = key_of(layout, self.space, h)
            if k in seen:
                continue
            seen.add(k)
            index = axis_indices(layout[axis], self.space, h)[0]
            piece = self.piece(value, layout, h)
            name = self._unique(f"{value.name}_h{index}")
            if piece.producer() in self._new and not piece.is_graph_output():
                # The head's tensor itself becomes the output, under the output's name.
                self.record.rename_piece(piece.name, name)
                piece.name = name
                out = piece
            else:
                out = self._value(name, value)
                self._node("Identity", [piece], None, f"{self.block.name}.{name}.output", [out])
            if value.shape is not None:
                out.shape = ir.Shape([d for i, d in enumerate(value.shape) if i != axis])
            split.names.append(name)
            split.indices.append(index)
        order = sorted(range(len(split.indices)), key=lambda i: split.indices[i])
        split.names = [split.names[i] for i in order]
        split.indices = [split.indices[i] for i in order]
        return split

    def reconstruct(self, value: ir.Value, layout: Layout) -> ir.Value:
        """Concatenate the heads' pieces into a tensor equal to the original ``value``."""
        carrying = [i for i, ax in enumerate(layout) if head_atoms((ax,), self.space) and any(not a.broadcast for a in head_atoms((ax,), self.space))]
        if not carrying:
            # Every head reads the same tensor (multi-query: the one kv head is only a broadcast
            # axis): it is computed once, and its removed unit axes are put back.
            _, removed = per_head_layout(layout, self.space)
            p = self.piece(value, layout, 0)
            if not removed:
                return p
            u = self._value(self._name("shared", value.name, "unsq") + ".unsqueezed", value)
            u.shape = value.shape
            self._node("Unsqueeze", [p, self._ints("shared", "axes", removed)], None, f"{self.block.name}.shared.Unsqueeze", [u])
            self.record.add_activation(value.name, u.name)
            return u
        if len(carrying) != 1:
            raise SplitError(f"cannot reassemble {value.name!r}: heads on {len(carrying)} axes", value.producer())
        axis = carrying[0]
        ax = layout[axis]
        if ax.is_window:
            raise SplitError(f"cannot reassemble a window of {value.name!r}", value.producer())
        _, removed = per_head_layout(layout, self.space)
        order: dict[tuple[int, ...], tuple[int, int]] = {}
        for h in range(self.space.num_heads):
            k = key_of(layout, self.space, h)
            if k not in order:
                idx = axis_indices(ax, self.space, h)
                order[k] = (idx[0], h)
        parts = []
        covered: list[int] = []
        for _first, h in sorted(order.values()):
            p = self.piece(value, layout, h)
            covered.extend(axis_indices(ax, self.space, h))
            if removed:
                tag = self._tag(layout, h)
                u = self._value(self._name(tag, value.name, "unsq") + ".unsqueezed", value)
                self._node("Unsqueeze", [p, self._ints(tag, "axes", removed)], None, f"{self.block.name}.{tag}.Unsqueeze", [u])
                self.record.add_activation(value.name, u.name)
                p = u
            parts.append(p)
        if covered != list(range(len(covered))) or (isinstance(ax.size, int) and len(covered) != ax.size):
            raise SplitError(f"heads do not tile {value.name!r}", value.producer())
        out = ir.Value(name=None)
        out.dtype = value.dtype
        out.shape = value.shape
        self._node("Concat", parts, {"axis": axis}, f"{self.block.name}.concat_heads", [out])
        return out


def _unsqueeze_axes(node: ir.Node) -> list[int] | None:
    axes = axes_of(node, len(dims(node.outputs[0]) or []))
    return None if axes is None else sorted(axes)
