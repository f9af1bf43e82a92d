"""Encodings carried onto the SHA model: simulated quantization of the SHA model with the
propagated encodings matches the MHA model with the original ones (refimpl, float64), every
SHA tensor standing for an encoded MHA tensor has an encoding, and mis-mapped encodings are
caught by the verifier."""

from __future__ import annotations

import json

import numpy as np
import onnx
from hypothesis import given, note, settings
from hypothesis import strategies as st

from fuzz import AttentionConfig, build, make_encodings
from fuzz.strategies import attention_configs, encoding_schemes
from mha2sha.api import ConvertOptions, convert
from mha2sha.correspondence import block_correspondence
from mha2sha.encodings import numeric_encodings, read_encodings
from mha2sha.graph.io import load_model
from verify.run import verify_models


def _convert(tmp_path, built, version, scheme, seed=0, **options):
    model_path = tmp_path / "m.onnx"
    onnx.save(built.model, model_path)
    enc = make_encodings(built, version=version, seed=seed, scheme=scheme)
    enc_path = tmp_path / "m.encodings"
    enc.write(enc_path)
    out = tmp_path / "out"
    result = convert(model_path, out, ConvertOptions(encodings=enc_path, end_to_end=False, **options))
    return model_path, enc_path, result


def _quant_checks(report):
    return [c for b in report["blocks"] for c in b["checks"] if c["check"].startswith("quant_sim")]


@settings(max_examples=max(8, settings().max_examples // 3))  # 8 in ci, more under the release profile
@given(
    attention_configs(dtype="float32", shuffle=False, attention_op=False),
    st.sampled_from(["0.6.1", "1.0.0", "2.0.0"]).flatmap(lambda v: st.tuples(st.just(v), encoding_schemes(v))),
    st.booleans(),
)
def test_simulated_quantization_agrees(tmp_path_factory, cfg, version_scheme, conv):
    version, scheme = version_scheme
    note(f"{cfg!r}\n{version} {scheme} conv={conv}")
    if cfg.heads == 1:
        return
    tmp = tmp_path_factory.mktemp("prop")
    built = build(cfg, seed=1)
    _, _, result = _convert(tmp, built, version, scheme, replace_linear_with_conv=conv)
    assert result.ok, json.dumps([b for b in result.report["blocks"] if b["status"] != "pass"], default=str)[:2000]
    quant = _quant_checks(result.report)
    assert quant and all(c["passed"] for c in quant)
    mapping = json.loads(result.mapping_path.read_text())
    sha = read_encodings(result.encodings_path)
    original = read_encodings(tmp / "m.encodings")
    for section in ("activation_encodings", "param_encodings"):
        for mha_name, pieces in mapping[section].items():
            if mha_name in original.tensors:
                missing = [p for p in pieces if p not in sha.tensors]
                assert not missing, (mha_name, missing)


def test_wrong_head_slice_and_missing_encoding_are_caught(tmp_path):
    cfg = AttentionConfig(batch=1, seq=6, hidden=32, heads=4, kv_heads=2, rope="rotate_half", mask="causal", mlp=False)
    built = build(cfg, seed=2)
    from fuzz import EncodingScheme

    model_path, enc_path, result = _convert(tmp_path, built, "1.0.0", EncodingScheme(weights="per_channel", activation_bitwidth=8))
    assert result.ok
    specs = block_correspondence(model_path)
    original = load_model(model_path).model
    converted = load_model(result.model_path).model
    mha = numeric_encodings(read_encodings(enc_path), original)

    import json as _json

    from verify.run import encodings_coverage

    mapping = _json.loads(result.mapping_path.read_text())
    mha_set = read_encodings(enc_path)
    sha_tensors = {v.name for v in converted.graph.initializers.values()} | {o.name for n in converted.graph for o in n.outputs}

    def verdict(mutate):
        sha_set = read_encodings(result.encodings_path)
        mutate(sha_set)
        report = verify_models(model_path, result.model_path, specs, end_to_end=False, mha_encodings=mha, sha_encodings=numeric_encodings(sha_set, converted))
        failures = [c for c in _quant_checks(report) if not c["passed"]]
        coverage = encodings_coverage(mapping, set(mha_set.tensors), set(sha_set.tensors), sha_tensors)
        if coverage["status"] == "fail":
            failures.append({"check": "encodings_coverage", "missing": coverage["missing"]})
        return failures

    assert not verdict(lambda s: None)

    def swap_heads(s):
        a, b = s.tensors["attn0.h0.q_proj.weight"], s.tensors["attn0.h1.q_proj.weight"]
        a.scale, b.scale = b.scale, a.scale

    assert verdict(swap_heads), "per-channel encodings of the wrong head must be caught"

    def drop_one(s):
        victim = next(n for n in s.tensors if n.startswith("attn0.h0.") and s.tensors[n].section == "activation" and "proj" not in n)
        s.remove(victim)

    assert verdict(drop_one), "a missing activation encoding must be caught"


def test_layout_op_with_its_own_encoding_on_a_shared_input(tmp_path):
    """Found by the release profile: RoPE's Unsqueeze(cos) carries an encoding of its own
    (data-movement outputs exported); the per-kv-head key path reads cos without the head
    axis. The quantized Unsqueeze must stay in the chain, and cos must keep its own entry."""
    from fuzz import EncodingScheme

    cfg = AttentionConfig(batch=1, seq=3, past=1, hidden=12, heads=3, kv_heads=3, dynamic=False, projection="matmul",
                          rope="rotate_half", past_kv="full", lora_rank=2, lora_adaptors=2, lora_alpha_input=False, mlp=True)
    scheme = EncodingScheme(activation_bitwidth=8, activation_symmetric=True, weights="lpbq", weight_bitwidth=8,
                            weight_symmetric=True, block_size=2, lpbq_decompressed_bitwidth=8, other_params=False, bias=False,
                            float16_fraction=0.2, data_movement_outputs=True)
    built = build(cfg, seed=1)
    model_path, enc_path, result = _convert(tmp_path, built, "1.0.0", scheme)
    assert result.ok, json.dumps([c for b in result.report["blocks"] for c in b["checks"] if not c["passed"]], default=str)[:2000]
    original, sha = read_encodings(enc_path), read_encodings(result.encodings_path)
    for name, enc in original.tensors.items():
        if name in sha.tensors:  # a tensor of both models keeps its own entry
            assert np.array_equal(np.asarray(sha.tensors[name].scale), np.asarray(enc.scale)), name
