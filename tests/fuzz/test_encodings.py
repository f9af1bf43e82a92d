"""Random AIMET encodings: the files follow the specification, the file and the numeric form
say the same thing, and the numbers are right.

Oracles: the format rules are restated here from AIMET's encoding specification (a small
decoder written for this test, not the producer's code); tensor values come from refimpl's
interpreter (not the onnxruntime calibrator under test); the arithmetic facts checked
(symmetric grid edges at the channel absmax, ranges covering the calibration data, bias
scale = input scale x weight scale) come from AIMET_ENCODINGS.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import refimpl
from fuzz import AttentionConfig, build
from fuzz.encodings import EncodingScheme, make_encodings, write_encodings
from fuzz.strategies import attention_configs

VERSIONS = ("0.6.1", "1.0.0", "2.0.0")


# -- a decoder restated from the specification ---------------------------------------------------


def _bits(dtype: str) -> tuple[bool, int]:
    signed = not dtype.startswith("u")
    return signed, int(dtype.lstrip("uint"))


def decode(content: dict) -> dict[str, dict]:
    """name -> {"bw", "scale" (flat), "offset" (flat, AIMET sign), "kind", "float"}."""
    out = {}
    version = content["version"]
    if version == "0.6.1":
        for section in ("activation_encodings", "param_encodings"):
            for name, entries in content[section].items():
                if entries[0]["dtype"] == "float":
                    out[name] = {"float": True, "bw": entries[0]["bitwidth"]}
                    continue
                out[name] = {
                    "float": False,
                    "bw": entries[0]["bitwidth"],
                    "scale": np.array([e["scale"] for e in entries], np.float32),
                    "offset": np.array([e["offset"] for e in entries], np.float32),
                    "kind": "PER_CHANNEL" if len(entries) > 1 else "PER_TENSOR",
                    "section": section,
                }
    elif version == "1.0.0":
        for section in ("activation_encodings", "param_encodings"):
            for e in content[section]:
                if e["dtype"] == "FLOAT":
                    out[e["name"]] = {"float": True, "bw": e["bw"]}
                    continue
                d = {"float": False, "bw": e["bw"], "kind": e["enc_type"], "section": section}
                scale = np.array(e["scale"], np.float32)
                if e["enc_type"] == "LPBQ":
                    ints = np.array(e["per_block_int_scale"], np.float32).reshape(scale.size, -1)
                    d.update(bw=e["compressed_bw"], scale=(ints * scale[:, None]).ravel())
                    d["offset"] = np.full(d["scale"].shape, -(2 ** (e["compressed_bw"] - 1)), np.float32)
                else:
                    d.update(scale=scale, offset=np.array(e["offset"], np.float32))
                out[e["name"]] = d
    else:
        for e in content["encodings"]:
            signed, bw = _bits(e["output_dtype"])
            if "per_block_int_scale" in e:
                ints = np.array(e["per_block_int_scale"], np.float32)
                scale = ints * np.array(e["per_channel_float_scale"], np.float32)
            else:
                scale = np.array(e["y_scale"], np.float32)
            zp = np.array(e.get("y_zero_point", np.zeros(scale.shape)), np.float32)
            offset = -zp - (2 ** (bw - 1) if signed else 0)
            out[e["name"]] = {"float": False, "bw": bw, "scale": scale, "offset": offset, "signed": signed, "entry": e}
    return out


def _flat_in_channel_order(enc: refimpl.QuantEncoding, entry: dict | None) -> np.ndarray:
    """The numeric form's scales flattened the way the file stores them."""
    scale = np.asarray(enc.scale, np.float32)
    if entry is not None and enc.block_size:  # 2.0.0 nests per-block scales in tensor layout
        return (scale if enc.axis < enc.block_axis else scale.T).ravel()
    return scale.ravel()


# -- fixtures ---------------------------------------------------------------------------------


CONFIGS = {
    "llama": AttentionConfig(rope="rotate_half", mask="causal", heads=4, kv_heads=2, layers=2, projection="matmul_bias"),
    "masked": AttentionConfig(mask="additive_input", heads=4, kv_heads=4, past=2, past_kv="full"),
    "gemm": AttentionConfig(projection="gemm", fused_qkv="split", mask="bool_input", nan_guard=True),
    "gemm_t": AttentionConfig(projection="gemm_transb", hidden=32, heads=2, kv_heads=2),
    "conv": AttentionConfig(layout="nchw", cross_attention=True, mask="none", kv_seq=6),
    "opaque": AttentionConfig(names="opaque", shuffle=True, lora_rank=2, rope="half_split"),
}


@pytest.fixture(scope="module")
def built_models():
    return {name: build(cfg, seed=2) for name, cfg in CONFIGS.items()}


def _values(built, seed: int) -> dict[str, np.ndarray]:
    return refimpl.run(built.model, built.make_feeds(seed), outputs="all")


# -- the file follows the format ----------------------------------------------------------------


def _check_061(doc: dict) -> None:
    assert set(doc) == {"version", "activation_encodings", "param_encodings", "quantizer_args"}
    for section in ("activation_encodings", "param_encodings"):
        assert isinstance(doc[section], dict)
        for entries in doc[section].values():
            assert isinstance(entries, list) and entries
            for e in entries:
                if e["dtype"] == "float":
                    assert e == {"bitwidth": 16, "dtype": "float"}
                    continue
                assert set(e) == {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}
                assert e["dtype"] == "int" and e["is_symmetric"] in ("True", "False")
                assert isinstance(e["offset"], float) and e["offset"] == round(e["offset"]) and e["offset"] <= 0
                assert e["min"] == pytest.approx(e["offset"] * e["scale"])
                assert e["max"] == pytest.approx(e["min"] + (2 ** e["bitwidth"] - 1) * e["scale"])


def _check_100(doc: dict) -> None:
    assert {"version", "activation_encodings", "param_encodings", "quantizer_args"} <= set(doc)
    assert set(doc) <= {"version", "activation_encodings", "param_encodings", "quantizer_args", "excluded_layers"}
    for section in ("activation_encodings", "param_encodings"):
        assert isinstance(doc[section], list)
        for e in doc[section]:
            assert isinstance(e["name"], str)
            if e["dtype"] == "FLOAT":
                assert e == {"name": e["name"], "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16}
                continue
            assert e["dtype"] == "INT" and isinstance(e["is_sym"], bool) and isinstance(e["bw"], int)
            assert e["enc_type"] in ("PER_TENSOR", "PER_CHANNEL", "PER_BLOCK", "LPBQ")
            assert len(e["scale"]) == len(e["offset"])
            assert all(isinstance(o, int) and o <= 0 for o in e["offset"])
            if e["enc_type"] == "PER_TENSOR":
                assert len(e["scale"]) == 1
            if e["enc_type"] in ("PER_BLOCK", "LPBQ"):
                assert e["block_size"] >= 1 and e["is_sym"]
            if e["enc_type"] == "LPBQ":
                assert e["compressed_bw"] < e["bw"]
                assert len(e["per_block_int_scale"]) % len(e["scale"]) == 0
                assert all(e["offset"][k] == -(2 ** (e["bw"] - 1)) for k in range(len(e["offset"])))


def _check_200(doc: dict) -> None:
    assert set(doc) == {"version", "producer", "encodings"}
    assert isinstance(doc["producer"]["package"], str)
    dtypes = {f"{s}int{b}" for s in ("", "u") for b in (4, 8, 16)} | {"int32"}
    for e in doc["encodings"]:
        assert e["output_dtype"] in dtypes
        assert ("y_scale" in e) != ("per_block_int_scale" in e)
        if "per_block_int_scale" in e:
            assert "per_channel_float_scale" in e and "block_size" in e and "axis" in e
        if "block_size" in e:
            assert isinstance(e["axis"], int) and e["axis"] >= 0
        if "y_zero_point" in e:
            assert np.any(np.array(e["y_zero_point"]) != 0), "all-zero zero points are omitted"
            assert np.shape(e["y_zero_point"]) == np.shape(e["y_scale"])
        if isinstance(e.get("y_scale"), list) and "block_size" not in e:
            assert "axis" in e  # per-channel


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("model", ["llama", "gemm", "conv"])
def test_files_follow_the_format(built_models, tmp_path, model, version):
    weights = "per_channel" if version == "0.6.1" else "mixed"
    enc = make_encodings(built_models[model], version=version, seed=1, weights=weights, float16_fraction=0.2,
                         activation_bitwidth="mixed")
    path = write_encodings(enc, tmp_path / "m.encodings")
    doc = json.loads(path.read_text())
    assert doc == enc.content and doc["version"] == version
    {"0.6.1": _check_061, "1.0.0": _check_100, "2.0.0": _check_200}[version](doc)
    if version != "2.0.0":
        args = doc["quantizer_args"]
        assert set(args) == {"activation_bitwidth", "dtype", "is_symmetric", "param_bitwidth", "per_channel_quantization", "quant_scheme"}
        if version == "0.6.1":
            assert args["is_symmetric"] in ("True", "False")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("weights", ["per_tensor", "per_channel", "per_block", "lpbq", "mixed"])
def test_the_file_says_what_the_numeric_form_simulates(built_models, version, weights):
    if version == "0.6.1" and weights in ("per_block", "lpbq"):
        with pytest.raises(ValueError, match="0.6.1"):
            make_encodings(built_models["llama"], version=version, weights=weights)
        return
    for model in ("llama", "gemm_t", "conv"):
        enc = make_encodings(built_models[model], version=version, seed=4, weights=weights, float16_fraction=0.1)
        decoded = decode(enc.content)
        assert set(decoded) == set(enc.quant)
        for name, q in enc.quant.items():
            d = decoded[name]
            assert d["float"] == (q.dtype == "float"), name
            if q.dtype == "float":
                continue
            assert d["bw"] == q.bitwidth, name
            np.testing.assert_array_equal(d["scale"].ravel(), _flat_in_channel_order(q, d.get("entry")), err_msg=name)
            offset = np.broadcast_to(np.asarray(q.offset, np.float32), np.shape(q.scale))
            np.testing.assert_array_equal(d["offset"].ravel(), _flat_in_channel_order(
                refimpl.QuantEncoding(q.dtype, q.bitwidth, q.symmetric, offset, offset, q.axis, q.block_axis, q.block_size),
                d.get("entry")), err_msg=name)
            if version != "2.0.0":
                assert (d["section"] == "activation_encodings") == (name in enc.activations), name
            elif d["signed"]:
                assert name in enc.params, f"{name}: parameters are signed in 2.0.0, activations unsigned"


# -- the numbers are right ----------------------------------------------------------------------


@pytest.mark.parametrize("model", list(CONFIGS))
def test_activation_ranges_cover_the_calibration_data(built_models, model):
    built = built_models[model]
    enc = make_encodings(built, version="1.0.0", seed=3, activation_bitwidth=16)
    fill = built.config.mask_fill
    for seed in enc.calibration_seeds:
        values = _values(built, seed)
        for name in enc.activations:
            q = enc.quant[name]
            if q.dtype == "float":
                continue
            x = values[name].astype(np.float64)
            x = x[x > fill / 20]  # mask fill is calibrated as the moderate fill instead
            lo = float(q.offset) * float(q.scale)
            hi = lo + (2**q.bitwidth - 1) * float(q.scale)
            assert lo <= 0.0 <= hi, name
            assert x.size == 0 or (x.min() >= lo - float(q.scale) and x.max() <= hi + float(q.scale)), name


@pytest.mark.parametrize("model", list(CONFIGS))
def test_mask_fill_does_not_blow_up_the_ranges(built_models, model):
    built = built_models[model]
    enc = make_encodings(built, version="2.0.0", seed=0)
    graph_inputs = {i.name for i in built.model.graph.input}
    for name in enc.activations:
        q = enc.quant[name]
        width = (2**q.bitwidth - 1) * float(q.scale)
        assert width < 200.0, f"{name}: calibrated range {width:.3g} wide (mask fill leaked in)"
        assert name not in graph_inputs or "mask" not in name


def test_softmax_outputs_have_offset_zero(built_models):
    built = built_models["llama"]
    softmax_outputs = [n.output[0] for n in built.model.graph.node if n.op_type == "Softmax"]
    enc = make_encodings(built, version="1.0.0", seed=0, activation_symmetric=True)
    assert softmax_outputs
    for name in softmax_outputs:
        assert float(enc.quant[name].offset) == 0.0 and not np.signbit(enc.quant[name].offset)


def _spec_axes(node, blocked: bool) -> tuple[int, int | None]:
    """(channel axis, block axis) from AIMET_ENCODINGS.md "Per-channel axes of weights"."""
    if node.op_type == "Conv":
        axes = (0, 1)
    elif node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
        axes = (0, 1)
    else:  # MatMul [in, out], Gemm transB=0
        axes = (1, 0)
    return axes if blocked else (axes[0], None)


@pytest.mark.parametrize("weights", ["per_channel", "per_block", "lpbq"])
@pytest.mark.parametrize("model", ["llama", "gemm", "gemm_t", "conv"])
def test_weight_grids_end_at_the_absmax_of_their_channel_or_block(built_models, model, weights):
    """Symmetric: the largest |w| of each channel (block) is on the grid's end (LPBQ: within
    it), and every weight is within half a step of its grid. A wrong axis breaks both."""
    built = built_models[model]
    enc = make_encodings(built, version="1.0.0", seed=0, weights=weights)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in built.model.graph.initializer}
    layers = [n for n in built.model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in inits]
    assert layers
    blocked = 0
    for node in layers:
        name = node.input[1]
        q, w = enc.quant[name], inits[name]
        assert (q.axis, q.block_axis if q.block_size else None) == _spec_axes(node, bool(q.block_size)), name
        scale = np.asarray(q.scale, np.float64)
        if q.block_size:
            blocked += 1
            moved = np.moveaxis(np.abs(w), (q.axis, q.block_axis), (0, 1))
            absmax = moved.reshape(moved.shape[0], moved.shape[1] // q.block_size, q.block_size, -1).max(axis=(2, 3))
            if weights == "lpbq":
                assert np.all(absmax <= 7 * scale * (1 + 1e-6)), name
            else:
                np.testing.assert_allclose(7 * scale, absmax, rtol=1e-6, err_msg=name)
            step = np.moveaxis(np.repeat(scale, q.block_size, axis=1)[:, :, None], (0, 1), (q.axis, q.block_axis))
            step = step.reshape([w.shape[a] if a in (q.axis, q.block_axis) else 1 for a in range(w.ndim)])
        else:
            absmax = np.moveaxis(np.abs(w), q.axis, 0).reshape(w.shape[q.axis], -1).max(axis=1)
            np.testing.assert_allclose(127 * scale, absmax, rtol=1e-6, err_msg=name)
            step = np.moveaxis(scale.reshape(-1, *([1] * (w.ndim - 1))), 0, q.axis)
        err = np.abs(refimpl.quantize_dequantize(w, q) - w)
        assert np.all(err <= step / 2 * (1 + 1e-6)), name
    assert blocked or weights == "per_channel"


def test_lpbq_block_scales_are_integer_multiples_of_the_channel_scale(built_models):
    enc = make_encodings(built_models["llama"], version="1.0.0", seed=0, weights="lpbq")
    lpbq = [e for e in enc.content["param_encodings"] if e["enc_type"] == "LPBQ"]
    assert lpbq
    for e in lpbq:
        ints = np.array(e["per_block_int_scale"])
        assert ints.min() >= 1 and ints.max() <= 2 ** (e["bw"] - e["compressed_bw"])
        assert ints.max() == 2 ** (e["bw"] - e["compressed_bw"])  # the largest block sets the channel scale
        q = enc.quant[e["name"]]
        expected = ints.reshape(len(e["scale"]), -1) * np.array(e["scale"], np.float32)[:, None]
        np.testing.assert_array_equal(np.asarray(q.scale), expected.astype(np.float32))


def test_bias_scale_is_input_scale_times_weight_scale(built_models):
    built = built_models["gemm_t"]
    enc = make_encodings(built, version="2.0.0", seed=0)
    gemms = [n for n in built.model.graph.node if n.op_type == "Gemm" and len(n.input) == 3]
    assert gemms
    for node in gemms:
        x, w, b = node.input
        expected = float(enc.quant[x].scale) * np.asarray(enc.quant[w].scale, np.float64)
        np.testing.assert_allclose(np.asarray(enc.quant[b].scale, np.float64), expected, rtol=1e-6)
        entry = next(e for e in enc.content["encodings"] if e["name"] == b)
        assert entry["output_dtype"] == "int32" and "y_zero_point" not in entry


@pytest.mark.parametrize("model", list(CONFIGS))
def test_simulated_quantization_stays_close_to_float(built_models, model):
    """16-bit activations, 8-bit per-channel weights, on the calibration data: the model still
    computes what it did (so masks still mask), but not exactly (so quantization is applied)."""
    built = built_models[model]
    enc = make_encodings(built, version="1.0.0", seed=0, activation_bitwidth=16, bias=False)
    feeds = built.make_feeds(enc.calibration_seeds[0])
    truth = built.reference(feeds)
    simulated = refimpl.run(built.model, feeds, encodings=enc.quant, dtype=np.float64)
    for name, expected in truth.items():
        rel = float(np.sqrt(np.mean((simulated[name] - expected) ** 2)) / np.sqrt(np.mean(expected**2)))
        assert 1e-6 < rel < 3e-2, f"{name}: relative RMS error {rel:.2e}"


# -- version details ------------------------------------------------------------------------------


def test_2_0_0_carries_data_movement_outputs_and_no_float_entries(built_models):
    built = built_models["llama"]
    reshapes = {n.output[0] for n in built.model.graph.node if n.op_type in ("Reshape", "Transpose")}
    v2 = make_encodings(built, version="2.0.0", seed=0, float16_fraction=0.5)
    v1 = make_encodings(built, version="1.0.0", seed=0, float16_fraction=0.5)
    assert reshapes & v2.activations and not reshapes & v1.activations
    assert all(q.dtype == "int" for q in v2.quant.values())
    assert any(q.dtype == "float" for q in v1.quant.values())


def test_excluded_layers_are_listed_and_left_unquantized(built_models):
    built = built_models["llama"]
    enc = make_encodings(built, version="1.0.0", seed=5, exclude_nodes=3)
    assert len(enc.content["excluded_layers"]) == 3
    for node in built.model.graph.node:
        if node.name in enc.excluded_layers:
            assert not set(node.output) & set(enc.quant)


def test_matmul_outputs_before_their_bias_add_have_no_encoding_when_grouped(built_models):
    built = built_models["llama"]
    nodes = built.model.graph.node
    producers = {o: n for n in nodes for o in n.output}
    grouped = [n.input[0] for n in nodes if n.op_type == "Add" and producers.get(n.input[0]) is not None
               and producers[n.input[0]].op_type == "MatMul"
               and n.input[1] in {t.name for t in built.model.graph.initializer}]
    assert grouped
    assert not set(grouped) & set(make_encodings(built, seed=0).quant)
    assert set(grouped) <= set(make_encodings(built, seed=0, group_matmul_add=False).quant)


def test_same_seed_same_file_other_seed_other_file(built_models):
    built = built_models["opaque"]
    a = make_encodings(built, version="1.0.0", seed=7, weights="mixed", activation_bitwidth="mixed")
    b = make_encodings(built, version="1.0.0", seed=7, weights="mixed", activation_bitwidth="mixed")
    c = make_encodings(built, version="1.0.0", seed=8, weights="mixed", activation_bitwidth="mixed")
    assert json.dumps(a.content) == json.dumps(b.content) != json.dumps(c.content)


def test_bad_options_are_refused_with_a_reason(built_models):
    built = built_models["llama"]
    with pytest.raises(ValueError, match="version"):
        make_encodings(built, version="3.0.0")
    with pytest.raises(ValueError, match="symmetric"):
        make_encodings(built, weights="lpbq", weight_symmetric=False)
    with pytest.raises(TypeError):
        make_encodings(built, no_such_option=1)


@settings(max_examples=10)
@given(attention_configs(), st.sampled_from(VERSIONS), st.integers(0, 3))
def test_every_drawn_model_gets_a_valid_file(cfg, version, seed):
    note(repr(cfg))
    built = build(cfg, seed=seed)
    enc = make_encodings(built, version=version, seed=seed, weights="per_channel" if version == "0.6.1" else "mixed",
                         activation_bitwidth="mixed")
    {"0.6.1": _check_061, "1.0.0": _check_100, "2.0.0": _check_200}[version](json.loads(json.dumps(enc.content)))
    assert set(decode(enc.content)) == set(enc.quant)
    assert enc.params, "every model has weights"
    assert EncodingScheme().validate(version)


@settings(max_examples=10)
@given(attention_configs(dtype="float32"), st.sampled_from(VERSIONS), st.data())
def test_drawn_encodings_simulate_on_drawn_models(cfg, version, data):
    """Every drawn scheme on every drawn model gives a numeric form refimpl can simulate,
    and on the calibration data the simulated model stays in the float one's range (RMS error
    below the output's own RMS: 8-bit activations and 4-bit weights are coarse, but a leaked
    mask fill or a wrong axis is far worse)."""
    from fuzz.strategies import encoding_schemes

    scheme = data.draw(encoding_schemes(version))
    note(f"{cfg!r}\n{scheme!r}")
    built = build(cfg, seed=1)
    enc = make_encodings(built, version=version, seed=2, scheme=scheme)
    feeds = built.make_feeds(enc.calibration_seeds[0])
    truth = built.reference(feeds)
    simulated = refimpl.run(built.model, feeds, encodings=enc.quant, dtype=np.float64)
    for name, expected in truth.items():
        assert np.all(np.isfinite(simulated[name])), name
        rel = float(np.sqrt(np.mean((simulated[name] - expected) ** 2)) / np.sqrt(np.mean(expected**2)))
        assert rel < 1.0, f"{name}: relative RMS error {rel:.2f}"
