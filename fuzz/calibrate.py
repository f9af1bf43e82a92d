"""Observed value ranges of every float tensor of a model, from onnxruntime runs.

The calibrator behind ``fuzz.make_encodings``: AIMET computes activation encodings from
the min/max that each tensor takes on calibration data (``post_training_tf``); this does
the same with onnxruntime, every intermediate tensor exposed as an extra graph output.

Masks: a mask filled with -1e4 (or float32 min) gives a calibrated range so wide that every
score quantizes to one value (DESIGN.md, testing notes). Real flows calibrate with a
moderate fill, which is what ``moderate_fill`` reproduces: values at or below
``fill_threshold`` are taken as masked, left out of the observed minimum, and the minimum
is widened to ``moderate_fill`` instead. A masked score still quantizes to about
``moderate_fill``, whose softmax weight (e^-50) is zero in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort


@dataclass(frozen=True)
class Range:
    """What one tensor took over the calibration data."""

    min: float
    max: float
    masked: bool  # some values were mask fill (excluded from ``min``)


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with nodes in dependency order (built models may be shuffled on purpose)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or reads a tensor that nothing produces")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(ordered)
    return copy


def float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every float tensor that a node produces or the graph takes as input."""
    inferred = onnx.shape_inference.infer_shapes(topologically_sorted(model), strict_mode=False)
    types = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        types[info.name] = info.type.tensor_type.elem_type
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    initializers = {t.name for t in model.graph.initializer}
    produced = [o for n in model.graph.node for o in n.output if o]
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return {name: types[name] for name in [*inputs, *produced] if types.get(name) in floats}


def _exposed(model: onnx.ModelProto, names: Iterable[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (intermediates included)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    graph_inputs = {i.name for i in model.graph.input}
    for name in names:
        if name not in graph_inputs:  # inputs are read from the feeds instead
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    return exposed


def observe(model: onnx.ModelProto, feeds_list: Iterable[Mapping[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Values of every float tensor (inputs and node outputs) for each feed set."""
    types = float_tensor_types(model)
    exposed = _exposed(model, types, types)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    seen: dict[str, list[np.ndarray]] = {name: [] for name in types}
    for feeds in feeds_list:
        for name, value in zip(names, session.run(names, dict(feeds))):
            seen[name].append(np.asarray(value))
        for name in types:
            if name in feeds:
                seen[name].append(np.asarray(feeds[name]))
    return seen


def ranges(
    values: Mapping[str, list[np.ndarray]], *, fill_threshold: float | None, moderate_fill: float
) -> dict[str, Range]:
    """Min/max per tensor; see the module docstring for how mask fill is treated."""
    out = {}
    for name, arrays in values.items():
        flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(1)
        finite = flat[np.isfinite(flat)]
        if finite.size == 0:
            finite = np.zeros(1)
        masked = fill_threshold is not None and bool(np.any(flat <= fill_threshold))
        if masked:
            kept = finite[finite > fill_threshold]
            lo = min(float(kept.min()) if kept.size else 0.0, moderate_fill)
            hi = float(kept.max()) if kept.size else 0.0
        else:
            lo, hi = float(finite.min()), float(finite.max())
        out[name] = Range(lo, hi, masked)
    return out
