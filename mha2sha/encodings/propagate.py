"""Carry the MHA model's encodings onto the SHA model, following the conversion ledger.

- A tensor that keeps its name keeps its encoding (the merged attention output, every
  tensor outside the blocks).
- Each head's piece of an activation takes the whole tensor's encoding: a slice of a
  per-tensor-encoded tensor quantizes identically.
- Each head's slice of a weight or bias takes the same channels of its per-channel /
  per-block / LPBQ encoding (per-tensor ones are copied).
- Tensors created only for layout (the Conv detour of linear->conv, an Unsqueeze before a
  head Concat) inherit the encoding of the MHA tensor they stand for.
- A weight relaid out for Conv keeps its name; its stored axis (2.x) moves.
Every input encoding is accounted for in the summary: kept, copied, sliced, or dropped with
the reason; names absent from the input model are listed too.
"""

from __future__ import annotations

import copy

import onnx_ir as ir

from mha2sha.encodings.layout import ModelView, channel_axis_of
from mha2sha.encodings.model import EncodingSet
from mha2sha.ledger import Ledger


def _names(model: ir.Model) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {v.name: v for v in model.graph.inputs}
    values.update(model.graph.initializers)
    for node in model.graph:
        for out in node.outputs:
            values[out.name] = out
    return values


def propagate(encodings: EncodingSet, original: ir.Model, converted: ir.Model, ledger: Ledger) -> tuple[EncodingSet, dict]:
    """The SHA model's encodings and a summary of what happened to each input entry
    (a function of the two models and the ledger of the conversion, mha2sha.ledger)."""
    before = _names(original)
    after = _names(converted)
    original_view = ModelView(original)
    out = EncodingSet(encodings.version, {}, copy.deepcopy(encodings.top), encodings.source, encodings.key_order)
    summary: dict[str, list] = {"kept": [], "copied": [], "sliced": [], "relaid_out": [], "dropped": [], "absent_from_model": []}
    work = EncodingSet(encodings.version, {name: enc.copy() for name, enc in encodings.tensors.items()}, {}, encodings.source)

    def place(name: str) -> None:
        out.tensors[name] = work.tensors[name]

    slices = ledger.weight_slices()  # by source
    pieces = ledger.pieces()  # every stage's, the split's first

    for name in list(encodings.tensors):
        enc = encodings.tensors[name]
        if name not in before:
            summary["absent_from_model"].append(name)
        handled = False
        if name in after:
            place(name)
            summary["kept"].append(name)
            handled = True
        for ps in slices.get(name, []):
            if ps.target not in after:
                continue
            rank = len(ps.source_shape)
            channel_axis = enc.channel_axis if enc.channel_axis is not None else (channel_axis_of(name, original_view) if name in before else 0)
            if enc.kind in ("per_tensor", "float") or ps.axis < 0:
                work.copy(name, ps.target)
                summary["copied"].append((name, ps.target))
            elif ps.axis % rank == channel_axis % rank:
                work.take(name, ps.target, ps.indices, channels=ps.source_shape[channel_axis % rank])
                summary["sliced"].append((name, ps.target))
            else:
                # Sliced along another axis: every channel is still there.
                work.copy(name, ps.target)
                summary["copied"].append((name, ps.target))
            place(ps.target)
            handled = True
        for piece in pieces.get(name, []):
            # A piece that is a tensor of the input model with its own entry keeps that entry.
            if piece in after and piece not in out.tensors and piece not in encodings.tensors:
                work.copy(name, piece)
                place(piece)
                summary["copied"].append((name, piece))
                handled = True
        if not handled:
            reason = "the tensor is not in the input model" if name not in before else "the split removed the tensor and nothing stands for it"
            summary["dropped"].append((name, reason))
    # Pieces of pieces: linear->conv layout tensors of per-head outputs.
    for source, new in ledger.pieces("linear_to_conv").items():
        if source in out.tensors:
            for piece in new:
                if piece in after and piece not in out.tensors:
                    work.copy(source, piece)
                    place(piece)
                    summary["copied"].append((source, piece))
    for relayout in ledger.relayouts().values():
        new_name = relayout.target
        if new_name in out.tensors and new_name in after and after[new_name].const_value is not None:
            rank = len(after[new_name].const_value.shape)
            out.tensors[new_name] = work.move_channel_axis(new_name, relayout.new_axis, rank=rank)
            summary["relaid_out"].append(new_name)
    # Head merges: a Concat of per-head pieces that all carry one encoding gets it too, unless
    # it has its own. Quantizing values already on that grid changes nothing (numerically the
    # MHA chain), and AIMET ties a Concat's input quantizers to its output's: without it,
    # loading these encodings into aimet-onnx would switch the per-head quantizers off.
    all_pieces = {p for new in pieces.values() for p in new}
    summary["merges"] = []
    for node in converted.graph:
        if node.op_type != "Concat" or not node.outputs or node.outputs[0].name in out.tensors:
            continue
        names = [v.name for v in node.inputs if v is not None]
        if len(names) < 2 or not all(n in all_pieces and n in out.tensors for n in names):
            continue
        first = out.tensors[names[0]]
        if all(_same_quantization(first, out.tensors[n]) for n in names[1:]):
            out.tensors[node.outputs[0].name] = first.copy()
            summary["merges"].append((names[0], node.outputs[0].name))
    counts = {k: len(v) for k, v in summary.items()}
    report = {"counts": counts, **{k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in summary.items() if k in ("dropped", "absent_from_model")}}
    return out, report


def _same_quantization(a, b) -> bool:
    """Whether two entries quantize identically (per-tensor activations of one MHA tensor)."""
    import numpy as np

    if (a.kind, a.bitwidth, a.dtype, getattr(a, "symmetric", None)) != (b.kind, b.bitwidth, b.dtype, getattr(b, "symmetric", None)):
        return False
    for field in ("scale", "offset", "min", "max"):
        x, y = getattr(a, field, None), getattr(b, field, None)
        if (x is None) != (y is None) or (x is not None and not np.array_equal(np.asarray(x), np.asarray(y))):
            return False
    return True
