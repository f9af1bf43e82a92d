"""Helpers for the LLM-feature tests: run models, substitute initializers, find LoRA weights
by their values (from the fuzz parameters, never from the code under test)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from mha2sha.pipeline import split_model
from tests.converter.conftest import merge_outputs, run_ort, sha_feeds  # noqa: F401 - shared helpers


def substitute(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the named initializers replaced (names must exist)."""
    out = copy.deepcopy(model)
    found = set()
    for i, init in enumerate(out.graph.initializer):
        if init.name in values:
            new = numpy_helper.from_array(np.asarray(values[init.name]), init.name)
            assert tuple(new.dims) == tuple(init.dims) and new.data_type == init.data_type, init.name
            out.graph.initializer[i].CopyFrom(new)
            found.add(init.name)
    assert found == set(values), set(values) - found
    return out


def to_ir(model: onnx.ModelProto) -> ir.Model:
    """An onnx_ir model that shares nothing with ``model`` (deserializing shares the tensor
    protos, and renaming a value would rename the proto's tensor)."""
    return ir.serde.deserialize_model(onnx.load_from_string(model.SerializeToString()))


def split(model: onnx.ModelProto, **kwargs):
    ir_model = to_ir(model)
    result = split_model(ir_model, **kwargs)
    return ir_model, result


def lora_layout(cfg, array: np.ndarray, which: str) -> np.ndarray:
    """A fuzz LoraParams matrix (a [in, r] / b [r, out]) as the graph stores it."""
    if cfg.layout in ("nchw", "mha_conv"):
        return array.T.reshape(array.shape[1], array.shape[0], 1, 1)
    return array


def lora_initializers(built) -> dict[tuple[int, str, int, str], str]:
    """(layer, role, adaptor slot, "a"|"b") -> the initializer holding that fuzz parameter,
    found by value."""
    cfg = built.config
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in built.model.graph.initializer}
    out = {}
    for layer, lp in enumerate(built.params.layers):
        for role, adaptors in lp.lora.items():
            for k, p in enumerate(adaptors):
                for which, arr in (("a", p.a), ("b", p.b)):
                    want = lora_layout(cfg, arr, which)
                    hits = [n for n, v in inits.items() if v.shape == want.shape and np.array_equal(v, want)]
                    assert len(hits) == 1, (layer, role, k, which, hits)
                    out[(layer, role, k, which)] = hits[0]
    return out


def close(a: np.ndarray, b: np.ndarray, *, rtol: float, atol: float) -> bool:
    return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol))
