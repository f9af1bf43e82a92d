"""opset-23 Attention split per head: a query row whose every key is masked (left padding)
gives the spec's zero row, as the original op does in onnxruntime and in the float64 refimpl.

The decomposition adds lowest (not -inf) for a False of a bool mask; without the per-block
"row attends some key" factor such a row became the average of the values (1.7 off) and a
float mask of all -inf gave NaN.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fuzz
import mha2sha
import refimpl


@pytest.mark.parametrize("past", [0, 2])
@pytest.mark.parametrize("mask", ["bool_input", "additive_input"])
def test_a_fully_masked_row_is_zero_in_every_head(tmp_path, mask, past):
    config = fuzz.AttentionConfig(attention_op=True, mask=mask, scaling="div_scores", batch=2, seq=3, heads=4,
                                  kv_heads=2, hidden=32, past=past, past_kv="full" if past else "none").validate()
    built = fuzz.build(config, seed=1)
    feeds = built.make_feeds(0)
    m = feeds["attention_mask"]
    if m.dtype == bool:
        m[0, ..., 1, :] = False  # batch 0, query row 1 attends no key
    else:
        m[0, ..., 1, :] = -np.inf
    onnx.save(built.model, tmp_path / "mha.onnx")
    result = mha2sha.convert(str(tmp_path / "mha.onnx"), output_dir=str(tmp_path / "out"))
    assert result.converted_blocks and result.ok
    sha_path = next((tmp_path / "out").glob("*.onnx"))
    names = [o.name for o in built.model.graph.output]
    mha = dict(zip(names, ort.InferenceSession(str(tmp_path / "mha.onnx")).run(names, feeds)))
    sha = dict(zip(names, ort.InferenceSession(str(sha_path)).run(names, feeds)))
    truth = refimpl.run(str(tmp_path / "mha.onnx"), feeds, dtype=np.float64)
    for name in names:
        assert not np.isnan(sha[name]).any(), name
        np.testing.assert_allclose(sha[name], mha[name], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(sha[name], truth[name], atol=1e-5, rtol=1e-5)
    # the SHA model computes one head per attention core: no multi-head Attention op is left
    sha_model = onnx.load(str(sha_path), load_external_data=False)
    assert not [n for n in sha_model.graph.node if n.op_type == "Attention"]
