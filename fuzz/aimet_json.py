"""AIMET encodings JSON, versions 0.6.1, 1.0.0 and 2.0.0, written from the specification.

Sources: AIMET's encoding specification (Docs/techniques/encoding_spec.rst) and
/work/shared/AIMET_ENCODINGS.md (checked against aimet-onnx 2.42.0). Deliberately
independent of mha2sha.encodings: this is the producer the project's reader is tested
against.

Conventions written here (numeric form: refimpl.quant.QuantEncoding, real = (q + offset) * scale):
- 0.6.1: name -> list of entries (one per channel); ``is_symmetric`` the string "True"/"False";
  ``offset`` a float holding an integer; min = offset * scale, max = min + (2^bw - 1) * scale.
- 1.0.0: lists of entries with ``name``; scale / offset flat lists; per-block scales flattened
  channel-major as (out channels, in / block); LPBQ: ``bw`` is the decompressed width,
  ``compressed_bw`` the weight width, ``scale`` one float per channel, ``per_block_int_scale``
  flattened like per-block scales.
- 2.0.0: one ``encodings`` list in ONNX QuantizeLinear terms; activations unsigned
  (zero point = -offset), parameters signed (zero point = -offset - 2^(bw-1)), zero points
  omitted when all zero; per-block scales nested in the tensor's layout (block axis divided
  by the block size), ``axis`` the block axis; per-channel ``axis`` the channel axis; float
  tensors get no entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.quant import QuantEncoding

VERSIONS = ("0.6.1", "1.0.0", "2.0.0")

# What aimet-onnx writes as its producer (2.0.0 files always carry one).
PRODUCER = {"package": "aimet-onnx", "version": "2.42.0"}


@dataclass(frozen=True)
class Entry:
    name: str
    enc: QuantEncoding
    is_activation: bool
    shape: tuple[int, ...] | None = None  # parameter shape, needed for 2.0.0 per-block nesting
    lpbq: dict | None = None  # {"int": (C, n_blocks), "float": (C,), "decompressed_bw": int}


def _floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, np.float32).ravel()]


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).ravel()]


def _kind(enc: QuantEncoding, lpbq: dict | None) -> str:
    if enc.dtype == "float":
        return "FLOAT"
    if lpbq is not None:
        return "LPBQ"
    if enc.block_size:
        return "PER_BLOCK"
    return "PER_CHANNEL" if np.ndim(enc.scale) == 1 else "PER_TENSOR"


# -- 0.6.1 -----------------------------------------------------------------------------------


def _v061_entries(enc: QuantEncoding) -> list[dict]:
    if enc.dtype == "float":
        return [{"bitwidth": enc.bitwidth, "dtype": "float"}]
    if enc.block_size:
        raise ValueError("AIMET 0.6.1 has no per-block or LPBQ encodings")
    scales = np.atleast_1d(np.asarray(enc.scale, np.float32))
    offsets = np.atleast_1d(np.asarray(enc.offset, np.float32))
    levels = 2**enc.bitwidth - 1
    out = []
    for s, o in zip(scales, offsets):
        lo = float(o) * float(s)
        out.append({
            "bitwidth": enc.bitwidth,
            "dtype": "int",
            "is_symmetric": str(bool(enc.symmetric)),
            "max": lo + levels * float(s),
            "min": lo,
            "offset": float(o),
            "scale": float(s),
        })
    return out


def _v061(entries: list[Entry], quantizer_args: dict) -> dict:
    args = {k: (str(v) if isinstance(v, bool) else v) for k, v in quantizer_args.items()}
    return {
        "version": "0.6.1",
        "activation_encodings": {e.name: _v061_entries(e.enc) for e in entries if e.is_activation},
        "param_encodings": {e.name: _v061_entries(e.enc) for e in entries if not e.is_activation},
        "quantizer_args": args,
    }


# -- 1.0.0 -----------------------------------------------------------------------------------


def _v100_entry(e: Entry) -> dict:
    kind = _kind(e.enc, e.lpbq)
    if kind == "FLOAT":
        return {"name": e.name, "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": e.enc.bitwidth}
    entry = {"name": e.name, "dtype": "INT", "enc_type": kind, "bw": e.enc.bitwidth, "is_sym": bool(e.enc.symmetric)}
    if kind == "LPBQ":
        channel_scale = np.asarray(e.lpbq["float"], np.float32)
        decompressed = int(e.lpbq["decompressed_bw"])
        entry.update(
            bw=decompressed,
            compressed_bw=e.enc.bitwidth,
            scale=_floats(channel_scale),
            offset=[-(2 ** (decompressed - 1))] * channel_scale.size,
            per_block_int_scale=_ints(e.lpbq["int"]),
            block_size=e.enc.block_size,
        )
        return entry
    entry.update(scale=_floats(e.enc.scale), offset=_ints(e.enc.offset))
    if kind == "PER_BLOCK":
        entry["block_size"] = e.enc.block_size
    return entry


def _v100(entries: list[Entry], quantizer_args: dict, excluded_layers: list[str]) -> dict:
    doc = {
        "version": "1.0.0",
        "activation_encodings": [_v100_entry(e) for e in entries if e.is_activation],
        "param_encodings": [_v100_entry(e) for e in entries if not e.is_activation],
        "quantizer_args": dict(quantizer_args),
    }
    if excluded_layers:
        doc["excluded_layers"] = list(excluded_layers)
    return doc


# -- 2.0.0 -----------------------------------------------------------------------------------


def _nested(per_channel_block: np.ndarray, enc: QuantEncoding, shape: tuple[int, ...]) -> np.ndarray:
    """(C, n_blocks) values laid out like the tensor: channel axis C, block axis n_blocks, 1 elsewhere."""
    ndim = len(shape)
    axis, baxis = enc.axis % ndim, enc.block_axis % ndim
    arr = per_channel_block if axis < baxis else per_channel_block.T
    target = [1] * ndim
    target[axis], target[baxis] = per_channel_block.shape[0], per_channel_block.shape[1]
    return arr.reshape(target)


def _dtype_name(enc: QuantEncoding, signed: bool) -> str:
    return f"{'int' if signed else 'uint'}{enc.bitwidth}"


def _v200_entry(e: Entry) -> dict:
    enc = e.enc
    signed = not e.is_activation
    entry: dict = {"name": e.name, "output_dtype": _dtype_name(enc, signed)}
    offset = np.asarray(enc.offset, np.float64)
    zero_point = -offset - (2 ** (enc.bitwidth - 1) if signed else 0)
    if e.lpbq is not None:
        ints = np.asarray(e.lpbq["int"], np.int64)
        entry["per_block_int_scale"] = _nested(ints, enc, e.shape).tolist()
        channel = np.asarray(e.lpbq["float"], np.float32)[:, None]
        entry["per_channel_float_scale"] = _nested(channel, enc, e.shape).astype(np.float64).tolist()
        entry.update(axis=enc.block_axis % len(e.shape), block_size=enc.block_size)
        return entry
    if enc.block_size:
        scale = _nested(np.asarray(enc.scale, np.float32), enc, e.shape)
        entry["y_scale"] = scale.astype(np.float64).tolist()
        if np.any(zero_point):
            entry["y_zero_point"] = _nested(zero_point, enc, e.shape).astype(np.int64).tolist()
        entry.update(axis=enc.block_axis % len(e.shape), block_size=enc.block_size)
        return entry
    if np.ndim(enc.scale) == 0:
        entry["y_scale"] = float(np.float32(enc.scale))
        if zero_point != 0:
            entry["y_zero_point"] = int(zero_point)
        return entry
    entry["y_scale"] = _floats(enc.scale)
    if np.any(zero_point):
        entry["y_zero_point"] = _ints(zero_point.astype(np.int64))
    entry["axis"] = int(enc.axis)  # stored non-negative by fuzz.quant_plan
    return entry


def _v200(entries: list[Entry]) -> dict:
    return {
        "version": "2.0.0",
        "producer": dict(PRODUCER),
        "encodings": [_v200_entry(e) for e in entries if e.enc.dtype != "float"],
    }


def document(version: str, entries: list[Entry], *, scheme: dict, excluded_layers: list[str]) -> dict:
    """The JSON document of ``entries`` in AIMET ``version``; ``scheme`` is quantizer_args."""
    if version == "0.6.1":
        return _v061(entries, scheme)
    if version == "1.0.0":
        return _v100(entries, scheme, excluded_layers)
    if version == "2.0.0":
        return _v200(entries)
    raise ValueError(f"unknown AIMET encodings version {version!r}; one of {VERSIONS}")
