"""Read then write in the same version gives the same JSON: every fixture, through the API
and through a file; and what the internal form says about each fixture, checked against
the numbers written in it by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mha2sha.encodings import read_encodings, to_object, write_encodings
from tests.encodings.helpers import FIXTURES, fixture, load_json, strict_equal


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_round_trips_exactly(name):
    doc = load_json(fixture(name))
    strict_equal(to_object(read_encodings(fixture(name))), doc)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_round_trips_through_a_file(name, tmp_path):
    out = tmp_path / "out.encodings"
    notes = write_encodings(read_encodings(fixture(name)), out)
    assert notes == []
    strict_equal(load_json(out), load_json(fixture(name)))
    assert [p.name for p in tmp_path.iterdir()] == ["out.encodings"]  # no temporary left


def test_round_trip_keeps_key_order_of_the_top_level():
    doc = load_json(fixture("v0_6_1_variants.encodings"))
    assert list(to_object(read_encodings(doc))) == list(doc)


def test_0_6_1_fields():
    enc = read_encodings(fixture("v0_6_1.encodings"))
    assert enc.version == "0.6.1"
    x = enc["x"]
    assert (x.kind, x.bitwidth, x.symmetric, x.section) == ("per_tensor", 8, False, "activation")
    assert (x.scale[()], x.offset[()], x.min[()], x.max[()]) == (0.25, -37.0, -9.25, 54.5)
    q = enc["q.weight"]
    assert (q.kind, q.channels, q.symmetric, q.section) == ("per_channel", 4, True, "param")
    assert q.scale.tolist() == [0.01, 0.02, 0.04, 0.08]
    assert enc["attn"].kind == "float" and enc["attn"].bitwidth == 16
    assert enc.top["quantizer_args"]["is_symmetric"] == "True"
    assert enc.top["comment"].startswith("hand-written")


def test_0_6_1_variants_keep_their_spelling():
    enc = read_encodings(fixture("v0_6_1_variants.encodings"))
    assert enc["x"].symmetric is False and enc["x"].min is None  # no min/max in the file
    assert enc["probs"].symmetric is None  # the file does not say
    assert [c["calibration"] for c in enc["q.weight"].channel_extras] == ["minmax", "minmax", "mse", "mse"]
    assert enc.top["quantizer_args"]["per_channel_quantization"] is True


def test_1_0_0_fields():
    enc = read_encodings(fixture("v1_0_0.encodings"))
    v = enc["v.weight"]
    assert (v.kind, v.block_size, v.channels) == ("per_block", 4, None)  # 1.0.0 stores no channel count
    assert v.with_channels(4).scale.tolist() == [[0.01, 0.02], [0.03, 0.04], [0.05, 0.06], [0.07, 0.08]]
    o = enc["o.weight"]
    assert (o.kind, o.bitwidth, o.decompressed_bitwidth, o.channels, o.blocks) == ("lpbq", 4, 8, 4, 2)
    assert o.per_block_int_scale.tolist() == [[1, 16], [2, 15], [3, 14], [4, 13]]
    assert enc["k.bias"].offset.tolist() == [-2147483648] * 4
    assert enc["ln.weight"].extras == {"comment": "unknown entry fields are kept"}
    assert enc.top["excluded_layers"] == ["/ln/LayerNormalization"]


def test_2_0_0_fields():
    enc = read_encodings(fixture("v2_0_0.encodings"))
    # uint: offset = -zero point; int: offset = -zero point - 2^(bw-1)
    assert enc["x"].offset[()] == -37 and enc["x"].signed is False
    assert enc["probs"].offset[()] == 0
    assert enc["k.weight"].offset.tolist() == [-3, -8, -12, 0]
    assert enc["q.weight"].offset.tolist() == [-128] * 4 and enc["q.weight"].channel_axis == 1
    assert enc["k.bias"].offset.tolist() == [-(2**31)] * 4
    v = enc["v.weight"]  # nested [in/block, out] for a Gemm transB=0 weight
    assert (v.channel_axis, v.block_axis, v.rank) == (1, 0, 2)
    assert v.scale.tolist() == [[0.01, 0.02], [0.03, 0.04], [0.05, 0.06], [0.07, 0.08]]
    o = enc["o.weight"]
    assert (o.channel_axis, o.block_axis, o.rank) == (0, 1, 4)
    assert o.per_block_int_scale.tolist() == [[1, 16], [2, 15], [3, 14], [4, 13]]
    assert o.scale.tolist() == [0.001, 0.002, 0.003, 0.004]
    assert {"x4", "kT"} <= set(enc.tensors)  # Reshape / Transpose outputs


def test_2_1_0_lpbq_meta_form_means_the_same_as_2_0_0():
    meta = read_encodings(fixture("v2_1_0.encodings"))["o.weight"]
    fields = read_encodings(fixture("v2_0_0.encodings"))["o.weight"]
    a = meta.to_quant(shape=(4, 8, 1, 1))
    b = fields.to_quant(shape=(4, 8, 1, 1))
    np.testing.assert_array_equal(a.scale, b.scale)
    assert (a.axis, a.block_axis, a.block_size, a.bitwidth) == (b.axis, b.block_axis, b.block_size, b.bitwidth) == (0, 1, 4, 4)
    # effective block scale = per_block_int_scale * channel scale (float32, as AIMET)
    np.testing.assert_array_equal(a.scale[3], np.float32([4, 13]) * np.float32(0.004))


def test_2_1_0_written_as_2_0_0_uses_the_lpbq_fields():
    obj = to_object(read_encodings(fixture("v2_1_0.encodings")), version="2.0.0")
    o = next(e for e in obj["encodings"] if e["name"] == "o.weight")
    expected = next(e for e in load_json(fixture("v2_0_0.encodings"))["encodings"] if e["name"] == "o.weight")
    assert set(o) == set(expected)
    assert o["per_block_int_scale"] == expected["per_block_int_scale"]
    assert o["per_channel_float_scale"] == expected["per_channel_float_scale"]
