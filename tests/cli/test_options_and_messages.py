"""The Python options carry the command line's names (old names still accepted), every option
is documented, -v/-q set the verbosity, and every path a command prints is absolute.

Oracles: the argparse definition of ``mha2sha convert`` (the flags), the source of
ConvertOptions (its field docstrings), the converted models' own graphs (Softmax count and
graph inputs), and the file system (printed paths exist)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import re
from pathlib import Path

import onnx
import pytest

import mha2sha
from fuzz.examples import write_example
from mha2sha import api
from mha2sha.api import ConvertOptions
from mha2sha.cli import build_parser, main

# Flags that are not conversion options: where to read and write, and how to talk.
NOT_OPTIONS = {"help", "model", "output", "log_level", "json"}


def _convert_flags() -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    convert = sub.choices["convert"]
    return {a.dest: (a.option_strings or [a.dest])[-1] for a in convert._actions if a.dest not in NOT_OPTIONS}


def test_every_convert_flag_is_a_field_of_the_same_name():
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    flags = _convert_flags()
    assert flags, "no flags found"
    for dest, flag in flags.items():
        assert flag == "--" + dest.replace("_", "-")
        assert dest in fields, f"{flag} has no ConvertOptions field {dest}"


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(api.ConvertOptions))
    body = tree.body[0].body
    documented = {stmt.target.id for stmt, nxt in zip(body, body[1:] + [None])
                  if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                  and isinstance(nxt.value.value, str) and nxt.value.value.strip()}
    assert documented == {f.name for f in dataclasses.fields(ConvertOptions)}


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return write_example("llama3-tiny", tmp_path_factory.mktemp("ex"))


def _softmaxes(path) -> int:
    return sum(n.op_type == "Softmax" for n in onnx.load(path, load_external_data=False).graph.node)


@pytest.mark.parametrize("how", ["build_ar", "heads_per_block", "options"])
def test_build_ar_and_its_old_name_give_the_same_ar2_model(example, tmp_path, how):
    layers, heads = 2, 8  # llama3-tiny (fuzz/examples.py), checked against the input model:
    assert _softmaxes(example["model"]) == layers
    if how == "options":
        result = mha2sha.convert(example["model"], tmp_path / "out", ConvertOptions(build_ar=2, no_verification=True))
    else:
        result = mha2sha.convert(example["model"], tmp_path / "out", **{how: 2, "no_verification": True})
    assert result.ok and _softmaxes(result.model_path) == layers * heads // 2
    assert result.report["options"]["build_ar"] == 2 and "heads_per_block" not in result.report["options"]


def test_kv_cache_io_original_keeps_the_cache_inputs(example, tmp_path):
    before = {i.name for i in onnx.load(example["model"]).graph.input}
    for kwargs in ({"kv_cache_io": "original"}, {"per_head_cache_io": False}):
        out = tmp_path / next(iter(kwargs))
        result = mha2sha.convert(example["model"], out, end_to_end=False, **kwargs)
        assert result.ok
        after = {i.name for i in onnx.load(result.model_path).graph.input}
        assert after == before
    per_head = mha2sha.convert(example["model"], tmp_path / "per_head", no_verification=True)
    assert {i.name for i in onnx.load(per_head.model_path).graph.input} != before


def test_old_and_new_names_together_or_unknown_values_are_refused():
    with pytest.raises(TypeError, match="build_ar or its old name heads_per_block"):
        ConvertOptions(build_ar=2, heads_per_block=2)
    with pytest.raises(ValueError, match="kv_cache_io"):
        ConvertOptions(kv_cache_io="per-layer")
    opts = ConvertOptions(per_head_cache_io=True, head_major_cache_io=True)
    assert opts.kv_cache_io == "head-major" and opts.per_head_cache_io and opts.head_major_cache_io


_WROTE = re.compile(r"^wrote(?: report \(\w+\))?(?: [a-z ]+?)? +(\S+)$")


def _printed_paths(stdout: str) -> list[str]:
    return [m.group(1) for line in stdout.splitlines() if (m := _WROTE.match(line.strip()))]


def test_every_printed_path_is_absolute_and_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["example", "llama3-tiny", "-o", "ex"]) == 0
    assert main(["convert", "ex/llama3-tiny.onnx", "-e", "ex/llama3-tiny.encodings", "-o", "out"]) == 0
    assert main(["verify", "ex/llama3-tiny.onnx", "out/llama3-tiny_kvcache_sha.onnx", "-o", "ver"]) == 0
    paths = _printed_paths(capsys.readouterr().out)
    assert len(paths) >= 2 + 2 + 3 + 3  # example 2, convert model+encodings+3 reports, verify 3 reports
    for p in paths:
        assert os.path.isabs(p) and Path(p).is_file(), p
    assert {Path(p).name for p in paths} >= {"verification_report.json", "verification_report.md", "verification_report.html"}
    assert main(["convert", "ex/llama3-tiny.onnx", "-o", "out2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(os.path.isabs(summary[k]) for k in ("output_dir", "model", "mapping"))


def test_quiet_prints_one_absolute_line_and_verbose_the_traceback(tmp_path, monkeypatch, capsys, example):
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(example["model"]), "-o", "out", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{tmp_path / 'out'}: Verification Status OK"]
    assert captured.err == ""
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    for flag, traceback in (("-q", False), ("-v", True), ("--log-level=info", False)):
        code = main(["convert", "bad.onnx", "-o", "o", flag])
        err = capsys.readouterr().err
        assert code == 2 and "bad.onnx" in err.splitlines()[-1]
        assert ("Traceback" in err) == traceback, (flag, err)
