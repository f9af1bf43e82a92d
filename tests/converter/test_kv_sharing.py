"""Query heads of one kv group share the kv head's work: K^T (and anything else computed
from the same pieces with the same attributes) is built once per kv head, not per query head.

Measured structurally on the converted graph; equivalence is the verifier's (the conversion
must pass) and onnxruntime's (SHA vs MHA)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from mha2sha.api import ConvertOptions, convert

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from llama_gen import generate  # noqa: E402


def _kt_producers(model: onnx.ModelProto) -> tuple[int, int]:
    """(QK MatMuls, distinct nodes producing their K operand)."""
    produced = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qk = [n for n in model.graph.node if n.op_type == "MatMul" and any(
        c.op_type in ("Div", "Mul", "Add", "Softmax") for c in consumers.get(n.output[0], []))
        and n.input[1] in produced and produced[n.input[1]].op_type == "Transpose"]
    return len(qk), len({id(produced[n.input[1]]) for n in qk})


def test_k_transposed_once_per_kv_head(tmp_path):
    heads, kv_heads, layers = 8, 2, 2
    model = generate(tmp_path / "mha", layers=layers, hidden=128, heads=heads, kv_heads=kv_heads, vocab=64)
    result = convert(model, tmp_path / "out", ConvertOptions())
    assert result.ok
    sha = onnx.load(str(result.model_path))
    qk, kt = _kt_producers(sha)
    assert qk == heads * layers and kt == kv_heads * layers, (qk, kt)
    rng = np.random.default_rng(0)
    seq, d = 5, 128 // heads
    feeds = {"input_ids": rng.integers(0, 64, (1, seq)).astype(np.int64),
             "attention_mask": np.triu(np.full((seq, seq), -1e4, np.float32), 1)[None, None],
             "cos": rng.standard_normal((1, seq, d)).astype(np.float32), "sin": rng.standard_normal((1, seq, d)).astype(np.float32)}
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    expected = run(model)
    np.testing.assert_allclose(run(result.model_path), expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
