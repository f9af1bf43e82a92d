"""Pre-quantization adaptation: LoRA alpha lifted to graph inputs (found by structure), dead
nodes removed, topological order; the adapted model fed the old constants equals the original
(onnxruntime), fed other alphas equals the closed form with those alphas (fuzz reference);
the merged mapping of all stages resolves every encoded tensor of the original model to
tensors of the final model that hold the same numbers."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import refimpl
from fuzz import AttentionConfig, build, make_encodings
from fuzz.reference import reference
from mha2sha.errors import UsageError
from mha2sha.passes.cleanup import cleanup
from mha2sha.passes.linear_to_conv import linear_to_conv
from mha2sha.pipeline import _all_names, split_model
from mha2sha.prequant import (
    PREQUANT_MAP_FILE,
    adapt,
    conv_record_mapping,
    merge_mappings,
    model_names,
    run_prequant,
)
from tests.llm.helpers import close, run_ort, sha_feeds, to_ir


def _ir_to_proto(model):
    import onnx_ir as ir

    return ir.serde.serialize_model(model)


def _alpha_constants(built) -> dict[str, float]:
    """The one-element constants the graph multiplies lora_B outputs by, read from the fuzz
    parameters' values: initializer name -> value."""
    values = {v for lp in built.params.layers for v in lp.lora_alpha}
    mul_inputs = {i for n in built.model.graph.node if n.op_type == "Mul" for i in n.input}
    out = {}
    for init in built.model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if init.name in mul_inputs and arr.size == 1 and float(arr.reshape(-1)[0]) in values:
            out[init.name] = float(arr.reshape(-1)[0])
    return out


CONFIGS = {
    "two_slots_two_layers_shuffled": AttentionConfig(heads=4, kv_heads=2, layers=2, lora_rank=2, lora_adaptors=2, shuffle=True, mlp=False),
    "mha_conv_opaque": AttentionConfig(heads=2, kv_heads=2, lora_rank=2, layout="mha_conv", names="opaque", mlp=False),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_lifted_alpha_reproduces_the_original_and_acts_as_alpha(case):
    cfg = CONFIGS[case]
    built = build(cfg, seed=2)
    constants = _alpha_constants(built)
    assert constants
    result = adapt(to_ir(built.model), lora_alpha_from_input=True)
    adapted = _ir_to_proto(result.model)
    onnx.checker.check_model(adapted)  # includes topological order (the input was shuffled when asked)
    slots = cfg.lora_adaptors
    assert len(result.alpha_inputs) == slots
    assert set(result.alpha_inputs) <= {i.name for i in adapted.graph.input}
    # Every alpha constant maps to exactly one of the new inputs, and holds the value fed to it.
    for name, value in constants.items():
        (new,) = result.mapping[name]
        assert float(result.alpha_inputs[new][0]) == pytest.approx(value)
    assert not (set(constants) & {i.name for i in adapted.graph.initializer})

    feeds = built.make_feeds(3)
    want = run_ort(built.model, feeds)
    got = run_ort(adapted, {**feeds, **result.alpha_inputs})
    for out in built.output_names:
        assert close(got[out], want[out], rtol=1e-6, atol=1e-6), out

    # Other alphas: the closed form with those alphas.
    by_slot = {}
    for name, value in constants.items():
        slot = sorted({v for lp in built.params.layers for v in lp.lora_alpha}).index(value)
        by_slot[slot] = result.mapping[name][0]
    new_alphas = [0.0, 2.0][:slots]
    params = copy.deepcopy(built.params)
    for lp in params.layers:
        lp.lora_alpha = list(new_alphas)
    alpha_feeds = {by_slot[k]: np.array([a], dtype=np.float32) for k, a in enumerate(new_alphas)}
    got = run_ort(adapted, {**feeds, **alpha_feeds})
    truth = reference(cfg, params, feeds)
    for out in built.output_names:
        assert close(got[out], truth[out], rtol=1e-4, atol=1e-4), out
    assert not close(got["output"], want["output"], rtol=1e-3, atol=1e-3)


def test_alpha_already_an_input_is_left_alone_and_no_lora_is_an_error():
    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, lora_alpha_input=True, mlp=False), seed=0)
    result = adapt(to_ir(built.model), lora_alpha_from_input=True)
    assert result.alpha_inputs == {} and result.mapping == {} and result.notes
    plain = build(AttentionConfig(heads=2, kv_heads=2, mlp=True), seed=0)
    with pytest.raises(UsageError, match="no LoRA branch"):
        adapt(to_ir(plain.model), lora_alpha_from_input=True)


def test_branch_without_multiplier_gets_one():
    """A LoRA branch added without alpha (delta = B(A(x))) gets a Mul by a new input fed 1.0."""
    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False), seed=0)
    model = copy.deepcopy(built.model)
    constants = _alpha_constants(built)
    # Bypass each alpha Mul: the Add reads lora_B's output directly; the model is then the
    # closed form with alpha 1.
    for node in list(model.graph.node):
        if node.op_type == "Mul" and any(i in constants for i in node.input):
            source = next(i for i in node.input if i not in constants)
            for other in model.graph.node:
                for k, i in enumerate(other.input):
                    if i == node.output[0]:
                        other.input[k] = source
            model.graph.node.remove(node)
    result = adapt(to_ir(model), lora_alpha_from_input=True)
    adapted = _ir_to_proto(result.model)
    ((name, value),) = result.alpha_inputs.items()
    assert float(value[0]) == 1.0
    feeds = built.make_feeds(1)
    assert close(run_ort(adapted, {**feeds, name: value})["output"], run_ort(model, feeds)["output"], rtol=1e-6, atol=1e-6)
    params = copy.deepcopy(built.params)
    params.layers[0].lora_alpha = [0.25]
    got = run_ort(adapted, {**feeds, name: np.array([0.25], np.float32)})["output"]
    assert close(got, reference(built.config, params, feeds)["output"], rtol=1e-4, atol=1e-4)


def test_dead_nodes_removed_and_mapped_to_nothing(tmp_path):
    built = build(AttentionConfig(heads=2, kv_heads=2, mlp=False), seed=0)
    model = copy.deepcopy(built.model)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "dead_weight"))
    model.graph.node.append(helper.make_node("Relu", ["hidden_states"], ["dead_relu"], name="dead0"))
    model.graph.node.append(helper.make_node("Neg", ["dead_relu"], ["dead_neg"], name="dead1"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    written = run_prequant(path, tmp_path / "out")
    mapping = json.loads(written.mapping_path.read_text())
    assert mapping == {"dead_neg": [], "dead_relu": [], "dead_weight": []}
    adapted = onnx.load(written.model_path)
    assert {n.name for n in adapted.graph.node}.isdisjoint({"dead0", "dead1"})
    feeds = built.make_feeds(0)
    assert close(run_ort(adapted, feeds)["output"], run_ort(built.model, feeds)["output"], rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".mha2sha-manifest.json") == sorted([written.model_path.name, PREQUANT_MAP_FILE])


def _values_within(piece: np.ndarray, whole: np.ndarray, tol: float) -> bool:
    """Every value of ``piece`` is (to ``tol``) one of ``whole``'s values."""
    ref = np.sort(whole.reshape(-1).astype(np.float64))
    vals = piece.reshape(-1).astype(np.float64)
    pos = np.clip(np.searchsorted(ref, vals), 1, len(ref) - 1)
    nearest = np.minimum(np.abs(ref[pos] - vals), np.abs(ref[pos - 1] - vals))
    return bool(np.all(nearest <= tol * (1 + np.abs(vals))))


def _every_tensor(model: onnx.ModelProto, feeds: dict) -> dict:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update(refimpl.run(model, feeds, dtype=np.float64, outputs="all"))
    values.update({k: v for k, v in feeds.items() if k in {i.name for i in model.graph.input}})
    return values


@pytest.mark.parametrize("conv", [False, True])
def test_all_stages_mapping_resolves_every_encoded_tensor(conv, tmp_path):
    cfg = AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=2, rope="rotate_half", past=2, past_kv="full", mlp=True)
    built = build(cfg, seed=5)
    enc = make_encodings(built, version="1.0.0", seed=1)
    encoded = set(enc.quant)
    model = to_ir(built.model)
    pre = adapt(model, lora_alpha_from_input=True)
    from mha2sha.api import _requantized
    from mha2sha.encodings.io import read_encodings

    # As the converter splits with encodings: it keeps every quantizer (RoPE's rotation is
    # folded into a MatMul only where the halves' and the Neg's encodings are redundant).
    split = split_model(model, requantized=_requantized(read_encodings(enc.write(tmp_path / "model.encodings"))))
    record = None
    if conv:
        record = linear_to_conv(model, _all_names(model.graph))
        cleanup(model)
    from mha2sha.api import name_mapping

    merged = merge_mappings([pre.mapping, name_mapping(split, None), record], final_names=model_names(model), originals=encoded)
    final = _ir_to_proto(model)
    feeds = built.make_feeds(4)
    before = _every_tensor(built.model, feeds)
    after = _every_tensor(final, {**sha_feeds(feeds, split), **pre.alpha_inputs})
    changed = 0
    for name in sorted(encoded):
        targets = merged[name]
        assert targets, f"{name} resolves to nothing"
        assert all(t in after for t in targets), (name, targets)
        whole = before[name]
        for t in targets:
            assert _values_within(after[t], whole, 1e-9), (name, t)
        changed += targets != [name]
        # A per-head tensor of a whole: together the pieces hold all its values.
        assert _values_within(whole, np.concatenate([after[t].reshape(-1) for t in targets]), 1e-9), name
    assert changed > 10
    # The alpha constants resolve through the lifted input.
    for name in _alpha_constants(built):
        assert name in merged and merged[name], name
    if conv:
        assert conv_record_mapping(record)


def test_merge_chains_and_filters():
    stages = [
        {"c": ["in_c"], "dead": []},
        {"activation_encodings": {"in_c": ["in_c.h0", "in_c.h1"], "x": ["x.h0"]}, "param_encodings": {"w": ["w.h0", "w.h1"]}},
        {"w.h0": ["w.h0"], "x.h0": ["x.h0.conv"]},
    ]
    final = {"in_c", "in_c.h0", "in_c.h1", "x", "x.h0", "x.h0.conv", "w.h0", "w.h1", "kept"}
    merged = merge_mappings(stages, final_names=final, originals=["kept", "gone"])
    assert merged == {
        "c": ["in_c", "in_c.h0", "in_c.h1"],
        "dead": [],
        "gone": [],
        "kept": ["kept"],
        "w": ["w.h0", "w.h1"],
        "x": ["x", "x.h0", "x.h0.conv"],
    }
    # Without the final names, a mapped name does not stay itself.
    assert merge_mappings(stages)["x"] == ["x.h0.conv"]


def test_encodings_follow_the_lifted_alpha():
    from mha2sha.encodings import read_encodings, to_object
    from mha2sha.prequant import rename_encodings

    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False), seed=0)
    enc = make_encodings(built, version="1.0.0", seed=0)
    constants = _alpha_constants(built)
    content = copy.deepcopy(enc.content)
    template = next(e for e in content["activation_encodings"] if e.get("enc_type") == "PER_TENSOR")
    for name in constants:  # the fuzz does not quantize the alpha constant: give it an entry
        content["param_encodings"].append({**copy.deepcopy(template), "name": name})
    enc_set = read_encodings(content)
    model = to_ir(built.model)
    result = adapt(model, lora_alpha_from_input=True)
    rename_encodings(enc_set, result.mapping, model)
    (new,) = result.alpha_inputs
    assert new in enc_set.tensors and not set(constants) & set(enc_set.tensors)
    written = to_object(enc_set)
    entry = next(e for e in written["activation_encodings"] if e["name"] == new)
    original = next(e for e in content["param_encodings"] if e["name"] == next(iter(constants)))
    assert {k: v for k, v in entry.items() if k != "name"} == {k: v for k, v in original.items() if k != "name"}
