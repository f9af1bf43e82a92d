"""The streamed data file and the model writer.

Oracles: the bytes appended, kept aside by the test (DataFile); numpy slices of the input's
weights computed here and onnxruntime on the original model (write_model and the
conversion, with and without --link-weights)."""

from __future__ import annotations

import copy
import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert
from mha2sha.graph.datafile import DataFile
from tests.llm.helpers import close, run_ort

# (kind, size): bytes from memory, or a range of a source file.
_pieces = st.lists(st.tuples(st.sampled_from(["bytes", "file"]), st.integers(0, 40_000)), max_size=12)


@pytest.mark.parametrize("direct", [True, False])
@given(pieces=_pieces)
def test_data_file_holds_exactly_what_was_appended(tmp_path_factory, direct, pieces):
    tmp = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(len(pieces))
    source = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (tmp / "source").write_bytes(source)
    expected = bytearray()
    offsets = []
    fd = os.open(tmp / "source", os.O_RDONLY)
    try:
        # Two buffers of 8 KiB: most pieces cross a buffer boundary.
        with DataFile(tmp / "out", buffer_bytes=8192, direct=direct) as data:
            for kind, size in pieces:
                if kind == "bytes":
                    chunk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
                    offsets.append(data.append(chunk))
                else:
                    start = int(rng.integers(0, len(source) - min(size, len(source)) + 1))
                    size = min(size, len(source) - start)
                    chunk = source[start:start + size]
                    offsets.append(data.append_from(fd, start, size))
                assert offsets[-1] == len(expected)
                expected += chunk
    finally:
        os.close(fd)
    assert (tmp / "out").read_bytes() == bytes(expected)


def test_data_file_reports_a_full_disk(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    data = DataFile("/dev/full", buffer_bytes=8192)
    with pytest.raises(OSError) as caught:
        for _ in range(8):  # more than the two buffers: the error reaches the caller
            data.append(bytes(8192))
        data.close()
    assert caught.value.errno == errno.ENOSPC
    data.abort()


def test_data_file_source_shorter_than_asked(tmp_path):
    (tmp_path / "short").write_bytes(b"x" * 100)
    fd = os.open(tmp_path / "short", os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="early"), DataFile(tmp_path / "out", buffer_bytes=8192) as data:
            data.append_from(fd, 50, 100)
    finally:
        os.close(fd)


def _external_model(tmp_path: Path, **overrides):
    # hidden 128: a head's slice of a projection (128 x 32 floats) is above the 1 KiB kept inline.
    cfg = AttentionConfig(**{"heads": 4, "kv_heads": 2, "hidden": 128, "mlp": True, "layers": 2, **overrides})
    built = build(cfg, seed=5)
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    onnx.save(copy.deepcopy(built.model), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=1024)
    return built, path


def _weights(path: Path) -> dict[str, np.ndarray]:
    """Initializers read from the external-data fields with numpy (not by our reader)."""
    model = onnx.load(path, load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            out[t.name] = numpy_helper.to_array(t)
            continue
        info = {e.key: e.value for e in t.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        with open(path.parent / info["location"], "rb") as fh:
            fh.seek(int(info.get("offset", 0)))
            raw = fh.read(int(info["length"]))
        out[t.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(t.dims))
    return out


def _run_ort(path: Path, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("link", [False, True], ids=["copy", "link"])
@pytest.mark.parametrize("overrides", [dict(projection="matmul"), dict(projection="gemm_transb"), dict(layout="nchw")],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_written_weights_are_the_inputs_slices(tmp_path, link, overrides):
    """Every weight of the output equals the input weight it stands for, or the per-head
    slice of it that the split record names, read back by onnx (not by our reader)."""
    built, path = _external_model(tmp_path, **overrides)
    original = _weights(path)
    before = (path.parent / "m.onnx.data").read_bytes()
    records = list(_split_records(path))
    result = convert(path, tmp_path / "out", ConvertOptions(link_weights=link, verify=True))
    assert result.ok, result.report.get("blocks")
    assert (path.parent / "m.onnx.data").read_bytes() == before  # the input is never changed
    written = _weights(result.model_path)
    mapping = __import__("json").loads(result.mapping_path.read_text())["param_encodings"]
    sliced = {target for targets in mapping.values() for target in targets}
    unchanged = [n for n in written if n in original and n not in sliced]
    assert unchanged, "the model should keep some weights unchanged (MLP, norms)"
    for name in unchanged:
        np.testing.assert_array_equal(written[name], original[name], err_msg=name)
    assert records
    for source, target, axis, indices in records:
        np.testing.assert_array_equal(written[target], np.take(original[source], indices, axis=axis), err_msg=target)
    stats = result.report["write"]
    if link and _can_clone(tmp_path):
        assert stats["linked"] == "clone" and stats["linked_bytes"] > 0
    elif link:  # no copy-on-write here: copied, and the report says why
        assert stats["linked"] is False and "cannot clone" in stats["link_error"] and stats["copied_bytes"] > 0
    else:
        assert stats["linked_bytes"] == 0 and stats["copied_bytes"] > 0
    feeds = built.make_feeds(2)
    got = _run_ort(result.model_path, feeds)
    want = run_ort(built.model, feeds)
    for name in built.output_names:
        assert close(got[name], want[name], rtol=1e-5, atol=1e-5), name


def _can_clone(folder: Path) -> bool:
    """Whether ``folder``'s file system makes copy-on-write clones (FICLONE)."""
    import fcntl

    src, dst = folder / ".clone-probe-src", folder / ".clone-probe-dst"
    src.write_bytes(b"x" * 4096)
    try:
        with open(src, "rb") as a, open(dst, "wb") as b:
            fcntl.ioctl(b.fileno(), 0x40049409, a.fileno())
        return True
    except OSError:
        return False
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def _links(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_nlink for f in folder.iterdir() if f.is_file()}


@pytest.mark.parametrize("overrides", [dict(projection="matmul"), dict(layout="nchw")], ids=["matmul", "nchw"])
def test_link_weights_output_loads_and_converts_again(tmp_path, overrides):
    """A --link-weights output is ordinary files (one link each: a clone, or a copy where the
    file system cannot clone), so onnx.load reads it with its data, the input keeps one link,
    and the output converts again without --allow-hard-links (AR-2 first, then its 2-head
    blocks to single-head); the second conversion verifies and equals the original model in
    onnxruntime."""
    built, path = _external_model(tmp_path, **overrides)
    first = convert(path, tmp_path / "out", ConvertOptions(link_weights=True, heads_per_block=2))
    assert first.ok, first.report.get("blocks")
    assert set(_links(first.model_path.parent).values()) == {1}
    assert set(_links(path.parent).values()) == {1}
    loaded = onnx.load(first.model_path)  # external data included: onnx's own link checks
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    onnx.checker.check_model(str(first.model_path), full_check=True)
    again = convert(first.model_path, tmp_path / "again", ConvertOptions(link_weights=True))
    assert again.ok and again.exit_code == 0, again.report.get("blocks")
    sha = onnx.load(again.model_path)
    assert sum(n.op_type == "Softmax" for n in sha.graph.node) == 2 * 4
    feeds = built.make_feeds(2)
    want = run_ort(built.model, feeds)
    got = _run_ort(again.model_path, {k: v for k, v in feeds.items()})
    for name in built.output_names:
        assert close(got[name], want[name], rtol=1e-5, atol=1e-5), name


def test_a_hard_linked_input_is_still_refused(tmp_path):
    """What onnx calls a hard-link attack (the input's data file has a second name, e.g. a
    file the user may not read linked into their folder) is refused before anything is
    written, --link-weights or not."""
    from mha2sha.errors import InputError

    _, path = _external_model(tmp_path)
    os.link(path.parent / "m.onnx.data", tmp_path / "other-name")
    for link in (False, True):
        with pytest.raises(InputError, match="hard links"):
            convert(path, tmp_path / f"out{link}", ConvertOptions(link_weights=link))
        assert not (tmp_path / f"out{link}").exists() or not any((tmp_path / f"out{link}").iterdir())


def _split_records(path: Path):
    """(source, target, axis, indices) of every sliced projection weight, from the split."""
    from mha2sha.graph.io import load_model
    from mha2sha.pipeline import split_model

    result = split_model(load_model(path).model)
    for record in result.records:
        for ps in record.params:
            if ps.axis >= 0 and len(ps.source_shape) >= 2:
                yield ps.source, ps.target, ps.axis, list(ps.indices)


def test_contiguous_head_slices_are_byte_ranges_of_the_input(tmp_path):
    """Conv-layout weights: a head's output channels are contiguous rows, so with
    --link-weights they are referenced in the linked input file, not written."""
    if not _can_clone(tmp_path):
        pytest.skip("the file system of the test folder cannot clone files (copy-on-write): --link-weights copies here")
    _, path = _external_model(tmp_path, layout="nchw")
    result = convert(path, tmp_path / "out", ConvertOptions(link_weights=True))
    assert result.ok
    model = onnx.load(result.model_path, load_external_data=False)
    locations = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            locations[t.name] = {e.key: e.value for e in t.external_data}["location"]
    mapping = __import__("json").loads(result.mapping_path.read_text())["param_encodings"]
    per_head = [target for targets in mapping.values() for target in targets if target in locations]
    assert per_head
    assert all(locations[name].endswith(".weights") for name in per_head), {n: locations[n] for n in per_head}
    assert result.report["write"]["written_bytes"] < result.report["write"]["linked_bytes"]


@pytest.mark.parametrize("read", ["whole source", "column blocks"])
def test_linear_to_conv_weights_stream_from_the_input(tmp_path, monkeypatch, read):
    """--replace-linear-with-conv with external data: every Conv weight is the input's
    MatMul weight transposed to [O, I, 1, 1] (per-head ones: of the head's slice), written
    from the input file rather than held in memory, in chunks of output rows; outputs as
    the original's. "column blocks": every source mapped and transposed a few columns at a
    time, a few rows at a time (as an MLP weight or LM head larger than the writer's
    whole-source limit is)."""
    from mha2sha.graph import writer

    if read == "column blocks":
        monkeypatch.setattr(writer, "_WHOLE_SOURCE_BYTES", 0)
        monkeypatch.setattr(writer, "_CHUNK_BYTES", 3000)  # 5-6 columns of a 128-row source: partial last chunks
        monkeypatch.setattr(writer, "_BAND_BYTES", 2000)  # a few rows at a time: partial last bands
    else:
        monkeypatch.setattr(writer, "_CHUNK_BYTES", 10_000)
    calls = []
    chunked = writer._Producer._derive_transposed
    monkeypatch.setattr(writer._Producer, "_derive_transposed", lambda self, *a: calls.append(1) or chunked(self, *a))
    built, path = _external_model(tmp_path)
    original = _weights(path)
    records = {target: (source, axis, indices) for source, target, axis, indices in _split_records(path)}
    result = convert(path, tmp_path / "out", ConvertOptions(replace_linear_with_conv=True))
    assert result.ok, result.report.get("blocks")
    written = _weights(result.model_path)
    convs = {n: w for n, w in written.items() if w.ndim == 4}
    assert convs
    for name, w in convs.items():
        if name in original:  # an MLP weight that kept its name
            np.testing.assert_array_equal(w, original[name].T.reshape(w.shape), err_msg=name)
        elif name in records:  # a head's projection
            source, axis, indices = records[name]
            want = np.take(original[source], indices, axis=axis)
            np.testing.assert_array_equal(w, want.T.reshape(w.shape), err_msg=name)
    assert any(n in original for n in convs) and any(n in records for n in convs)
    assert len(calls) >= len(convs) // 4  # the Conv weights went through the chunked transpose
    assert result.report["write"]["written_bytes"] > 0
    feeds = built.make_feeds(2)
    got = _run_ort(result.model_path, feeds)
    want = run_ort(built.model, feeds)
    for name in built.output_names:
        assert close(got[name], want[name], rtol=1e-5, atol=1e-5), name
