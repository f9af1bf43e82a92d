"""The builders' own test: every built model computes its closed-form reference.

Oracle: onnxruntime runs the built graph; fuzz.reference computes the same model from its
parameters with refimpl.functional (float64). They must agree to float32 (or float16) error.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, note

from fuzz import AttentionConfig, ConfigError, build
from fuzz.strategies import attention_configs


def ort_outputs(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_matches_reference(built, feeds, outputs) -> None:
    ref = built.reference(feeds)
    tol = 3e-2 if built.config.dtype == "float16" else 3e-5
    for name, expected in ref.items():
        got = outputs[name].astype(np.float64)
        scale = max(1.0, float(np.abs(expected).max()))
        err = float(np.abs(got - expected).max()) / scale
        assert err < tol, f"{name}: relative error {err:.2e} (tolerance {tol})"


@given(attention_configs())
def test_built_models_equal_their_closed_form(cfg):
    note(repr(cfg))
    built = build(cfg, seed=3)
    if not cfg.shuffle:
        onnx.checker.check_model(built.model, full_check=True)
    feeds = built.make_feeds(5)
    assert_matches_reference(built, feeds, ort_outputs(built.model, feeds))


@pytest.mark.parametrize(
    "changes",
    [
        dict(rope="interleaved", rotary_fraction=0.5),
        dict(attention_op=True, past=2, past_kv="full", mask="causal"),
        dict(gqa_repeat="broadcast", mask="per_head", heads=6, kv_heads=2, head_dim=4),
        dict(fused_qkv="gather", kv_heads=4),
        dict(layout="nchw", cross_attention=True, mask="none", kv_seq=6),
        dict(dtype="float16", rope="rotate_half"),
    ],
)
def test_named_variants(changes):
    base = dict(batch=2, seq=4, hidden=32, heads=4, kv_heads=2, layers=2)
    built = build(AttentionConfig(**{**base, **changes}), seed=1)
    feeds = built.make_feeds(0)
    assert_matches_reference(built, feeds, ort_outputs(built.model, feeds))


def test_builds_are_deterministic():
    cfg = AttentionConfig(rope="rotate_half", mask="additive_input", layers=2, names="opaque")
    assert build(cfg, seed=7).model.SerializeToString() == build(cfg, seed=7).model.SerializeToString()
    assert build(cfg, seed=7).model.SerializeToString() != build(cfg, seed=8).model.SerializeToString()


def test_opaque_names_carry_no_roles():
    model = build(AttentionConfig(names="opaque", lora_rank=2, rope="half_split"), seed=0).model
    names = [t.name for t in model.graph.initializer] + [o for n in model.graph.node for o in n.output] + [n.name for n in model.graph.node]
    for word in ("q_proj", "k_proj", "v_proj", "lora", "rotary", "attn", "self_attn"):
        assert not any(word in n for n in names), word


@pytest.mark.parametrize(
    "changes, why",
    [
        (dict(heads=4, kv_heads=3), "multiple of kv heads"),
        (dict(layout="nchw", rope="rotate_half"), "NCHW layout"),
        (dict(fused_qkv="gather", kv_heads=2), "kv heads == heads"),
        (dict(attention_op=True, scaling="mul_q"), "one scale attribute"),
        (dict(past=2), "past length needs a past_kv form"),
        (dict(rope="nope"), "rope must be one of"),
    ],
)
def test_inconsistent_configs_are_rejected_with_a_reason(changes, why):
    with pytest.raises(ConfigError, match=why):
        AttentionConfig(**changes).validate()
