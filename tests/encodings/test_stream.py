"""The streaming reader (mha2sha/encodings/stream.py) against the standard library's
``json.loads``: the same numbers and entries whatever the chunk size (values cut at every
place), the same error positions, every duplicate key refused, nothing accepted that JSON
refuses."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from mha2sha.encodings import formats, read_encodings, stream, to_object
from mha2sha.encodings.errors import EncodingsError
from tests.encodings.helpers import FIXTURES, fixture, load_json, strict_equal


def _read(text: str, chunk: int):
    reader = stream.Reader(io.BytesIO(text.encode("utf-8")), chunk=chunk)
    return formats.parse_items(stream.top_level(reader, formats.SECTIONS))


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("name", FIXTURES)
def test_any_chunk_size_reads_what_json_loads_reads(name, chunk):
    text = fixture(name).read_text()
    strict_equal(to_object(_read(text, chunk)), load_json(fixture(name)))


def test_version_after_the_sections_and_sections_in_any_order():
    doc = load_json(fixture("v0_6_1.encodings"))
    moved = {k: doc[k] for k in reversed(list(doc))}  # "version" last, params before activations
    text = json.dumps(moved, indent=1)
    strict_equal(to_object(_read(text, 5)), moved)


def test_numbers_become_exact_numpy_arrays():
    doc = {"version": "1.0.0", "activation_encodings": [], "param_encodings": [
        {"name": "w", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True,
         "scale": [0.1, 1e-300, 3.0000000000000004], "offset": [-128, -128, -128]},
        {"name": "m", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True,
         "scale": [0.5, 0.25], "offset": [-128, -128.0]},  # ints mixed with floats: kept as written
    ]}
    enc = _read(json.dumps(doc), 4)
    assert enc["w"].scale.dtype == np.float64 and enc["w"].offset.dtype == np.int64
    assert enc["w"].scale.tolist() == [0.1, 1e-300, 3.0000000000000004]
    assert [type(v) for v in enc["m"].offset.tolist()] == [int, float]
    strict_equal(to_object(enc), doc)


@pytest.mark.parametrize("text", [
    '{"version": "1.0.0", "activation_encodings": [], "param_encodings": [{"name": "w", "dtype": "INT",',
    '{"version": "1.0.0", "activation_encodings": [,]}',
    '{"version": "1.0.0"} {}',
    '{"version": "1.0.0", "param_encodings": [{"name": "w"]}',
    '{"version": "1.0.0", "param_encodings": []]',
    '{"version": "1.0.0", "param_encodings": [{"name": "w", "bw": 8 "x": 1}]}',
    '{"version" "1.0.0"}',
    '{"version": "1.0.0",\n "param_encodings": [\n  {"name": "w\x01"}]}',
    "",
    "[1, 2",
    '{"version": 12',
])
@pytest.mark.parametrize("chunk", [2, 1 << 20])
def test_invalid_json_is_refused_where_json_refuses_it(tmp_path, text, chunk):
    """(An entry is judged as soon as it is read: a wrong entry before a syntax error is
    reported as the wrong entry; both exit 2.)"""
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(stream.JsonError) as got:
        _read(text, chunk)
    assert str(got.value).startswith(f"line {expected.value.lineno} column {expected.value.colno}:")


@pytest.mark.parametrize("text, key", [
    ('{"version": "1.0.0", "version": "1.0.0"}', "version"),
    ('{"version": "0.6.1", "param_encodings": {"w": [{"bitwidth": 16, "dtype": "float"}], "w": []}}', "w"),
    ('{"version": "1.0.0", "param_encodings": [{"name": "w", "name": "v"}]}', "name"),
    ('{"version": "0.6.1", "param_encodings": {"w": [{"scale": 1.0, "scale": 2.0}]}}', "scale"),
    ('{"param_encodings": {"w": [{"bitwidth": 8, "offset": 1, "offset": 2}]}, "version": "0.6.1"}', "offset"),
    ('{"version": "2.1.0", "encodings": [{"name": "w", "y_scale": {"x": [1], "x": [2]}}]}', "x"),
])
def test_a_key_written_twice_is_refused_at_every_depth(tmp_path, text, key):
    path = tmp_path / "dup.encodings"
    path.write_text(text)
    with pytest.raises(EncodingsError, match=f"key '{key}' appears twice in one object"):
        read_encodings(path)


def test_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "bad.encodings"
    path.write_bytes(b'{"version": "1.0.0", "x": "\xff"}')
    with pytest.raises(EncodingsError, match="not UTF-8 text at byte 27"):
        read_encodings(path)


def test_a_file_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.encodings"
    path.write_text("[1, 2, 3]")
    with pytest.raises(EncodingsError, match="a JSON object is expected, got list"):
        read_encodings(path)


def test_a_value_longer_than_many_chunks_is_read_in_linear_reads():
    """A single entry larger than the chunk: the reads double, so the entry is parsed a
    logarithmic number of times, not once per chunk."""
    scales = [0.001 * (k + 1) for k in range(20000)]
    doc = {"version": "2.0.0", "encodings": [{"name": "w", "output_dtype": "int8", "y_scale": scales,
                                              "y_zero_point": [0] * 20000, "axis": 0}]}
    text = json.dumps(doc)
    reads = []

    class Counting(io.BytesIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    reader = stream.Reader(Counting(text.encode()), chunk=1024)
    enc = formats.parse_items(stream.top_level(reader, formats.SECTIONS))
    assert enc["w"].scale.tolist() == scales
    assert len(reads) < 12, reads  # 1024 * 2^k reaches the ~260 KB entry in ~9 reads


def test_a_byte_order_mark_is_refused_as_json_refuses_it(tmp_path):
    path = tmp_path / "bom.encodings"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"version": "1.0.0"}).encode())
    with pytest.raises(json.JSONDecodeError, match="BOM"):
        json.loads(path.read_bytes().decode("utf-8"))
    with pytest.raises(EncodingsError, match="line 1 column 1: Unexpected UTF-8 BOM"):
        read_encodings(path)
