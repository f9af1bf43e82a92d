"""Rotate-half RoPE per head is one MatMul by a signed permutation (mha2sha.split.rope).

Oracles: numpy's closed-form rotate_half for the matrix; onnxruntime on the MHA model and
refimpl's float64 run of it for the converted models; the converter's own verification
(float and simulated quantization) must pass as well."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import refimpl
from mha2sha.api import ConvertOptions, convert
from mha2sha.split.rope import rotation_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from llama_gen import generate  # noqa: E402


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


@pytest.mark.parametrize("size", [2, 8, 64, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rotation_matrix_is_rotate_half(size, dtype):
    x = np.random.default_rng(size).standard_normal((3, 5, size)).astype(dtype)
    r = rotation_matrix(size, np.dtype(dtype))
    assert r.dtype == dtype and set(np.unique(r)) <= {-1, 0, 1}
    assert np.array_equal(x @ r, _rotate_half(x))  # one signed entry per column: exact


def _feeds(seq: int, d: int, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, vocab, (1, seq)).astype(np.int64),
            "attention_mask": np.triu(np.full((seq, seq), -1e4, np.float32), 1)[None, None],
            "cos": rng.standard_normal((1, seq, d)).astype(np.float32),
            "sin": rng.standard_normal((1, seq, d)).astype(np.float32)}


def test_rope_per_head_is_one_matmul_and_the_model_is_unchanged(tmp_path):
    heads, kv_heads, layers, hidden, vocab = 8, 2, 2, 128, 64
    model = generate(tmp_path / "mha", layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, vocab=vocab)
    result = convert(model, tmp_path / "out", ConvertOptions())
    assert result.ok, result.report
    mha, sha = onnx.load(str(model)), onnx.load(str(result.model_path))
    ops = collections.Counter(n.op_type for n in sha.graph.node)
    assert ops["Neg"] == 0 and ops["Slice"] == 0, ops  # no Slice/Neg/Concat per head
    mha_divs = collections.Counter(n.op_type for n in mha.graph.node)["Div"]
    assert ops["Div"] == mha_divs - layers, ops  # the score scale folded into cos and R: no Div per head
    consts = {t.name for t in sha.graph.initializer}
    rotations = [n for n in sha.graph.node if n.op_type == "MatMul" and n.input[1] in consts and "rotate_half" in n.input[1]]
    assert len(rotations) == (heads + kv_heads) * layers  # once per query head, once per kv head
    # In all, SHA's RoPE is (1 MatMul + 2 Mul + Add) per head, MHA's 7 ops per q / k.
    feeds = _feeds(5, hidden // heads, vocab)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    truth = refimpl.run(mha, feeds, dtype=np.float64)["logits"]
    scale = max(1.0, float(np.abs(truth).max()))
    np.testing.assert_allclose(run(result.model_path), truth, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(run(model), truth, rtol=0, atol=1e-5 * scale)


def test_quantized_rope_is_rewritten_only_where_the_quantizers_allow(tmp_path):
    """llama2-tiny's bundled encodings tie q's Neg to its Concat (AIMET's Concat input
    quantizers) but give k's Neg an encoding of its own: q's rotation becomes a MatMul, k's
    stays Slice/Neg/Concat, and the simulated quantization still agrees (verification)."""
    import subprocess

    subprocess.run([sys.executable, "-m", "mha2sha", "example", "llama2-tiny", "-o", str(tmp_path / "in")], check=True,
                   capture_output=True)
    model, encodings = tmp_path / "in" / "llama2-tiny.onnx", tmp_path / "in" / "llama2-tiny.encodings"
    content = json.loads(encodings.read_text())
    acts = {a["name"]: (a["scale"], a["offset"]) for a in content["activation_encodings"]}
    m = onnx.load(str(model))
    readers = collections.defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            readers[i].append(n)
    tied = [acts.get(n.output[0]) == acts.get(readers[n.output[0]][0].output[0]) for n in m.graph.node if n.op_type == "Neg"]
    assert any(tied) and not all(tied)  # the example has both cases
    result = convert(model, tmp_path / "out", ConvertOptions(encodings=encodings))
    assert result.ok, result.report
    sha = onnx.load(str(result.model_path))
    heads = 4  # llama2-tiny: MHA, 4 heads, 2 layers
    untied = sum(1 for t in tied if not t)
    assert collections.Counter(n.op_type for n in sha.graph.node)["Neg"] == untied * heads
    consts = {t.name for t in sha.graph.initializer}
    rotations = [n for n in sha.graph.node if n.op_type == "MatMul" and n.input[1] in consts and "rotate_half" in n.input[1]]
    assert len(rotations) == (len(tied) - untied) * heads
