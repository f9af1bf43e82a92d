"""Per-head KV-cache I/O on real decode exports.

Every decode export (TorchScript and dynamo, eager and sdpa, GQA and MHA: the sdpa dynamo
exports of Llama, Phi-3 and GPT-2 with kv heads == heads fold heads into the batch on the key
path) gets one cache input and output per kv head; onnxruntime on the SHA model fed each
head's slice equals the export. Where a cache must stay whole (--build-ar 2: a block reads two
heads of it) the report and the console name it with the reason, and --strict refuses the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.exporters.hf_models import ExportCase, cases, export

pytestmark = pytest.mark.exporters

DECODES = [c for c in cases() if c.decode] + [
    ExportCase("llama", True, 18, "sdpa", {}, decode=True),
    ExportCase("phi3", True, 18, "sdpa", {"partial_rotary_factor": 0.5}, decode=True),
    ExportCase("gpt2", True, 18, "sdpa", {}, decode=True),
]


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


@pytest.mark.parametrize("case", DECODES, ids=lambda c: c.id)
def test_every_cache_is_per_head(case, tmp_path):
    from mha2sha.api import ConvertOptions, convert

    path = tmp_path / "model.onnx"
    feeds = export(case, path)
    original = onnx.load(path)
    caches_in = [i.name for i in original.graph.input if i.name.startswith("past_")]
    caches_out = [o.name for o in original.graph.output if o.name.startswith("present_")]
    assert caches_in and caches_out
    expected = _run(path, feeds)
    result = convert(path, tmp_path / "out", ConvertOptions(strict=True))
    assert result.ok, result.report.get("end_to_end")
    assert result.report["whole_caches"] == []
    sha = onnx.load(result.model_path, load_external_data=False)
    sha_inputs = {i.name for i in sha.graph.input}
    sha_outputs = {o.name for o in sha.graph.output}
    kv = feeds[caches_in[0]].shape[1]
    for name in caches_in:
        assert name not in sha_inputs and {f"{name}_h{k}" for k in range(kv)} <= sha_inputs, name
    for name in caches_out:
        assert name not in sha_outputs and {f"{name}_h{k}" for k in range(kv)} <= sha_outputs, name
    sha_feeds = dict(feeds)
    for name in caches_in:
        sha_feeds.update({f"{name}_h{k}": np.ascontiguousarray(feeds[name][:, k]) for k in range(kv)})
    got = _run(result.model_path, sha_feeds)
    for name, want in expected.items():
        value = np.stack([got[f"{name}_h{k}"] for k in range(kv)], axis=1) if name in caches_out else got[name]
        np.testing.assert_allclose(value, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)


def _cli(*args, cwd=None):
    exe = Path(sys.executable).parent / "mha2sha"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mha2sha"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=900, cwd=cwd)


def test_a_cache_that_stays_whole_is_named_and_strict_refuses_it(tmp_path):
    case = ExportCase("llama", True, 18, "sdpa", {}, decode=True)
    path = tmp_path / "model.onnx"
    export(case, path)
    proc = _cli("convert", path, "-o", tmp_path / "out", "--build-ar", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "verification_report.json").read_text())
    whole = {c["tensor"]: c for c in report["whole_caches"]}
    assert set(whole) == {f"{p}_{k}_{i}" for p in ("past", "present") for k in ("key", "value") for i in range(2)}
    assert all("--build-ar 2" in c["reason"] for c in whole.values())
    lines = [line for line in proc.stderr.splitlines() if "past_key_0" in line and "stays whole" in line]
    assert len(lines) == 1 and "--build-ar 2" in lines[0], proc.stderr[-2000:]
    proc = _cli("convert", path, "-o", tmp_path / "strict", "--build-ar", "2", "--kv-cache-io", "per-head", "--strict")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mha2sha: error:")]
    assert len(errors) == 1 and "--strict" in errors[0] and "past_" in errors[0] and "cannot be given per head" in errors[0]
    assert not list((tmp_path / "strict").glob("*.onnx"))


def test_a_static_cache_buffer_stays_whole_with_the_reason(tmp_path):
    """Hugging Face StaticCache (dynamo): the cache inputs are full-context buffers written in
    place by ScatterND; they are not split per head, and the report and the console say so;
    --kv-cache-io per-head --strict refuses the run. The SHA model still computes the export."""
    case = ExportCase("llama", True, 18, "eager", {"num_key_value_heads": 2}, layers=1, decode=True, static_cache=True)
    path = tmp_path / "model.onnx"
    feeds = export(case, path)
    proc = _cli("convert", path, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "verification_report.json").read_text())
    whole = {c["tensor"]: c for c in report["whole_caches"] if c["kind"] == "input"}
    assert set(whole) == {"cache_key_0", "cache_value_0"}
    assert all("written in place" in c["reason"] and "ScatterND" in c["reason"] for c in whole.values())
    lines = [line for line in proc.stderr.splitlines() if "cache_key_0" in line and "stays whole" in line]
    assert len(lines) == 1 and "static cache" in lines[0], proc.stderr[-2000:]
    (sha,) = (tmp_path / "out").glob("*_sha.onnx")
    expected, got = _run(path, feeds), _run(sha, feeds)
    for name, want in expected.items():
        parts = sorted(k for k in got if k.startswith(f"{name}_h"))
        value = np.stack([got[k] for k in parts], axis=1) if parts else got[name]
        np.testing.assert_allclose(value, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=name)
    proc = _cli("convert", path, "-o", tmp_path / "strict", "--kv-cache-io", "per-head", "--strict")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mha2sha: error:")]
    assert len(errors) == 1 and "cache_" in errors[0] and "static cache" in errors[0], errors
