"""RoPE as one MatMul by a signed permutation per head (mha2sha.split.rope) on HTP: the SHA
model of a Llama-shaped decoder (bench/llama_gen.py: rotate-half RoPE with cos/sin inputs,
GQA) has no Slice/Neg/Concat per head, runs whole on HTP with CPU fallback disabled and
equals the MHA model there (bound: tests/htp/helpers); the preparer keeps fewer ops for it
than for the MHA model."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mha2sha import htp
from tests.htp import helpers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from llama_gen import generate  # noqa: E402

pytestmark = pytest.mark.htp


def _feeds(seq: int, d: int, vocab: int) -> dict:
    pos = np.arange(seq)[:, None] / (10000.0 ** (np.arange(0, d, 2) / d))[None]
    angles = np.concatenate([pos, pos], axis=-1)[None].astype(np.float32)
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, vocab, (1, seq)).astype(np.int64),
            "attention_mask": np.triu(np.full((seq, seq), -1e4, np.float32), 1)[None, None],
            "cos": np.cos(angles), "sin": np.sin(angles)}


def test_rope_matmul_form_runs_whole_on_htp_and_sha_equals_mha(tmp_path):
    hidden, heads, kv_heads, vocab, seq = 512, 8, 2, 128, 64
    model = generate(tmp_path / "mha", layers=1, hidden=hidden, heads=heads, kv_heads=kv_heads, vocab=vocab)
    sha = helpers.convert(model, tmp_path / "out")
    ops = collections.Counter(n.op_type for n in onnx.load(str(sha), load_external_data=False).graph.node)
    assert ops["Neg"] == 0 and ops["Slice"] == 0, ops
    feeds = _feeds(seq, hidden // heads, vocab)
    feeds, sha_feeds, specs = helpers.feeds_for(model, sha, feeds=feeds)
    mha_run = htp.run(model, feeds)
    helpers.assert_runs_whole(mha_run, "the MHA model")
    sha_run = htp.run(sha, sha_feeds)
    helpers.assert_runs_whole(sha_run, "the SHA model")
    helpers.assert_sha_equals_mha(mha_run.outputs, helpers.sha_in_mha_layout(sha_run.outputs, specs),
                                  helpers.cpu(model, feeds))
    assert sha_run.runlist <= mha_run.runlist, (sha_run.runlist, mha_run.runlist)
