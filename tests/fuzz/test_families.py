"""Family strategies and the consistency rules: every draw is a valid model that computes its
closed form, pins are respected, and drawn attention is peaked enough for defects to show.

Oracle: onnxruntime on the built graph against the closed-form reference (refimpl.functional).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import refimpl
from fuzz import AttentionConfig, build
from fuzz.config import (
    FUSED,
    GQA_REPEATS,
    HEAD_SPLITS,
    LAYOUTS,
    MASKS,
    NORMS,
    PAST_KV,
    PROJECTIONS,
    ROPES,
    SCALINGS,
)
from fuzz.repair import PinConflict, reconcile
from fuzz.strategies import (
    attention_configs,
    decoder_configs,
    diffusion_configs,
    encoder_configs,
    encoding_schemes,
    opset23_configs,
)


def ort_outputs(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected).max()) / max(1.0, float(np.abs(expected).max()))


FAMILIES = {
    "decoder": (decoder_configs(), lambda c: c.rope != "none" and not c.cross_attention),
    "encoder": (encoder_configs(), lambda c: c.rope == "none" and not c.has_past and c.layout == "linear"),
    "diffusion": (diffusion_configs(), lambda c: c.layout == "nchw"),
    "opset23": (opset23_configs(), lambda c: c.opset == 23 and (c.attention_op or c.rope == "rotary_op")),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_draws_are_their_family_and_compute_their_closed_form(family):
    strategy, is_member = FAMILIES[family]

    @settings(max_examples=12)
    @given(strategy, st.integers(0, 3))
    def check(cfg, seed):
        note(repr(cfg))
        assert is_member(cfg)
        built = build(cfg, seed=seed)
        if not cfg.shuffle:
            onnx.checker.check_model(built.model, full_check=True)
        feeds = built.make_feeds(seed + 1)
        got = ort_outputs(built.model, feeds)
        tol = 3e-2 if cfg.dtype == "float16" else 3e-5
        for name, expected in built.reference(feeds).items():
            assert relative_error(got[name], expected) < tol, name

    check()


SINGLE_PINS = [(f, v) for f, values in (
    ("layout", LAYOUTS), ("projection", PROJECTIONS), ("fused_qkv", FUSED), ("head_split", HEAD_SPLITS),
    ("scaling", SCALINGS), ("mask", MASKS), ("rope", ROPES), ("gqa_repeat", GQA_REPEATS), ("past_kv", PAST_KV),
    ("norm", NORMS),
) for v in values] + [(b, True) for b in ("cross_attention", "alibi", "qk_norm", "relative_bias", "attention_op",
                                          "softmax_cast", "nan_guard", "dynamic", "shuffle")]


@pytest.mark.parametrize("field, value", SINGLE_PINS)
def test_any_single_pin_is_respected_and_valid(field, value):
    @settings(max_examples=30)
    @given(attention_configs(**{field: value}))
    def check(cfg):
        assert getattr(cfg, field) == value
        cfg.validate()

    check()


def test_pins_may_be_strategies_and_sizes_follow_pinned_heads():
    @settings(max_examples=30)
    @given(attention_configs(heads=6, mask=st.sampled_from(["causal", "bool_input"]), hidden=20))
    def check(cfg):
        assert cfg.heads == 6 and cfg.heads % cfg.kv_heads == 0 and cfg.hidden == 20
        assert cfg.mask in ("causal", "bool_input")

    check()


def test_conflicting_pins_are_refused_with_the_rule():
    fields = dict(
        AttentionConfig().as_dict(), layout="nchw", rope="rotate_half",
    )
    with pytest.raises(PinConflict, match="NCHW is built without RoPE"):
        reconcile(fields, {"layout", "rope"})
    assert reconcile(fields, {"rope"})["layout"] == "linear"
    assert reconcile(fields, {"layout"})["rope"] == "none"


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0", "2.0.0"])
def test_encoding_schemes_are_valid_for_their_version(version):
    @settings(max_examples=30)
    @given(encoding_schemes(version))
    def check(scheme):
        scheme.validate(version)
        if version == "0.6.1":
            assert scheme.weights not in ("per_block", "lpbq")

    check()


# -- drawn attention is peaked: the defects the verifier must catch move the output ---------------


def _swap_query_heads(params, cfg: AttentionConfig):
    """The model with query heads 0 and 1 exchanged (keys, values and o_proj unchanged)."""
    swapped = copy.deepcopy(params)
    d = cfg.d
    a, b = slice(0, d), slice(d, 2 * d)
    for lp in swapped.layers:
        lp.wq[:, a], lp.wq[:, b] = lp.wq[:, b].copy(), lp.wq[:, a].copy()
        if lp.bq is not None:
            lp.bq[a], lp.bq[b] = lp.bq[b].copy(), lp.bq[a].copy()
        for adaptor in lp.lora.get("q", []):
            adaptor.b[:, a], adaptor.b[:, b] = adaptor.b[:, b].copy(), adaptor.b[:, a].copy()
    return swapped


@settings(max_examples=20)
@given(attention_configs(heads=st.sampled_from([2, 4]), seq=st.integers(3, 8), dtype="float32", alibi=False,
                         relative_bias=False, mask=st.sampled_from(["none", "causal", "additive_input"])))
def test_swapping_two_query_heads_is_visible(cfg):
    """With near-uniform attention a query head swap leaves the output unchanged (DESIGN.md
    testing notes); the drawn weights must make it move far above float32 error."""
    note(repr(cfg))
    built = build(cfg, seed=0)
    feeds = built.make_feeds(1)
    truth = built.reference(feeds)["output"]
    swapped = type(built)(built.config, built.model, _swap_query_heads(built.params, cfg), built.seed)
    moved = relative_error(swapped.reference(feeds)["output"], truth)
    assert moved > 1e-3, f"a head swap moves the output by only {moved:.1e}"


@settings(max_examples=20)
@given(attention_configs(seq=st.integers(3, 8), mask="causal", dtype="float32", head_split="reshape_transpose"))
def test_dropping_the_causal_mask_is_visible(cfg):
    note(repr(cfg))
    built = build(cfg, seed=0)
    feeds = built.make_feeds(1)
    unmasked = build(cfg.with_(mask="none"), seed=0)
    moved = relative_error(unmasked.reference(feeds)["output"], built.reference(feeds)["output"])
    assert moved > 1e-3, f"dropping the mask moves the output by only {moved:.1e}"


@settings(max_examples=40)
@given(attention_configs(dtype="float32"), st.integers(0, 3))
def test_float64_evaluation_of_the_graph_equals_the_closed_form(cfg, seed):
    """The reference uses the graph's constants as stored (scale, eps, RoPE tables), so the
    float64 truth is exact for the graph, not only within float32 error: converter tests
    compare a float64 evaluation of their output with it at 1e-9."""
    note(repr(cfg))
    built = build(cfg, seed=seed)
    feeds = built.make_feeds(seed)
    evaluated = refimpl.run(built.model, feeds, dtype=np.float64)
    for name, expected in built.reference(feeds).items():
        assert relative_error(evaluated[name], expected) < 1e-11, name
