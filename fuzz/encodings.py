"""Random AIMET encodings for a built model: calibrated, in the numeric form and as a file.

``make_encodings(built, version=..., seed=...)`` places quantizers where aimet-onnx does
(fuzz.quant_plan), calibrates activation ranges on random feeds with onnxruntime
(fuzz.calibrate), computes each encoding with refimpl's AIMET arithmetic, and writes the
AIMET JSON of the requested version (fuzz.aimet_json, written from the format
specification, independent of mha2sha.encodings so that the project's reader is tested
against an independent producer).

The result carries both forms: ``.content`` is the JSON document, ``.quant`` the
``refimpl.quant.QuantEncoding`` of every tensor the file encodes (channel and block axes
known), ready for ``refimpl.run(model, feeds, encodings=enc.quant)``. The two describe the
same numbers: what the file says is what ``.quant`` simulates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fuzz.aimet_json import VERSIONS, Entry, document
from fuzz.calibrate import float_tensor_types, observe, ranges
from fuzz.quant_plan import DATA_MOVEMENT, QuantPlan, Weight, plan
from refimpl.quant import QuantEncoding, compute_encoding

WEIGHT_KINDS = ("per_tensor", "per_channel", "per_block", "lpbq")


@dataclass(frozen=True)
class EncodingScheme:
    """How a model is quantized. ``"mixed"`` draws per tensor, from the seed."""

    activation_bitwidth: int | str = 8  # 8, 16 or "mixed"
    activation_symmetric: bool = False
    weights: str = "per_channel"  # one of WEIGHT_KINDS or "mixed"
    weight_bitwidth: int = 8  # per-tensor / per-channel: 4 or 8 (per-block and LPBQ use 4)
    weight_symmetric: bool = True  # asymmetric only for per-tensor / per-channel
    block_size: int = 4  # weights whose input channels it does not divide fall back to per-channel
    lpbq_decompressed_bitwidth: int = 8
    other_params: bool = True  # norm weights, per-head biases, RoPE tables
    bias: bool = True  # int32 bias encodings (scale = input scale x weight scale)
    float16_fraction: float = 0.0  # activations given a float16 entry instead
    data_movement_outputs: bool | None = None  # Reshape/Transpose/... outputs; None: 2.0.0 only
    group_matmul_add: bool = True  # a MatMul followed by its bias Add: no MatMul output encoding
    exclude_masks: bool = True  # float mask inputs get no encoding
    exclude_nodes: int = 0  # nodes left unquantized, listed in 1.0.0 excluded_layers
    calibration_batches: int = 3
    moderate_fill: float = -50.0  # the mask fill the ranges are calibrated as (DESIGN.md)

    def validate(self, version: str) -> EncodingScheme:
        if version not in VERSIONS:
            raise ValueError(f"unknown AIMET encodings version {version!r}; one of {VERSIONS}")
        if self.activation_bitwidth not in (8, 16, "mixed"):
            raise ValueError("activation_bitwidth is 8, 16 or 'mixed'")
        if self.weights not in (*WEIGHT_KINDS, "mixed"):
            raise ValueError(f"weights is one of {WEIGHT_KINDS} or 'mixed'")
        if self.weight_bitwidth not in (4, 8, 16):
            raise ValueError("weight_bitwidth is 4, 8 or 16")
        if version == "0.6.1" and self.weights in ("per_block", "lpbq"):
            raise ValueError("AIMET 0.6.1 has no per-block or LPBQ encodings")
        if not self.weight_symmetric and self.weights in ("per_block", "lpbq"):
            raise ValueError("per-block and LPBQ encodings are symmetric")
        if self.block_size < 1:
            raise ValueError("block_size must be positive")
        return self


@dataclass(frozen=True)
class AimetEncodings:
    """One AIMET encodings file for one model, in both forms (see the module docstring)."""

    version: str
    content: dict
    quant: Mapping[str, QuantEncoding]
    activations: frozenset[str]  # names in .quant that are activations (the rest are params)
    excluded_layers: tuple[str, ...] = ()
    scheme: EncodingScheme = field(default_factory=EncodingScheme)
    calibration_seeds: tuple[int, ...] = ()  # built.make_feeds(seed) for each: the ranges' data

    def write(self, path) -> Path:
        return write_encodings(self, path)

    @property
    def params(self) -> frozenset[str]:
        return frozenset(self.quant) - self.activations


def write_encodings(encodings: AimetEncodings | dict, path) -> Path:
    """Write the JSON document (an AimetEncodings or its ``.content``) to ``path``."""
    content = encodings.content if isinstance(encodings, AimetEncodings) else encodings
    path = Path(path)
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


# -- numeric encodings -------------------------------------------------------------------------


def _positive(axis: int, ndim: int) -> int:
    return axis % ndim


def _per_channel_minmax(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    moved = np.moveaxis(values.astype(np.float64), axis, 0).reshape(values.shape[axis], -1)
    return moved.min(axis=1), moved.max(axis=1)


def _block_absmax(w: Weight, block_size: int) -> np.ndarray:
    """absmax per (channel, block) of a weight: shape (C, in / block_size)."""
    values = np.abs(w.values.astype(np.float64))
    moved = np.moveaxis(values, (w.channel_axis, w.block_axis), (0, 1))
    channels, inputs = moved.shape[:2]
    blocks = moved.reshape(channels, inputs // block_size, block_size, -1)
    return blocks.max(axis=(2, 3))


def _can_block(w: Weight, block_size: int) -> bool:
    inputs = w.values.shape[w.block_axis]
    return inputs % block_size == 0 and inputs // block_size >= 2


def weight_encoding(w: Weight, kind: str, scheme: EncodingScheme) -> tuple[QuantEncoding, dict]:
    """The encoding of one weight and, for LPBQ, its stored parts (int block scales, float
    channel scales, decompressed bitwidth)."""
    axis, baxis = _positive(w.channel_axis, w.values.ndim), _positive(w.block_axis, w.values.ndim)
    if kind in ("per_block", "lpbq") and not _can_block(w, scheme.block_size):
        kind = "per_channel"
    if kind == "per_tensor":
        values = w.values.astype(np.float64)
        enc = compute_encoding(values.min(), values.max(), bitwidth=scheme.weight_bitwidth, symmetric=scheme.weight_symmetric)
        return enc, {}
    if kind == "per_channel":
        lo, hi = _per_channel_minmax(w.values, axis)
        enc = compute_encoding(lo, hi, bitwidth=scheme.weight_bitwidth, symmetric=scheme.weight_symmetric, axis=axis)
        return enc, {}
    absmax = _block_absmax(w, scheme.block_size)
    bits = 4
    if kind == "per_block":
        base = compute_encoding(-absmax, absmax, bitwidth=bits, symmetric=True)
        enc = QuantEncoding("int", bits, True, base.scale, base.offset, axis, baxis, scheme.block_size)
        return enc, {}
    # LPBQ: block scales are an integer (1 .. 2^(decompressed - compressed)) times a per-channel
    # float scale. Rounded up so that every block's range still covers its absmax.
    block_scale = np.maximum(absmax / (2 ** (bits - 1) - 1), np.finfo(np.float32).tiny)
    levels = 2 ** (scheme.lpbq_decompressed_bitwidth - bits)
    channel_scale = (block_scale.max(axis=1) / levels).astype(np.float32)
    ints = np.clip(np.ceil(block_scale / channel_scale[:, None].astype(np.float64) - 1e-9), 1, levels).astype(np.int64)
    effective = ints.astype(np.float32) * channel_scale[:, None]
    offset = np.full(effective.shape, -(2 ** (bits - 1)), np.float32)
    enc = QuantEncoding("int", bits, True, effective, offset, axis, baxis, scheme.block_size)
    return enc, {"int": ints, "float": channel_scale, "decompressed_bw": scheme.lpbq_decompressed_bitwidth}


def _layer_scale(enc: QuantEncoding, channels: int) -> np.ndarray:
    """One scale per output channel (the largest block scale for blocked encodings)."""
    scale = np.asarray(enc.scale, np.float64)
    if scale.ndim == 0:
        return np.full(channels, float(scale))
    return scale.max(axis=1) if scale.ndim == 2 else scale


def bias_encoding(values: np.ndarray, input_enc: QuantEncoding | None, weight_enc: QuantEncoding) -> QuantEncoding:
    """int32 symmetric, scale = input activation scale x weight scale (per channel)."""
    channels = values.size
    if input_enc is not None and input_enc.dtype == "int" and np.ndim(input_enc.scale) == 0:
        scale = float(input_enc.scale) * _layer_scale(weight_enc, channels)
    else:  # no integer input encoding to derive from: calibrate the bias itself
        absmax = np.abs(values.astype(np.float64)).reshape(channels)
        scale = np.maximum(absmax, np.finfo(np.float32).tiny) / (2**31 - 1)
    scale = scale.astype(np.float32)
    return QuantEncoding("int", 32, True, scale, np.full(channels, -(2.0**31), np.float32), 0)


def _float16() -> QuantEncoding:
    return QuantEncoding("float", 16, False, np.zeros((), np.float32), np.zeros((), np.float32))


def _activation_encoding(lo: float, hi: float, bitwidth: int, symmetric: bool) -> QuantEncoding:
    enc = compute_encoding(lo, hi, bitwidth=bitwidth, symmetric=symmetric)
    # -round(0) is -0.0: store a plain zero offset (softmax outputs have offset 0).
    return replace(enc, offset=np.asarray(enc.offset + 0.0, np.float32))


# -- the whole model ------------------------------------------------------------------------------


def _mask_threshold(built) -> float | None:
    """Values at or below this are mask fill (a fill of -1e4 -> -500); None if moderate."""
    fill = float(getattr(built.config, "mask_fill", -1.0e4))
    return fill / 20.0 if abs(fill) >= 1000.0 else None


def make_encodings(built, *, version: str = "1.0.0", seed: int = 0, scheme: EncodingScheme | None = None, **options) -> AimetEncodings:
    """Calibrated random AIMET encodings of ``built.model`` (a fuzz.BuiltModel).

    ``scheme`` (or its fields as keyword arguments) says how; ``seed`` draws the calibration
    feeds and every "mixed" choice. See EncodingScheme for the options.
    """
    scheme = replace(scheme or EncodingScheme(), **options).validate(version)
    rng = np.random.default_rng(seed)
    model = built.model
    types = float_tensor_types(model)
    qplan = plan(model, list(types))
    seeds = tuple(seed * 1000 + 17 + k for k in range(scheme.calibration_batches))
    feeds = [built.make_feeds(s) for s in seeds]
    threshold = _mask_threshold(built)
    observed = ranges(observe(model, feeds), fill_threshold=threshold, moderate_fill=scheme.moderate_fill)

    excluded = _pick_excluded(qplan, rng, scheme.exclude_nodes)
    quant: dict[str, QuantEncoding] = {}
    lpbq_parts: dict[str, dict] = {}
    activations = set()
    graph_inputs = {i.name for i in model.graph.input}

    data_movement = scheme.data_movement_outputs if scheme.data_movement_outputs is not None else version == "2.0.0"
    for act in qplan.activations:
        r = observed[act.name]
        if act.node in excluded:
            continue
        if act.name in graph_inputs and scheme.exclude_masks and (r.masked or _is_mask_input(act.name)):
            continue
        if act.producer_op in DATA_MOVEMENT and not data_movement:
            continue
        if act.feeds_bias_add and scheme.group_matmul_add:
            continue
        activations.add(act.name)
        if scheme.float16_fraction and rng.random() < scheme.float16_fraction:
            quant[act.name] = _float16()
            continue
        bits = scheme.activation_bitwidth if scheme.activation_bitwidth != "mixed" else int(rng.choice([8, 16]))
        symmetric = scheme.activation_symmetric and act.producer_op != "Softmax"
        quant[act.name] = _activation_encoding(r.min, r.max, bits, symmetric)

    weight_kinds = [k for k in WEIGHT_KINDS if version != "0.6.1" or k in ("per_tensor", "per_channel")]
    for w in qplan.weights:
        if w.node in excluded:
            continue
        kind = scheme.weights if scheme.weights != "mixed" else str(rng.choice(weight_kinds))
        if kind in ("per_block", "lpbq") and not scheme.weight_symmetric:
            kind = "per_channel"
        enc, parts = weight_encoding(w, kind, scheme)
        quant[w.name] = enc
        if parts:
            lpbq_parts[w.name] = parts
    weights_by_name = {w.name: w for w in qplan.weights}
    if scheme.bias:
        for b in qplan.biases:
            w = weights_by_name[b.weight]
            if w.name in quant:
                quant[b.name] = bias_encoding(b.values, quant.get(w.layer_input), quant[w.name])
    if scheme.other_params:
        for p in qplan.others:
            values = p.values.astype(np.float64)
            if p.node in excluded or (threshold is not None and values.min() <= threshold):
                continue  # mask constants stay float, like the mask inputs
            quant[p.name] = compute_encoding(values.min(), values.max(), bitwidth=8, symmetric=True)

    if version == "2.0.0":  # plain float tensors get no entry in 2.0.0
        quant = {k: v for k, v in quant.items() if v.dtype != "float"}
    activations &= set(quant)
    shapes = {w.name: w.values.shape for w in qplan.weights}
    entries = [
        Entry(name, enc, name in activations, shapes.get(name), lpbq_parts.get(name))
        for name, enc in quant.items()
    ]
    content = document(version, entries, scheme=_quantizer_args(scheme), excluded_layers=sorted(excluded))
    return AimetEncodings(version, content, quant, frozenset(activations), tuple(sorted(excluded)), scheme, seeds)


def _is_mask_input(name: str) -> bool:
    # The builder's own input name: a mask may be all zeros on a short sequence, so the
    # value test alone cannot find it.
    return "mask" in name


def _pick_excluded(qplan: QuantPlan, rng: np.random.Generator, count: int) -> set[str]:
    if not count:
        return set()
    candidates = sorted({a.node for a in qplan.activations if a.node})
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return {candidates[int(k)] for k in picked}


def _quantizer_args(scheme: EncodingScheme) -> dict:
    return {
        "activation_bitwidth": 16 if scheme.activation_bitwidth == 16 else 8,
        "dtype": "int",
        "is_symmetric": scheme.weight_symmetric,
        "param_bitwidth": scheme.weight_bitwidth,
        "per_channel_quantization": scheme.weights != "per_tensor",
        "quant_scheme": "post_training_tf",
    }

