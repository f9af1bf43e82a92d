"""The LLM flags end to end through both command lines: --ar-tokens, --lora-alpha-from-input,
--lora-adaptors / --lora-adaptor-list-path and --skip-mha2sha. Oracles: the fuzz closed form
(the model built at the new number of tokens, LoRA parameters set by value) and onnxruntime
on the original model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from fuzz import AttentionConfig, build
from fuzz.reference import reference
from mha2sha.cli import main as mha2sha_main
from mha2sha.compat_cli import main as compat_main
from mha2sha.lora_adaptors import ADAPTOR_LIST_FILE, read_safetensors, write_safetensors
from tests.llm.helpers import close, run_ort, substitute
from tests.llm.test_lora_adaptors import _draw_adaptor


def _save(tmp_path, built, name="m"):
    path = tmp_path / f"{name}.onnx"
    onnx.save(built.model, path)
    return path


def _sha(out):
    (path,) = [p for p in out.glob("*_sha.onnx")]
    return onnx.load(path)


def test_ar_tokens_converts_the_rebuilt_decoder(tmp_path, capsys):
    cfg = AttentionConfig(dynamic=False, past_kv="full", mask="causal", mlp=False, rope="rotate_half",
                          heads=4, kv_heads=2, seq=4, past=4)
    model_path = _save(tmp_path, build(cfg, seed=0))
    out = tmp_path / "out"
    code = mha2sha_main(["convert", str(model_path), "-o", str(out), "--ar-tokens", "1", "--kv-cache-io", "original"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "verification_report.json").read_text())
    assert report["status"] == "pass" and report["prepared"]["ar_tokens"]["tokens"] == {"from": 4, "to": 1}
    assert (out / "prepared" / "m.onnx").is_file()
    # The SHA model computes what the fuzz builder's model built for 1 token computes.
    target = build(cfg.with_(seq=1, past=7), seed=0)
    feeds = target.make_feeds(5)
    got = run_ort(_sha(out), feeds)
    truth = target.reference(feeds)
    for name in target.output_names:
        assert close(got[name], truth[name], rtol=1e-4, atol=1e-4), name


def test_ar_tokens_refused_on_a_dynamic_model(tmp_path, capsys):
    model_path = _save(tmp_path, build(AttentionConfig(past_kv="full", mlp=False), seed=0))
    out = tmp_path / "out"
    code = mha2sha_main(["convert", str(model_path), "-o", str(out), "--ar-tokens", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--ar-tokens" in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


def test_lora_alpha_from_input_lifts_the_alpha_before_the_split(tmp_path, capsys):
    cfg = AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=1, lora_alpha_input=False, mlp=False)
    built = build(cfg, seed=2)
    model_path = _save(tmp_path, built)
    out = tmp_path / "out"
    assert mha2sha_main(["convert", str(model_path), "-o", str(out), "--lora-alpha-from-input"]) == 0, capsys.readouterr().err
    report = json.loads((out / "verification_report.json").read_text())
    alphas = report["prepared"]["lora_alpha_inputs"]
    assert len(alphas) == 1
    (alpha_name, value), = alphas.items()
    assert value == pytest.approx([built.params.layers[0].lora_alpha[0]])
    sha = _sha(out)
    assert alpha_name in {i.name for i in sha.graph.input}
    feeds = built.make_feeds(3)
    # With the listed value the SHA model is the original model; with alpha 2 it is the closed form at alpha 2.
    want = run_ort(built.model, feeds)
    got = run_ort(sha, {**feeds, alpha_name: np.array(value, dtype=np.float32)})
    assert close(got["output"], want["output"], rtol=1e-5, atol=1e-5)
    params = copy.deepcopy(built.params)
    for lp in params.layers:
        lp.lora_alpha = [2.0]
    got = run_ort(sha, {**feeds, alpha_name: np.array([2.0], dtype=np.float32)})
    assert close(got["output"], reference(cfg, params, feeds)["output"], rtol=1e-4, atol=1e-4)


def test_adaptor_list_through_the_reference_command_line(tmp_path, capsys):
    cfg = AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=1, mlp=False, rope="rotate_half")
    built = build(cfg, seed=3)
    model_path = _save(tmp_path, built)
    values, params = _draw_adaptor(built, np.random.default_rng(5))
    write_safetensors(tmp_path / "style.safetensors", values)
    (tmp_path / "adaptors.yaml").write_text(yaml.safe_dump({"use_case": [{"name": "style", "lora_weights": "style.safetensors"}]}))
    out = tmp_path / "out"
    code = compat_main(["--exported-model-path", str(model_path), "--sha-export-path", str(out),
                        "--lora-model", "--lora-adaptor-list-path", str(tmp_path / "adaptors.yaml")])
    assert code == 0, capsys.readouterr().err
    entry = yaml.safe_load((out / ADAPTOR_LIST_FILE).read_text())["use_case"][0]
    converted, _ = read_safetensors(out / entry["lora_weights"])
    feeds = built.make_feeds(4)
    got = run_ort(substitute(_sha(out), converted), feeds)
    assert close(got["output"], reference(cfg, params, feeds)["output"], rtol=1e-4, atol=1e-4)
    assert close(got["output"], run_ort(substitute(built.model, values), feeds)["output"], rtol=1e-5, atol=1e-5)


def test_bad_adaptor_list_is_refused_before_anything_is_written(tmp_path, capsys):
    built = build(AttentionConfig(heads=2, kv_heads=2, lora_rank=2, mlp=False), seed=1)
    model_path = _save(tmp_path, built)
    (tmp_path / "adaptors.yaml").write_text("use_case: [{name: x, lora_weights: missing.safetensors}]\n")
    out = tmp_path / "out"
    code = mha2sha_main(["convert", str(model_path), "-o", str(out), "--lora-adaptors", str(tmp_path / "adaptors.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.safetensors" in err
    assert not out.exists()


def test_skip_mha2sha_writes_only_the_adapted_model(tmp_path, capsys):
    cfg = AttentionConfig(heads=2, kv_heads=2, lora_rank=2, lora_alpha_input=False, mlp=False)
    built = build(cfg, seed=4)
    model_path = _save(tmp_path, built)
    before = model_path.read_bytes()
    out = tmp_path / "out"
    code = compat_main(["--exported-model-path", str(model_path), "--sha-export-path", str(out),
                        "--skip-mha2sha", "--lora-alpha-from-input"])
    assert code == 0, capsys.readouterr().err
    assert model_path.read_bytes() == before
    files = sorted(p.name for p in out.iterdir() if p.name != ".mha2sha-manifest.json")  # the run's own bookkeeping
    assert files == ["m_prequant.onnx", "prequant_encodings_map.json"]
    adapted = onnx.load(out / "m_prequant.onnx")
    assert len(adapted.graph.input) == len(built.model.graph.input) + 1
    assert sum(n.op_type == "Softmax" for n in adapted.graph.node) == sum(n.op_type == "Softmax" for n in built.model.graph.node)


def test_create_input_lists_feed_the_sha_model_and_hold_the_mha_goldens(tmp_path, capsys):
    cfg = AttentionConfig(dynamic=False, heads=4, kv_heads=2, past=3, past_kv="full", rope="rotate_half", mlp=False)
    built = build(cfg, seed=6)
    model_path = _save(tmp_path, built)
    out = tmp_path / "out"
    assert mha2sha_main(["convert", str(model_path), "-o", str(out), "--create-input-lists"]) == 0, capsys.readouterr().err
    sha = _sha(out)
    declared = {i.name: (onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
                         [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in sha.graph.input}
    (line,) = (out / "input_list.txt").read_text().splitlines()
    (device_line,) = (out / "on_device_input_list.txt").read_text().splitlines()
    entries = dict(e.split(":=") for e in line.split())
    assert set(entries) == set(declared) and any("_h1" in n for n in entries)  # per-head cache inputs
    assert dict(e.split(":=") for e in device_line.split()) == {
        k: Path(v).relative_to(out.resolve()).as_posix() for k, v in entries.items()}
    feeds = {}
    for name, path in entries.items():
        dtype, shape = declared[name]
        feeds[name] = np.fromfile(path, dtype=np.float32 if dtype.kind == "f" else dtype).reshape(shape)
    got = run_ort(sha, feeds)
    for name in (o.name for o in sha.graph.output):
        golden = np.fromfile(out / "goldens" / "0" / f"{name}.raw", dtype=np.float32)
        assert golden.size == got[name].size, name
        assert close(got[name].ravel(), golden, rtol=1e-5, atol=1e-5), name


def test_all_stages_mapping_traces_every_encoding_to_the_final_model(tmp_path, capsys):
    from fuzz import make_encodings
    from mha2sha.encodings import read_encodings

    cfg = AttentionConfig(heads=4, kv_heads=2, lora_rank=2, lora_adaptors=1, lora_alpha_input=False, mlp=False)
    built = build(cfg, seed=7)
    model_path = _save(tmp_path, built)
    make_encodings(built, version="1.0.0", seed=0).write(tmp_path / "m.encodings")
    out = tmp_path / "out"
    code = mha2sha_main(["convert", str(model_path), "-e", str(tmp_path / "m.encodings"), "-o", str(out),
                         "--lora-alpha-from-input", "--replace-linear-with-conv"])
    assert code == 0, capsys.readouterr().err
    merged = json.loads((out / "all_stages_encodings_mapping.json").read_text())
    original = read_encodings(tmp_path / "m.encodings")
    final = read_encodings(next(out.glob("*_sha.encodings")))
    sha = _sha(out)
    names = {i.name for i in sha.graph.input} | {t.name for t in sha.graph.initializer} | {o for n in sha.graph.node for o in n.output}
    alpha_inputs = set(json.loads((out / "verification_report.json").read_text())["prepared"]["lora_alpha_inputs"])
    for name in original.tensors:
        targets = merged.get(name)
        assert targets, f"{name} is not traced"
        assert set(targets) <= names, (name, targets)
        assert any(t in final.tensors for t in targets), (name, targets)
    # The alpha constant's encoding ends on the lifted graph input.
    assert any(set(v) & alpha_inputs for v in merged.values())


@pytest.mark.parametrize("past_kv", ["full", "new_only", "full_transposed_key"])
def test_head_major_cache_io(tmp_path, capsys, past_kv):
    cfg = AttentionConfig(dynamic=False, heads=4, kv_heads=2, past=3, past_kv=past_kv, rope="rotate_half", mlp=False, layers=2)
    built = build(cfg, seed=8)
    model_path = _save(tmp_path, built)
    out = tmp_path / "out"
    code = mha2sha_main(["convert", str(model_path), "-o", str(out), "--kv-cache-io", "head-major", "--create-input-lists"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "verification_report.json").read_text())
    assert report["status"] == "pass" and report["end_to_end"]["status"] == "pass"
    sha = _sha(out)

    def shapes(values):
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    mha_in, sha_in = shapes(built.model.graph.input), shapes(sha.graph.input)
    mha_out, sha_out = shapes(built.model.graph.output), shapes(sha.graph.output)
    assert set(sha_in) == set(mha_in) and set(sha_out) == set(mha_out)  # the original names
    head_major = [n for n in report["head_major_cache_io"]]
    assert head_major and all(n in mha_in or n in mha_out for n in head_major)

    def head_axis(mha_shape, sha_shape):
        # The head axis moved to the front: the one position where moving it back gives the MHA shape.
        return next(a for a in range(1, len(mha_shape)) if [mha_shape[a]] + mha_shape[:a] + mha_shape[a + 1:] == sha_shape)

    feeds = built.make_feeds(4)
    sha_feeds = dict(feeds)
    for name in head_major:
        if name in mha_in:
            sha_feeds[name] = np.moveaxis(feeds[name], head_axis(mha_in[name], sha_in[name]), 0)
    got = run_ort(sha, sha_feeds)
    for name in head_major:
        if name in mha_out:
            got[name] = np.moveaxis(got[name], 0, head_axis(mha_out[name], sha_out[name]))
    truth = built.reference(feeds)
    for name in built.output_names:
        assert close(got[name], truth[name], rtol=1e-4, atol=1e-4), name
    # The input list holds the head-major layout.
    entries = dict(e.split(":=") for e in (out / "input_list.txt").read_text().split())
    for name in head_major:
        if name in mha_in:
            assert np.fromfile(entries[name], dtype=np.float32).size == int(np.prod(sha_in[name]))
