"""The verifier catches known defects injected into correct conversions, naming block and check.

Each defect is injected into the converted model of a fuzz-built model whose attention is
peaked, so that every defect moves the output far above the tolerance; the clean conversion
must pass (no false alarm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert
from mha2sha.correspondence import block_correspondence
from verify.derive import derive_correspondence
from verify.graphs import infer_shapes, load
from verify.run import verify_models

CFG = AttentionConfig(batch=1, seq=6, hidden=32, heads=4, kv_heads=2, layers=1, rope="rotate_half", mask="causal", projection="matmul_bias", mlp=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("defects")
    built = build(CFG, seed=2)
    original = tmp / "model.onnx"
    onnx.save(built.model, original)
    result = convert(original, tmp / "out", ConvertOptions(end_to_end=False))
    assert result.ok, result.report
    return original, result.model_path


def _nodes(model, prefix):
    return [n for n in model.graph.node if n.name.startswith(prefix)]


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _set(model, name, array):
    t = _init(model, name)
    t.CopyFrom(numpy_helper.from_array(array.astype(numpy_helper.to_array(t).dtype), name))


def swap_head_weights(m):
    a, b = numpy_helper.to_array(_init(m, "attn0.h0.q_proj.weight")), numpy_helper.to_array(_init(m, "attn0.h1.q_proj.weight"))
    _set(m, "attn0.h0.q_proj.weight", b)
    _set(m, "attn0.h1.q_proj.weight", a)


def wrong_kv_group(m):
    consts = {t.name for t in m.graph.initializer}

    def qk(head):  # the scores MatMul: two activations (not a projection, not RoPE's rotation by a constant)
        return next(n for n in _nodes(m, f"attn0.h{head}.") if n.op_type == "MatMul" and not any(i in consts for i in n.input) and "Softmax" not in n.input[0])

    qk(0).input[1] = qk(2).input[1]  # head 0 reads kv head 1


def swap_rope_halves(m):
    concat = next((n for n in _nodes(m, "attn0.h0.") if n.op_type == "Concat"), None)
    if concat is not None:
        concat.input[0], concat.input[1] = concat.input[1], concat.input[0]
        return
    # rotate_half(x) is one MatMul by a signed permutation (mha2sha.split.rope): head 0 reads
    # concat(x1, -x2) instead of concat(-x2, x1).
    consts = {t.name for t in m.graph.initializer}
    rotation = next(n for n in _nodes(m, "attn0.h0.") if n.op_type == "MatMul" and n.input[1] in consts and "rotate_half" in n.input[1])
    d = numpy_helper.to_array(_init(m, rotation.input[1])).shape[0]
    swapped = np.diag(np.r_[np.ones(d // 2), -np.ones(d // 2)]).astype(np.float32)
    m.graph.initializer.append(numpy_helper.from_array(swapped, rotation.input[1] + ".swapped"))
    rotation.input[1] = rotation.input[1] + ".swapped"


def drop_mask(m):
    consts = {t.name for t in m.graph.initializer}
    add = next(n for n in _nodes(m, "attn0.h0.") if n.op_type == "Add" and any(i in consts and "mask" in i for i in n.input))
    keep = next(i for i in add.input if i not in consts)
    for n in m.graph.node:
        for k, i in enumerate(n.input):
            if i == add.output[0]:
                n.input[k] = keep


def change_scale(m):
    div = next((n for n in _nodes(m, "attn0.h0.") if n.op_type == "Div"), None)
    if div is None:
        # The score scale is folded into RoPE (mha2sha.split.rope): head 0's q @ (R s) and
        # q * (cos s) read the scaled rotation and the block's scale; head 0 gets its own wrong ones.
        consts = {t.name for t in m.graph.initializer}
        for n in _nodes(m, "attn0.h0."):
            for k, i in enumerate(n.input):
                if i in consts and ("rotate_half" in i or "score_scale" in i):
                    name = i + ".wrong"
                    if name not in {t.name for t in m.graph.initializer}:
                        m.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(_init(m, i)) * 1.5, name))
                    n.input[k] = name
        scale_cos = next((n for n in m.graph.node if n.name.startswith("attn0.shared.scale_cos")), None)
        if scale_cos is not None:  # head 0 reads cos scaled by the wrong factor through its own Mul
            wrong = onnx.helper.make_node("Mul", [scale_cos.input[0], scale_cos.input[1] + ".wrong"], [scale_cos.output[0] + ".h0_wrong"], name="attn0.h0.wrong_scale_cos")
            if scale_cos.input[1] + ".wrong" not in {t.name for t in m.graph.initializer}:
                m.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(_init(m, scale_cos.input[1])) * 1.5, scale_cos.input[1] + ".wrong"))
            m.graph.node.insert(list(m.graph.node).index(scale_cos) + 1, wrong)
            for n in _nodes(m, "attn0.h0."):
                for k, i in enumerate(n.input):
                    if i == scale_cos.output[0]:
                        n.input[k] = wrong.output[0]
        return
    name = div.input[1] + ".wrong"
    value = numpy_helper.to_array(_init(m, div.input[1])) * 1.5
    m.graph.initializer.append(numpy_helper.from_array(value, name))
    div.input[1] = name


def shift_bias(m):
    name = "attn0.h0.q_proj.bias" if any(t.name == "attn0.h0.q_proj.bias" for t in m.graph.initializer) else next(t.name for t in m.graph.initializer if t.name.startswith("attn0.h0.") and "bias" in t.name.lower())
    _set(m, name, np.roll(numpy_helper.to_array(_init(m, name)), 1))


DEFECTS = {
    "two heads' weights swapped": swap_head_weights,
    "K/V head mapped to the wrong query group": wrong_kv_group,
    "RoPE halves swapped": swap_rope_halves,
    "mask dropped": drop_mask,
    "scale changed": change_scale,
    "a bias slice shifted": shift_bias,
}


def _verify(original: Path, sha: Path, how: str) -> dict:
    """``how``: the correspondence the converter gives, or derived from the graphs' structure."""
    if how == "converter":
        specs = block_correspondence(original)
    else:
        a, b = load(original), load(sha)
        infer_shapes(a)
        infer_shapes(b)
        specs, unmatched = derive_correspondence(a, b)
        assert not unmatched["blocks"], unmatched
    return verify_models(original, sha, specs, end_to_end=False)


@pytest.mark.parametrize("how", ["converter", "derived"])
def test_clean_conversion_passes(converted, how):
    original, sha = converted
    report = _verify(original, sha, how)
    assert report["blocks"] and all(b["status"] == "pass" for b in report["blocks"]), report["blocks"]


@pytest.mark.parametrize("how", ["converter", "derived"])
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defect_is_caught_and_located(converted, tmp_path, defect, how):
    original, sha = converted
    model = onnx.load(sha)
    DEFECTS[defect](model)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    report = _verify(original, broken, how)
    block = report["blocks"][0]
    assert block["name"] == ("attn0" if how == "converter" else "block0")
    assert block["status"] == "fail", f"{defect} was not caught: {block['checks']}"
    failed = [c for c in block["checks"] if not c["passed"]]
    assert any(c["check"] == "sha_ort_vs_truth" and c["max_abs"] > 10 * c["tolerance"] for c in failed), failed
