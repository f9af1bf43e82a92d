"""LoRA adaptors converted to the SHA model: the SHA model with an adaptor's converted weights
computes what the MHA model computes with that adaptor's original weights (onnxruntime on
both) and what the closed form computes with the adaptor's parameters (fuzz reference);
encodings carried per adaptor simulate the same quantized model; the safetensors reader and
writer agree with the reference implementation (the ``safetensors`` package)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import yaml

import refimpl
from fuzz import AttentionConfig, build, make_encodings
from fuzz.builder import BuiltModel
from fuzz.params import _round
from fuzz.reference import reference
from mha2sha.encodings import numeric_encodings, read_encodings
from mha2sha.errors import InputError
from mha2sha.lora_adaptors import (
    ADAPTOR_LIST_FILE,
    TENSOR_NAMES_FILE,
    SafetensorsError,
    convert_adaptors,
    find_lora_branches,
    read_adaptor_list,
    read_safetensors,
    write_safetensors,
)
from mha2sha.passes.cleanup import cleanup
from mha2sha.passes.linear_to_conv import linear_to_conv
from mha2sha.pipeline import _all_names
from tests.llm.helpers import (
    close,
    lora_initializers,
    lora_layout,
    merge_outputs,
    run_ort,
    sha_feeds,
    split,
    substitute,
    to_ir,
)

CASES = {
    # GQA, alpha from an input, two concurrent LoRA branches, then linear -> conv
    "gqa_alpha_input_conv": (AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=2, lora_alpha_input=True, rope="rotate_half", mlp=False), dict(conv=True)),
    # mha-conv layout (1x1 Conv LoRA), constant alpha, opaque names
    "mha_conv_opaque": (AttentionConfig(heads=4, kv_heads=4, lora_rank=3, layout="mha_conv", names="opaque", mlp=False), dict()),
    # AR-2 head groups, bias on the projections, a KV cache split per head
    "ar2_cache": (AttentionConfig(heads=4, kv_heads=2, lora_rank=2, projection="matmul_bias", past=3, past_kv="full", mlp=False), dict(heads_per_block=2)),
}


def _draw_adaptor(built, rng) -> tuple[dict, dict]:
    """Random LoRA parameters for every branch of ``built``: (graph initializer -> value,
    params with those LoRA weights)."""
    cfg = built.config
    names = lora_initializers(built)
    params = copy.deepcopy(built.params)
    values = {}
    for (layer, role, k, which), name in names.items():
        p = params.layers[layer].lora[role][k]
        shape = getattr(p, which).shape
        new = _round(rng.standard_normal(shape) * (1 / math.sqrt(cfg.hidden) if which == "a" else 0.5), cfg.dtype)
        setattr(p, which, new)
        values[name] = lora_layout(cfg, new, which).astype(built.np_dtype)
    return values, params


def _convert(tmp_path, built, *, conv=False, heads_per_block=1, adaptors):
    original = to_ir(built.model)
    converted, result = split(built.model, heads_per_block=heads_per_block)
    record = None
    if conv:
        record = linear_to_conv(converted, _all_names(converted.graph))
        cleanup(converted)
    out = tmp_path / "out"
    conversion = convert_adaptors(adaptors, out, original=original, converted=converted, split=result, conv=record)
    return ir.serde.serialize_model(converted), result, conversion, out


@pytest.mark.parametrize("case", list(CASES))
def test_converted_adaptors_compute_like_the_originals(tmp_path, case):
    cfg, options = CASES[case]
    built = build(cfg, seed=3)
    rng = np.random.default_rng(11)
    adaptors = {name: _draw_adaptor(built, rng) for name in ("french", "legal")}
    entries = []
    for name, (values, _) in adaptors.items():
        write_safetensors(tmp_path / f"{name}.safetensors", values)
        entries.append({"name": name, "lora_weights": f"{name}.safetensors"})
    (tmp_path / "adaptors.yaml").write_text(yaml.safe_dump({"use_case": entries}))

    sha_model, result, conversion, out = _convert(tmp_path, built, adaptors=tmp_path / "adaptors.yaml", **options)
    assert result.converted and all(b.heads == cfg.heads for b in result.converted)

    listed = (out / TENSOR_NAMES_FILE).read_text().split()
    sha_inits = {i.name: i for i in sha_model.graph.initializer}
    assert listed and set(listed) <= set(sha_inits)
    written = yaml.safe_load((out / ADAPTOR_LIST_FILE).read_text())["use_case"]
    assert [e["name"] for e in written] == list(adaptors)

    feeds = built.make_feeds(5)
    base_mha = run_ort(built.model, feeds)
    for entry, (name, (values, params)) in zip(written, adaptors.items()):
        converted, _ = read_safetensors(out / entry["lora_weights"])
        assert set(converted) == set(listed)
        mha = run_ort(substitute(built.model, values), feeds)
        sha = merge_outputs(run_ort(substitute(sha_model, converted), sha_feeds(feeds, result)), result)
        truth = reference(cfg, params, feeds)
        for out_name in built.output_names:
            assert close(sha[out_name], mha[out_name], rtol=1e-5, atol=1e-5), (name, out_name)
            assert close(sha[out_name], truth[out_name], rtol=1e-4, atol=1e-4), (name, out_name)
        # The adaptor matters: the base weights give another output.
        assert not close(mha["output"], base_mha["output"], rtol=1e-3, atol=1e-3)


def test_adaptor_encodings_simulate_like_the_originals(tmp_path):
    cfg = AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=1, mlp=False)
    built = build(cfg, seed=4)
    rng = np.random.default_rng(2)
    entries, adapted = [], {}
    for name in ("a1", "a2"):
        values, params = _draw_adaptor(built, rng)
        model = substitute(built.model, values)
        enc = make_encodings(BuiltModel(cfg, model, params, built.seed), version="1.0.0", seed=len(entries))
        enc.write(tmp_path / f"{name}.encodings")
        write_safetensors(tmp_path / f"{name}.safetensors", values)
        entries.append({"name": name, "weights": f"{name}.safetensors", "encodings": f"{name}.encodings"})
        adapted[name] = (values, model, enc)
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"adaptors": entries}))
    sha_model, result, conversion, out = _convert(tmp_path, built, adaptors=tmp_path / "list.yaml")
    written = yaml.safe_load((out / ADAPTOR_LIST_FILE).read_text())["use_case"]
    feeds = built.make_feeds(9)
    sims = {}
    for entry in written:
        values, mha_model, enc = adapted[entry["name"]]
        converted, _ = read_safetensors(out / entry["lora_weights"])
        sha_adapted = substitute(sha_model, converted)
        sha_enc = numeric_encodings(read_encodings(out / entry["quant_overrides"]), to_ir(sha_adapted))
        want = refimpl.run(mha_model, feeds, dtype=np.float64, encodings=enc.quant)["output"]
        got = refimpl.run(sha_adapted, sha_feeds(feeds, result), dtype=np.float64, encodings=sha_enc)["output"]
        step = float(np.max(enc.quant["output"].scale)) if "output" in enc.quant else 1e-2
        assert np.max(np.abs(got - want)) <= 0.5 * step, entry["name"]
        sims[entry["name"]] = want
    # Each adaptor's own encodings: the two quantized models differ.
    assert not np.allclose(sims["a1"], sims["a2"], atol=1e-3)


def test_an_adaptor_with_wrong_names_or_shapes_is_refused(tmp_path):
    cfg = AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False)
    built = build(cfg, seed=1)
    values, _ = _draw_adaptor(built, np.random.default_rng(0))
    name = next(iter(values))

    def attempt(tensors, label):
        write_safetensors(tmp_path / f"{label}.safetensors", tensors)
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump([{"name": label, "lora_weights": f"{label}.safetensors"}]))
        with pytest.raises(InputError) as info:
            _convert(tmp_path / label, built, adaptors=tmp_path / f"{label}.yaml")
        return str(info.value)

    (tmp_path / "renamed").mkdir()
    (tmp_path / "transposed").mkdir()
    assert "not an initializer" in attempt({"renamed_lora_a": values[name]}, "renamed")
    # PEFT key names need the adaptor's adapter_config.json (r, lora_alpha) beside them.
    assert "adapter_config.json" in attempt({"base_model.q_proj.lora_A.weight": values[name]}, "peft_keys")
    assert "shape" in attempt({name: values[name].T.copy()}, "transposed")


def test_adaptors_must_set_the_same_tensors(tmp_path):
    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False), seed=1)
    values, _ = _draw_adaptor(built, np.random.default_rng(0))
    first = dict(values)
    second = dict(list(values.items())[1:])
    write_safetensors(tmp_path / "a.safetensors", first)
    write_safetensors(tmp_path / "b.safetensors", second)
    (tmp_path / "l.yaml").write_text(yaml.safe_dump({"use_case": [{"name": "a", "lora_weights": "a.safetensors"}, {"name": "b", "lora_weights": "b.safetensors"}]}))
    with pytest.raises(InputError, match="same tensors"):
        _convert(tmp_path, built, adaptors=tmp_path / "l.yaml")


def test_adaptor_list_forms_and_errors(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "w.encodings").write_text("{}")
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump([{"name": "x", "lora_weights": "w.safetensors", "quant_overrides": "w.encodings"}]))
    specs = read_adaptor_list(tmp_path / "bare.yaml")
    assert specs[0].name == "x" and specs[0].weights == tmp_path / "w.safetensors" and specs[0].encodings == tmp_path / "w.encodings"
    for doc, message in (
        ({"use_case": [{"name": "x"}]}, "missing lora_weights"),
        ({"use_case": [{"name": "x", "lora_weights": "nope.safetensors"}]}, "not found"),
        ({"use_case": [{"name": "x", "lora_weights": "w.safetensors"}, {"name": "x", "lora_weights": "w.safetensors"}]}, "already used"),
        ({"use_case": [{"name": "x", "lora_weights": "w.safetensors", "alpha": 2}]}, "unknown keys"),
        ({"something": []}, "exactly one of"),
    ):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(InputError, match=message):
            read_adaptor_list(tmp_path / "bad.yaml")


def test_lora_branches_found_by_structure_whatever_the_names():
    for names in ("readable", "opaque"):
        cfg = AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=2, names=names, mlp=False)
        built = build(cfg, seed=0)
        oracle = lora_initializers(built)
        branches = find_lora_branches(to_ir(built.model).graph)
        found = {(b.a_weight.name, b.b_weight.name, b.slot) for b in branches}
        want = {(oracle[(0, r, k, "a")], oracle[(0, r, k, "b")], k) for r in ("q", "k", "v") for k in range(2)}
        assert found == want
        assert all(b.alpha is not None and b.rank == 2 for b in branches)
    # No LoRA: the MLP (up then down) and the attention are not taken for a branch.
    assert find_lora_branches(to_ir(build(AttentionConfig(mlp=True)).model).graph) == []


# --- safetensors -----------------------------------------------------------------------------


def test_safetensors_round_trip_against_the_reference_implementation(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed (the reference implementation)")
    load_file, save_file = st.load_file, st.save_file

    rng = np.random.default_rng(0)
    tensors = {
        "w.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "w.f16": rng.standard_normal((2, 2, 1, 1)).astype(np.float16),
        "i64": np.arange(7, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float64),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    write_safetensors(tmp_path / "ours.safetensors", tensors, {"k": "v"})
    theirs = load_file(tmp_path / "ours.safetensors")
    save_file(tensors, tmp_path / "theirs.safetensors", metadata={"k": "v"})
    ours, meta = read_safetensors(tmp_path / "theirs.safetensors")
    assert meta == {"k": "v"}
    for name, arr in tensors.items():
        for got in (theirs[name], ours[name]):
            assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr), name


def test_safetensors_bf16_is_read_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    got, _ = read_safetensors(tmp_path / "b.safetensors")
    assert got["x"].dtype == np.float32
    assert np.array_equal(got["x"], (bits.astype(np.uint32) << 16).view(np.float32))


@pytest.mark.parametrize("corrupt", ["short", "header_too_long", "not_json", "hole", "overlap", "wrong_size", "trailing"])
def test_malformed_safetensors_are_refused(tmp_path, corrupt):
    def file(header: dict, data: bytes, n=None) -> bytes:
        raw = json.dumps(header).encode()
        return (len(raw) if n is None else n).to_bytes(8, "little") + raw + data

    ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    blobs = {
        "short": b"\x01\x02",
        "header_too_long": file(ok, bytes(8), n=10**6),
        "not_json": (5).to_bytes(8, "little") + b"{nope" + bytes(8),
        "hole": file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        "overlap": file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        "wrong_size": file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "trailing": file(ok, bytes(12)),
    }
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blobs[corrupt])
    with pytest.raises(SafetensorsError):
        read_safetensors(path)


def test_writes_are_atomic_and_keep_inputs(tmp_path):
    """An adaptor file next to the outputs is never overwritten, and a failing conversion
    leaves nothing behind."""
    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False), seed=1)
    values, _ = _draw_adaptor(built, np.random.default_rng(0))
    out = tmp_path / "out"
    out.mkdir()
    write_safetensors(out / "adaptor_x.safetensors", values)
    before = (out / "adaptor_x.safetensors").read_bytes()
    (tmp_path / "l.yaml").write_text(yaml.safe_dump([{"name": "x", "lora_weights": str(out / "adaptor_x.safetensors")}]))
    with pytest.raises(Exception, match="overwrite"):
        _convert(tmp_path, built, adaptors=tmp_path / "l.yaml")
    assert (out / "adaptor_x.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["adaptor_x.safetensors"]


def test_the_model_file_is_unchanged_by_adaptor_conversion(tmp_path):
    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False), seed=1)
    values, _ = _draw_adaptor(built, np.random.default_rng(0))
    write_safetensors(tmp_path / "x.safetensors", values)
    (tmp_path / "l.yaml").write_text(yaml.safe_dump([{"name": "x", "lora_weights": "x.safetensors"}]))
    before = built.model.SerializeToString()
    sha_model, *_ = _convert(tmp_path, built, adaptors=tmp_path / "l.yaml")
    assert built.model.SerializeToString() == before
    onnx.checker.check_model(sha_model)


@pytest.mark.parametrize("heads_per_block", [1, 2])
def test_lora_alpha_input_is_no_kv_cache(heads_per_block, caplog):
    """A LoRA alpha graph input on the key/value path is broadcast over the heads, not a cache:
    it is never reported as a cache that stays whole; the real caches are (with --build-ar 2 a
    block reads two heads of them, so they stay whole, and say so)."""
    import logging

    from mha2sha.pipeline import split_model

    cfg = AttentionConfig(heads=4, kv_heads=4, lora_rank=2, lora_adaptors=1, lora_alpha_input=True,
                          past_kv="full", past=3, dynamic=False, mlp=False)
    model = to_ir(build(cfg, seed=0).model)
    assert "lora_alpha" in {v.name for v in model.graph.inputs}
    with caplog.at_level(logging.WARNING):
        result = split_model(model, heads_per_block=heads_per_block)
    whole = {c["tensor"] for c in result.whole_caches}
    assert "lora_alpha" not in whole and "lora_alpha" not in caplog.text
    if heads_per_block == 1:
        assert whole == set()
    else:
        assert {"past_key_0", "past_value_0"} <= whole <= {"past_key_0", "past_value_0", "present_key_0", "present_value_0"}
        assert "past_key_0 stays whole" in caplog.text
