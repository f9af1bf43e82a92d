"""Helpers shared by converter tests: convert a built model and run both sides."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from mha2sha.pipeline import SplitResult, split_model


def convert_built(model: onnx.ModelProto, **kwargs) -> tuple[onnx.ModelProto, SplitResult]:
    ir_model = ir.serde.deserialize_model(model)
    result = split_model(ir_model, **kwargs)
    return ir.serde.serialize_model(ir_model), result


def sha_feeds(feeds: dict, result: SplitResult) -> dict:
    out = dict(feeds)
    for record in result.records:
        for name, split in record.io_splits.items():
            if split.kind == "input":
                for piece, index in zip(split.names, split.indices):
                    out[piece] = np.take(feeds[name], index, axis=split.axis)
    return out


def merge_outputs(values: dict, result: SplitResult) -> dict:
    out = dict(values)
    for record in result.records:
        for name, split in record.io_splits.items():
            if split.kind == "output":
                out[name] = np.stack([values[n] for n in split.names], axis=split.axis)
    return out


def run_ort(model: onnx.ModelProto, feeds: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))
