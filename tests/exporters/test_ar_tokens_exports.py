"""--ar-tokens on real decode exports, judged against torch.onnx.

The oracle: the same Hugging Face model (same seed, same weights) exported by torch.onnx for
the target number of new tokens. A decode export for T0 tokens and P0 past positions is
rebuilt by ``--ar-tokens T`` (context kept: past = P0 + T0 - T); onnxruntime on the rebuilt
model (OUTDIR/prepared/) and on the re-export for T tokens gives the same outputs on the same
inputs (left padding included); the rebuilt model is then converted and verified, and the SHA
model fed per-head caches equals the re-export too.

A one-token export whose exporter folded the position into constants (RoPE angles, the causal
mask row) cannot be rebuilt for more tokens: that is refused with the constant and the reason,
exit 2 with one line, nothing written.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.exporters.hf_models import ExportCase, export

pytestmark = pytest.mark.exporters

GQA = {"num_key_value_heads": 2}
FAMILIES = [
    ExportCase("llama", False, 17, "eager", GQA, layers=1, decode=True),
    ExportCase("llama", False, 17, "sdpa", GQA, layers=1, decode=True),
    ExportCase("llama", True, 18, "eager", GQA, layers=1, decode=True),
    ExportCase("llama", True, 18, "sdpa", GQA, layers=1, decode=True),
    ExportCase("qwen2", False, 17, "eager", GQA, layers=1, decode=True),
    ExportCase("qwen2", True, 18, "sdpa", GQA, layers=1, decode=True),
    ExportCase("mistral", False, 17, "eager", dict(GQA, sliding_window=4), layers=1, decode=True),
    ExportCase("mistral", True, 18, "sdpa", dict(GQA, sliding_window=4), layers=1, decode=True),
]
MORE = [  # more families of tests/exporters/families.py: fused qkv with partial rotary, q/k norm, MHA
    ExportCase("phi3", False, 17, "eager", dict(GQA, partial_rotary_factor=0.5), layers=1, decode=True),
    ExportCase("phi3", True, 18, "sdpa", dict(GQA, partial_rotary_factor=0.5), layers=1, decode=True),
    ExportCase("qwen3", True, 18, "sdpa", dict(GQA, head_dim=8), layers=1, decode=True),
    ExportCase("gpt2", False, 17, "eager", {}, layers=1, decode=True),
]
EXPORTED = (3, 5)  # tokens, past of the export that is rebuilt (context 8)
# (case, tokens to rebuild for): every case for 1 token; two for 2 tokens.
CASES = [(c, 1) for c in FAMILIES + MORE] + [(FAMILIES[0], 2), (FAMILIES[3], 2)]


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _feeds(model_path: Path, seed: int) -> dict[str, np.ndarray]:
    """Inputs for the re-export's graph inputs: random ids and caches, left padding on row 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in onnx.load(model_path, load_external_data=False).graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(1, 128, shape).astype(np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones(shape, np.int64)
            feeds[i.name][1, :2] = 0
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _close(got, want, name):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)


@pytest.mark.parametrize(("case", "tokens"), CASES, ids=lambda x: x.id if isinstance(x, ExportCase) else f"to{x}")
def test_rebuilt_decoder_equals_the_re_export(case, tokens, tmp_path):
    from mha2sha.api import ConvertOptions, convert

    source, target = tmp_path / "exported.onnx", tmp_path / "re_export.onnx"
    export(case.at(*EXPORTED), source)
    context = sum(EXPORTED)
    export(case.at(tokens, context - tokens), target)

    result = convert(source, tmp_path / "out", ConvertOptions(ar_tokens=tokens))
    assert result.ok, result.report.get("end_to_end")
    summary = result.report["prepared"]["ar_tokens"]
    assert summary["tokens"] == {"from": EXPORTED[0], "to": tokens} and summary["context"] == context
    (rebuilt,) = (tmp_path / "out" / "prepared").glob("*.onnx")

    # The rebuilt model has the re-export's graph inputs and outputs, and computes what it computes.
    def io(path):
        m = onnx.load(path, load_external_data=False)
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(m.graph.input) + list(m.graph.output)}

    assert io(rebuilt) == io(target)
    feeds = _feeds(target, seed=tokens)
    want = _run(target, feeds)
    got = _run(rebuilt, feeds)
    for name in want:
        _close(got[name], want[name], name)

    # The SHA model of the rebuilt one (per-head caches) computes it as well.
    assert result.report["whole_caches"] == []
    caches_in = [n for n in feeds if n.startswith("past_")]
    kv = feeds[caches_in[0]].shape[1]
    sha_feeds = dict(feeds)
    for name in caches_in:
        sha_feeds.update({f"{name}_h{k}": np.ascontiguousarray(feeds[name][:, k]) for k in range(kv)})
    sha = _run(result.model_path, sha_feeds)
    for name, value in want.items():
        got_value = np.stack([sha[f"{name}_h{k}"] for k in range(kv)], axis=1) if name.startswith("present_") else sha[name]
        _close(got_value, value, name)


def _cli(*args):
    exe = Path(sys.executable).parent / "mha2sha"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mha2sha"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("case", [FAMILIES[1], FAMILIES[3]], ids=lambda c: c.id)
def test_a_one_token_export_with_folded_positions_is_refused(case, tmp_path):
    """TorchScript and dynamo fold the one exported position into constants: the rebuild for
    more tokens cannot know the other positions' rows and says which constant, instead of
    repeating the row (which gave a wrong model)."""
    path = tmp_path / "decode.onnx"
    export(case, path)  # 1 token, past 5
    before = path.read_bytes()
    proc = _cli("convert", path, "-o", tmp_path / "out", "--ar-tokens", "3")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "--ar-tokens 3" in line and "at " in line, line
    assert "constant" in line and ("one row" in line or "no future position" in line), line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert path.read_bytes() == before


def test_the_report_names_the_rebuilt_shapes(tmp_path):
    """The report of a rebuilt conversion lists every graph input whose shape changed."""
    case = FAMILIES[0]
    source = tmp_path / "exported.onnx"
    export(case.at(*EXPORTED), source)
    proc = _cli("convert", source, "-o", tmp_path / "out", "--ar-tokens", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "verification_report.json").read_text())
    inputs = report["prepared"]["ar_tokens"]["inputs"]
    assert inputs["input_ids"] == {"from": [2, 3], "to": [2, 1]}
    assert inputs["past_key_0"] == {"from": [2, 2, 5, 16], "to": [2, 2, 7, 16]}
    assert "attention_mask" not in inputs  # the context is kept: [B, 8] either way


ONE_TOKEN = [
    (FAMILIES[1], None),
    (FAMILIES[3], None),
    # position ids as an input, the masked value given (API only): the exporter still folds the
    # padding-mask index table for the one position; repeating or shifting it was a wrong model.
    (dataclasses.replace(FAMILIES[3], position_ids=True), 0.0),
    (dataclasses.replace(FAMILIES[0], position_ids=True), 0.0),
]


@pytest.mark.parametrize(("case", "mask_fill"), ONE_TOKEN, ids=lambda x: x.id if isinstance(x, ExportCase) else f"fill{x}")
def test_one_token_rebuilt_for_more_is_right_or_refused(case, mask_fill, tmp_path):
    """Whatever the rebuild of a one-token export for 3 tokens does, it either refuses with the
    node and the reason, or equals torch.onnx's export for 3 tokens: never a wrong model."""
    import onnx_ir as ir

    from mha2sha.ar_tokens import TokensError, rebuild_for_tokens

    source, target = tmp_path / "decode.onnx", tmp_path / "re_export.onnx"
    export(case, source)
    model = ir.load(source)
    try:
        rebuild_for_tokens(model, 3, None, mask_fill=mask_fill)
    except TokensError as exc:
        assert exc.at is not None and str(exc).count("\n") == 0, exc
        return
    rebuilt = tmp_path / "rebuilt.onnx"
    ir.save(model, rebuilt, external_data="rebuilt.onnx.data")
    export(case.at(3, case.past + case.tokens - 3), target)
    feeds = _feeds(target, seed=3)
    if "position_ids" in feeds:
        feeds["position_ids"] = np.broadcast_to(np.arange(3, 6), (2, 3)).astype(np.int64).copy()
    want, got = _run(target, feeds), _run(rebuilt, feeds)
    for name in want:
        _close(got[name], want[name], name)


STATIC = [dataclasses.replace(FAMILIES[2], static_cache=True), dataclasses.replace(FAMILIES[3], static_cache=True)]


@pytest.mark.parametrize("case", STATIC, ids=lambda c: c.id)
def test_a_static_cache_is_rebuilt_and_equals_the_re_export(case, tmp_path):
    """Hugging Face StaticCache (dynamo: ScatterND writes the new entries into a full-context
    buffer at their positions): rebuilt from 3 tokens to 1 with the context kept, it equals the
    export for 1 token; the rebuilt model converts and verifies. (dynamo only: TorchScript
    traces the in-place position counter after its update, a wrong export.)"""
    from mha2sha.api import ConvertOptions, convert

    source, target = tmp_path / "static.onnx", tmp_path / "re_export.onnx"
    export(case.at(*EXPORTED), source)
    export(case.at(1, sum(EXPORTED) - 1), target)
    feeds = _feeds(target, seed=5)
    want = _run(target, feeds)
    # The export is the model: the buffers come back with the new entry written at position 7.
    assert not np.array_equal(want["updated_key_0"][:, :, 7:], feeds["cache_key_0"][:, :, 7:])
    np.testing.assert_array_equal(want["updated_key_0"][:, :, :7], feeds["cache_key_0"][:, :, :7])
    result = convert(source, tmp_path / "out", ConvertOptions(ar_tokens=1))
    assert result.ok, result.report.get("end_to_end")
    (rebuilt,) = (tmp_path / "out" / "prepared").glob("*.onnx")
    got = _run(rebuilt, feeds)
    for name in want:
        _close(got[name], want[name], name)
