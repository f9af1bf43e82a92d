"""Property test of the converter over drawn attention models (the fuzz `ci` profile).

For every drawn model: every attention block is converted; the converted model computes
the closed-form reference (onnxruntime, float32 error) and, evaluated by refimpl in float64,
equals the float64 truth to 1e-9; there are exactly heads x blocks attention cores, and each
core computes exactly one head (its scores have B x S x T elements).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import refimpl
from fuzz import build
from fuzz.strategies import attention_configs
from tests.converter.conftest import convert_built, merge_outputs, run_ort, sha_feeds

CORES = ("Softmax", "Attention")


def _core_sizes(model: onnx.ModelProto, feeds: dict) -> list[int]:
    """Elements of each Softmax input (per-head scores), measured by running refimpl."""
    names = [n.input[0] for n in model.graph.node if n.op_type == "Softmax"]
    if not names:
        return []
    values = refimpl.run(model, feeds, outputs=names)
    return [values[n].size for n in names]


def _tile_groups_misaligned(cfg, m: int) -> bool:
    """Tile repeats kv heads as h % KV: a group of M query heads reads whole kv heads only
    when M is a multiple of KV or divides it."""
    tiled = cfg.gqa_repeat == "tile" and cfg.kv_heads < cfg.heads and not cfg.attention_op
    return tiled and m > 1 and m % cfg.kv_heads != 0 and cfg.kv_heads % m != 0


def check_conversion(cfg, heads_per_block: int = 1, seed: int = 3):
    built = build(cfg, seed=seed)
    feeds = built.make_feeds(11)
    truth = built.reference(feeds)
    converted, result = convert_built(built.model, heads_per_block=heads_per_block)
    if _tile_groups_misaligned(cfg, heads_per_block):
        assert result.blocks and all(not b.converted for b in result.blocks), "a misaligned AR-M grouping must be refused"
        return converted, result
    if cfg.heads == 1:
        # Nothing to split: every block is reported, the model is left as it was.
        assert result.blocks and all(not b.converted and "single head" in b.reason for b in result.blocks), [b.reason for b in result.blocks]
        return converted, result
    skipped = [(b.anchor, b.reason, b.stopped_at) for b in result.blocks if not b.converted]
    assert not skipped, skipped
    assert len(result.converted) == cfg.layers
    for b in result.converted:
        assert (b.heads, b.kv_heads, b.head_dim) == (cfg.heads, cfg.kv_heads, cfg.d)
    onnx.checker.check_model(converted, full_check=True)
    cores = [n for n in converted.graph.node if n.op_type in CORES]
    assert len(cores) == cfg.layers * cfg.heads // heads_per_block
    f2 = sha_feeds(feeds, result)
    got = merge_outputs(run_ort(converted, f2), result)
    tol = 3e-2 if cfg.dtype == "float16" else 3e-5
    for name, expected in truth.items():
        err = float(np.abs(got[name].astype(np.float64) - expected).max()) / max(1.0, float(np.abs(expected).max()))
        assert err < tol, f"{name}: relative error {err:.2e} > {tol}"
    # In float64 the rewrite must be exact up to constants folded in the model dtype (a run-time
    # sqrt(head dim) becomes a float32 constant): refimpl on the original and converted models.
    mha64 = refimpl.run(built.model, feeds, dtype=np.float64)
    sha64 = merge_outputs(refimpl.run(converted, f2, dtype=np.float64), result)
    exact_tol = 2e-3 if cfg.dtype == "float16" else 1e-6  # a folded constant is rounded to the model dtype
    for name, expected in mha64.items():
        err = float(np.abs(sha64[name] - expected).max()) / max(1.0, float(np.abs(expected).max()))
        assert err < exact_tol, f"{name}: float64 SHA differs from float64 MHA by {err:.2e}"
    if not cfg.attention_op:
        rows = cfg.seq + (cfg.text_len if cfg.joint_attention else 0)  # joint attention: both streams' queries
        per_core = cfg.batch * heads_per_block * rows * cfg.t
        assert all(size == per_core for size in _core_sizes(converted, f2)), "a core computes more than its heads"
    return converted, result


@given(attention_configs())
def test_converted_models_are_equivalent(cfg):
    note(repr(cfg))
    check_conversion(cfg)


@st.composite
def grouped(draw):
    cfg = draw(attention_configs(attention_op=False))
    group = cfg.heads // cfg.kv_heads
    options = [m for m in range(1, cfg.heads + 1) if cfg.heads % m == 0 and (m % group == 0 or group % m == 0) and m < cfg.heads]
    return cfg, draw(st.sampled_from(options or [1]))


@given(grouped())
def test_ar_m_groups_of_heads(case):
    cfg, m = case
    note(f"{cfg!r} heads_per_block={m}")
    if cfg.heads == 1:
        return
    check_conversion(cfg, heads_per_block=m)


def test_ar_m_refuses_groupings_that_split_a_kv_group():
    from fuzz import AttentionConfig

    built = build(AttentionConfig(heads=6, kv_heads=2, hidden=24), seed=0)
    _, result = convert_built(built.model, heads_per_block=2)  # kv groups of 3 cannot be cut in 2
    assert not result.converted
    assert "kv groups of 3" in result.blocks[0].reason
    _, result = convert_built(built.model, heads_per_block=4)
    assert "does not divide" in result.blocks[0].reason


# The attention patterns of the families in tests/exporters/families.py, each drawn with free
# sizes and every other axis: q/k/v selectors on a middle axis of a fused projection (Bloom,
# Falcon's grouped layout), probabilities folded into the batch after the softmax (Bloom
# TorchScript), multi-query by broadcasting with a cache (Falcon / BigCode), a q/k norm over
# the full projection width (OLMo-2; the RMSNormalization op at opset 23), joint attention over
# two streams concatenated on the sequence axis (SD3 MMDiT).
FAMILY_PATTERNS = {
    "middle_axis_qkv": dict(fused_qkv="gather_mid"),
    "grouped_qkv": dict(fused_qkv="grouped"),
    "probs_view": dict(probs_view=True, attention_op=False),
    "broadcast_mqa_cache": dict(gqa_repeat="mqa_broadcast", attention_op=False, past_kv=st.sampled_from(["full", "new_only", "full_transposed_key"])),
    "full_width_qk_norm": dict(qk_norm=True, qk_norm_full=True, target_opset=st.sampled_from([None, 18, 23])),
    "joint_attention": dict(joint_attention=True),
}


@pytest.mark.parametrize("pattern", sorted(FAMILY_PATTERNS))
def test_family_patterns_convert(pattern):
    @settings(max_examples=8)
    @given(attention_configs(**FAMILY_PATTERNS[pattern]))
    def check(cfg):
        note(repr(cfg))
        check_conversion(cfg)

    check()
