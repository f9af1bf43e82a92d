"""Shape inference: ONNX's where it is complete, onnxruntime's symbolic inference on just the
nodes it is not.

Oracles: the shapes onnxruntime actually produces when it runs the model (every inferred
shape must agree with them, and a symbolic dimension must stand for one size throughout a
run), at two batch sizes; and, for a graph where nothing is ambiguous, onnxruntime's
symbolic inference of the whole graph (what the converter used before)."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from fuzz import AttentionConfig, build
from fuzz.builder.feeds import make_feeds
from mha2sha.graph.io import load_model
from mha2sha.passes import shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from llama_gen import generate  # noqa: E402


def _run_shapes(proto: onnx.ModelProto, feeds: dict) -> dict[str, tuple[int, ...]]:
    """Every node output's shape as onnxruntime computes it."""
    probe = copy.deepcopy(proto)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: np.shape(v) for n, v in zip(names, session.run(names, feeds))}


def _assert_agrees_with_runs(model: ir.Model, runs: list[dict[str, tuple[int, ...]]]) -> None:
    bindings: list[dict[str, int]] = [{} for _ in runs]
    checked = 0
    for node in model.graph:
        for out in node.outputs:
            if not out.name or out.name not in runs[0]:
                continue
            assert out.shape is not None, out.name
            dims = list(out.shape)
            for run, binding in zip(runs, bindings):
                actual = run[out.name]
                assert len(actual) == len(dims), (out.name, out.shape, actual)
                for d, size in zip(dims, actual):
                    if isinstance(d, int):
                        assert d == size, (out.name, out.shape, actual)
                    elif d.value is not None:
                        assert binding.setdefault(d.value, size) == size, (out.name, d.value, binding[d.value], size)
            checked += 1
    assert checked


def _unresolved_by_onnx(model: ir.Model) -> int:
    return len(shapes._unresolved(shapes._infos(shapes._onnx(shapes._proto_without_weights(model))), model))


def test_gqa_repeat_with_a_minus_one_target(tmp_path):
    """Reshape(x, [0, H, -1, D]) of the GQA repeat: ONNX cannot name the -1, so those
    nodes go to onnxruntime."""
    path = generate(tmp_path, layers=2, hidden=256, heads=8, kv_heads=2, intermediate=512, vocab=64)
    model = load_model(path).model
    model.graph.sort()
    assert _unresolved_by_onnx(model) > 0  # the case this test is about
    whole = shapes._symbolic(shapes._proto_without_weights(model))
    want = {name: str(shapes._to_ir_shape(vi.type)[0]) for name, vi in shapes._infos(whole).items()}
    shapes.infer_shapes(model)
    for node in model.graph:
        for out in node.outputs:
            assert str(out.shape) == want[out.name], out.name
    proto = onnx.load(path)
    runs = []
    for batch, seq in ((1, 3), (2, 5)):
        rng = np.random.default_rng(batch)
        feeds = {"input_ids": rng.integers(0, 64, (batch, seq)).astype(np.int64),
                 "attention_mask": np.zeros((batch, 1, seq, seq), np.float32),
                 "cos": rng.standard_normal((batch, seq, 32)).astype(np.float32),
                 "sin": rng.standard_normal((batch, seq, 32)).astype(np.float32)}
        runs.append(_run_shapes(proto, feeds))
    _assert_agrees_with_runs(model, runs)


@pytest.mark.parametrize("overrides", [
    dict(kv_heads=2, rope="rotate_half"),
    dict(kv_heads=2, gqa_repeat="tile", reshape_minus_one=True),
    dict(head_split="folded"),
    dict(mask="none", scaling="mul_q"),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_dynamic_fuzz_models(overrides):
    try:
        cfg = AttentionConfig(heads=4, dynamic=True, **overrides)
    except ValueError as exc:
        pytest.skip(f"not a valid configuration here: {exc}")
    built = build(cfg, seed=2)
    model = ir.serde.deserialize_model(onnx.load_from_string(built.model.SerializeToString()))
    model.graph.sort()
    shapes.infer_shapes(model)
    runs = [_run_shapes(built.model, make_feeds(dataclasses.replace(cfg, batch=b), seed=b)) for b in (1, 3)]
    _assert_agrees_with_runs(model, runs)
