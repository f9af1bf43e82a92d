"""Real exporter graphs: every attention block of tiny HF models converts and stays equivalent.

Oracle: onnxruntime on the original export (which torch produced, not our code).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import refimpl
from mha2sha.pipeline import split_model
from tests.converter.conftest import merge_outputs, sha_feeds
from tests.exporters.hf_models import cases, export

pytestmark = pytest.mark.exporters


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.id)
def test_export_converts_and_stays_equivalent(case, tmp_path):
    path = tmp_path / "model.onnx"
    feeds = export(case, path)
    original = onnx.load(path)
    names = {i.name for i in original.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in names}
    expected = _run(path, feeds)
    # The reference interpreter agrees with onnxruntime on the exporter's graph (float64).
    truth = refimpl.run(str(path), feeds, dtype=np.float64)
    for name, e in zip([o.name for o in original.graph.output], expected):
        np.testing.assert_allclose(truth[name], e, rtol=0, atol=1e-5 * max(1.0, float(np.abs(e).max())))

    model = ir.load(path)
    result = split_model(model)
    skipped = [(b.anchor, b.reason, b.stopped_at) for b in result.blocks if not b.converted]
    assert not skipped, skipped
    assert len(result.converted) == case.layers

    out = tmp_path / "sha.onnx"
    ir.save(model, out, external_data="sha.onnx.data")
    onnx.checker.check_model(str(out), full_check=True)
    converted = onnx.load(out, load_external_data=False)
    cores = sum(1 for n in converted.graph.node if n.op_type in ("Softmax", "Attention"))
    assert cores == sum(b.heads for b in result.converted)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    got_named = merge_outputs(dict(zip(names, sess.run(None, {k: v for k, v in sha_feeds(feeds, result).items() if k in wanted}))), result)
    got = [got_named[o.name] for o in original.graph.output]
    if case.decode:
        assert any(r.io_splits for r in result.records), "decode exports get per-head cache inputs/outputs"
    for e, g in zip(expected, got):
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * scale)
    # The converter's own verification agrees (per block and end to end).
    from mha2sha.api import ConvertOptions, convert

    verified = convert(path, tmp_path / "verified", ConvertOptions())
    failing = [b for b in verified.report["blocks"] if b["status"] != "pass"]
    assert verified.ok, (failing[:1], verified.report.get("end_to_end", {}).get("status"))


@pytest.mark.parametrize("case", [c for c in cases() if c.decode][:2], ids=lambda c: c.id)
def test_decode_export_with_head_major_cache_io(case, tmp_path):
    """--kv-cache-io head-major on a real decode export (per-head present outputs too): the
    converter's verification report passes end to end, and onnxruntime on the SHA model fed
    head-major caches equals the export once the presents are moved back."""
    from mha2sha.api import ConvertOptions, convert

    path = tmp_path / "model.onnx"
    feeds = export(case, path)
    original = onnx.load(path)
    names = {i.name for i in original.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in names}
    expected = dict(zip([o.name for o in original.graph.output], _run(path, feeds)))
    result = convert(path, tmp_path / "out", ConvertOptions(per_head_cache_io=True, head_major_cache_io=True))
    assert result.ok, result.report.get("end_to_end")
    moved = result.report["head_major_cache_io"]
    outputs = {o.name for o in original.graph.output}
    assert any(n in outputs for n in moved) and any(n in names for n in moved)
    sha = onnx.load(result.model_path)
    sha_shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(sha.graph.input) + list(sha.graph.output)}

    def head_axis(shape, sha_shape):
        return next(a for a in range(1, len(shape)) if [shape[a]] + shape[:a] + shape[a + 1:] == sha_shape)

    sha_feeds_ = {k: (np.moveaxis(v, head_axis(list(v.shape), sha_shapes[k]), 0) if k in moved else v) for k, v in feeds.items()}
    got = dict(zip([o.name for o in sha.graph.output], _run(result.model_path, sha_feeds_)))
    for name, e in expected.items():
        g = got[name]
        if name in moved:
            g = np.moveaxis(g, 0, head_axis(list(e.shape), list(g.shape)))
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * max(1.0, float(np.abs(e).max())))
