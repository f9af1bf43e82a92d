"""Bad input: one clear line, exit code 2, nothing written, inputs untouched.

Each case runs the installed console script in a subprocess, as users do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.cli.conftest import tree_hashes

CLI = [sys.executable, "-m", "mha2sha"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, needle: str, out: Path) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert lines[0].startswith("mha2sha: error: ") and needle in lines[0], lines[0]
    assert not out.exists() or not any(p.suffix in (".onnx", ".encodings", ".json") for p in out.rglob("*")), list(out.rglob("*"))


def test_missing_file(tmp_path):
    assert_refused(run("convert", tmp_path / "nope.onnx", "-o", tmp_path / "out"), "file not found", tmp_path / "out")


def test_random_bytes(tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(os.urandom(4096))
    assert_refused(run("convert", bad, "-o", tmp_path / "out"), str(bad), tmp_path / "out")


def test_truncated_protobuf(tiny_model, tmp_path):
    data = tiny_model.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    assert_refused(run("convert", cut, "-o", tmp_path / "out"), str(cut), tmp_path / "out")


def _rewrite_location(model_path: Path, location: str, **fields: str) -> None:
    proto = onnx.load(model_path, load_external_data=False)
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
                if entry.key in fields:
                    entry.value = fields.pop(entry.key)
            for k, v in fields.items():
                e = t.external_data.add()
                e.key, e.value = k, v
            break
    onnx.save(proto, model_path)


@pytest.mark.parametrize(
    "location, needle",
    [
        ("/etc/passwd", "not a relative path"),
        ("../secret.bin", "leaves the model folder"),
        ("sub/../../secret.bin", "leaves the model folder"),
    ],
)
def test_external_data_outside_the_model_folder(tiny_model, tmp_path, location, needle):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 1_000_000)
    _rewrite_location(tiny_model, location)
    before = tree_hashes(tiny_model.parent)
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), needle, tmp_path / "out")
    assert tree_hashes(tiny_model.parent) == before


def test_external_data_symlink_leading_outside(tiny_model, tmp_path):
    outside = tmp_path / "elsewhere.bin"
    shutil.copy(tiny_model.parent / "tiny.onnx.data", outside)
    link = tiny_model.parent / "link.bin"
    link.symlink_to(outside)
    _rewrite_location(tiny_model, "link.bin")
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), "resolves outside", tmp_path / "out")


def test_missing_external_data(tiny_model, tmp_path):
    (tiny_model.parent / "tiny.onnx.data").unlink()
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), "is missing", tmp_path / "out")


def test_short_external_data(tiny_model, tmp_path):
    data = tiny_model.parent / "tiny.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), "too short", tmp_path / "out")


def test_absurd_length_is_refused_without_allocating(tiny_model, tmp_path):
    _rewrite_location(tiny_model, "tiny.onnx.data", length=str(1 << 60))
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), "declares", tmp_path / "out")


def test_offset_beyond_the_file(tiny_model, tmp_path):
    _rewrite_location(tiny_model, "tiny.onnx.data", offset=str(1 << 40))
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), "too short", tmp_path / "out")


def test_unknown_external_data_key(tiny_model, tmp_path):
    _rewrite_location(tiny_model, "tiny.onnx.data", basepath="/etc")
    assert_refused(run("convert", tiny_model, "-o", tmp_path / "out"), "unknown external data keys", tmp_path / "out")


def test_output_folder_that_cannot_be_created(tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_refused(run("convert", tiny_model, "-o", blocker / "out"), "cannot create the output folder", blocker / "out")


def test_never_overwrites_the_input(tiny_model):
    before = tree_hashes(tiny_model.parent)
    proc = run("convert", tiny_model, "-o", tiny_model.parent, "--name", "tiny")
    assert proc.returncode == 2, proc.stderr
    assert "refusing to overwrite an input file" in proc.stderr
    assert tree_hashes(tiny_model.parent) == before


def test_output_name_cannot_escape_the_output_folder(tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = run("convert", tiny_model, "-o", out, "--name", "../../escaped", "--no-verification")
    assert proc.returncode in (0, 1), proc.stderr
    assert not list(tmp_path.rglob("*escaped*.onnx")) or all(out in p.parents for p in tmp_path.rglob("*escaped*.onnx"))
    assert list(out.glob("*.onnx")), "the model is written inside the output folder"


def test_no_attention_exit_code_3_with_table(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), path)
    proc = run("convert", path, "-o", tmp_path / "out")
    assert proc.returncode == 3, proc.stderr
    assert "no attention" in proc.stderr
    inspect = run("inspect", path)
    assert inspect.returncode == 3
    assert "no Softmax or Attention op" in inspect.stdout
