"""The console scripts as users run them (subprocesses), on the bundled examples, with each
`--base-llm` preset and the other flag combinations: exit code, the verification report,
output names as the reference tool gives them, inputs unchanged, no partial files left.
Also the reference tool's Python entry point, and bad encodings files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from fuzz import examples
from tests.cli.conftest import tree_hashes

BIN = Path(sys.executable).parent


def _script(name: str) -> list[str]:
    path = BIN / name
    if path.exists():
        return [str(path)]
    module = {"mha2sha": "mha2sha", "mha2sha-onnx-converter": "mha2sha.compat_cli"}[name]
    return [sys.executable, "-m", module]


def run(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*_script(name), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    for name in examples.EXAMPLES:
        examples.write_example(name, folder / name)
    return folder


def _example(bundled: Path, name: str, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of a bundled example (model, encodings)."""
    shutil.copytree(bundled / name, tmp_path / name)
    return tmp_path / name / f"{name}.onnx", tmp_path / name / f"{name}.encodings"


# example -> (preset, extra flags, expectations that must be found). The presets' structural
# expectations these examples do not meet (--mha-conv on MatMul projections, ...) are notes.
PRESET_RUNS = {
    "llama2-tiny": ("llama2", [], {"--handle-rope-ops", "--handle-past-key-value"}),
    "llama3-tiny": ("llama3", [], {"--handle-rope-ops", "--handle-past-key-value", "--gqa-model"}),
    "gpt2-tiny": ("gpt2", [], set()),  # no KV cache
    "llama2-lora-tiny": ("llama2_lora", [], {"--handle-rope-ops", "--lora-model", "--mha-conv"}),  # no KV cache
    "sd21-attn": ("sd_2.1", [], {"--mha-conv"}),
    "sd21-lora": ("sd_2.1_lora", [], {"--mha-conv", "--lora-model"}),
    "qwen3-tiny": ("qwen3", ["--not-strict"], {"--handle-internal-rmsnorm", "--gqa-model"}),
    "mistral-tiny": ("mistral", [], {"--gqa-model", "--handle-rope-ops"}),
    "phi3-tiny": ("phi3", ["--not-strict"], {"--handle-rope-ops"}),
    "bert-tiny": ("bert", [], set()),
    "t5-tiny": ("t5", [], set()),
}


@pytest.mark.parametrize("example", list(PRESET_RUNS))
def test_reference_command_line_with_each_preset(bundled, tmp_path, example):
    preset, extra, must_find = PRESET_RUNS[example]
    model, encodings = _example(bundled, example, tmp_path)
    before = tree_hashes(model.parent)
    out = tmp_path / "exported_model"
    proc = run("mha2sha-onnx-converter", "--exported-model-path", model, "--exported-model-encoding-path", encodings,
               "--base-llm", preset, "--sha-export-path", out, *extra)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Verification Status OK" in proc.stdout
    assert tree_hashes(model.parent) == before
    report = json.loads((out / "verification_report.json").read_text())
    assert report["status"] == "pass"
    found = {e["flag"] for e in report.get("expectations", []) if e["found"]}
    assert must_find <= found, (must_find, report.get("expectations"))
    kv = any(b["features"]["past_kv"] != "none" for b in report["blocks"])
    name = example + ("_kvcache" if kv else "") + "_sha"
    assert (out / f"{name}.onnx").is_file() and (out / f"{name}.encodings").is_file()
    assert (out / "mha_to_sha_encodings_names.json").is_file()
    assert not list(out.glob(".mha2sha-partial-*"))


@pytest.mark.parametrize("flags", [
    ["--replace-linear-with-conv"],
    ["--build-ar", "2"],
    ["--no-verification"],
    ["--create-input-lists", "--replace-linear-with-conv"],
    ["--replace-linear-with-conv", "--optimize-o-proj"],
], ids=lambda f: " ".join(f))
def test_reference_command_line_flag_combinations(bundled, tmp_path, flags):
    model, encodings = _example(bundled, "llama3-tiny", tmp_path)
    before = tree_hashes(model.parent)
    out = tmp_path / "out"
    proc = run("mha2sha-onnx-converter", "--exported-model-path", model, "--exported-model-encoding-path", encodings,
               "--base-llm", "llama3", "--not-strict", "--sha-export-path", out, *flags)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert tree_hashes(model.parent) == before
    report = json.loads((out / "verification_report.json").read_text())
    assert report["status"] == "pass"
    conv = "--replace-linear-with-conv" in flags
    sha = onnx.load(out / f"llama3-tiny{'_conv' if conv else ''}_kvcache_sha.onnx")
    ops = [n.op_type for n in sha.graph.node]
    heads_per_block = int(flags[1]) if flags[0] == "--build-ar" else 1
    assert ops.count("Softmax") == 2 * 8 // heads_per_block
    if conv:
        # Every projection is a Conv; a MatMul may keep a constant only when it is RoPE's
        # rotate-half, a signed permutation (one entry +-1 per row and column), not a projection.
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in sha.graph.initializer}
        linear = [w for n in sha.graph.node if n.op_type in ("MatMul", "Gemm") for w in (weights.get(i) for i in n.input) if w is not None]
        assert "Conv" in ops and linear == [w for w in linear if _is_signed_permutation(w)]
    if "--no-verification" in flags:
        assert report["end_to_end"]["status"] == "not run" and all(b["status"] == "pass" for b in report["blocks"])
    if "--optimize-o-proj" in flags:
        assert len(report["optimize_o_proj"]["rewritten"]) == 2
    if "--create-input-lists" in flags:
        assert (out / "input_list.txt").is_file() and list((out / "goldens" / "0").glob("*.raw"))


def test_readme_compatible_cli_example_succeeds_on_a_bundled_example(bundled, tmp_path):
    """The README's command, as written (output in ./exported_model of the working folder):
    llama3's --mha-conv does not hold on this MatMul model; the run verifies, exits 0 and says
    in one line what differs and which flag gives the preset's form."""
    model, _ = _example(bundled, "llama3-tiny", tmp_path)
    shutil.copy(model, tmp_path / "model.onnx")
    proc = subprocess.run([*_script("mha2sha-onnx-converter"), "--exported-model-path", "model.onnx", "--base-llm", "llama3"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Verification Status OK" in proc.stdout
    notes = [line for line in (proc.stdout + proc.stderr).splitlines() if "Conv projections" in line]
    assert len(notes) == 1, notes
    assert "llama3 expects Conv projections" in notes[0] and "MatMul projections" in notes[0]
    assert "add --replace-linear-with-conv" in notes[0]
    report = json.loads((tmp_path / "exported_model" / "verification_report.json").read_text())
    assert report["status"] == "pass"
    assert not (tmp_path / "exported_model" / "VERIFICATION_FAILED").exists()
    # The flag the note names gives the preset's form: Conv projections, and no note.
    proc = subprocess.run([*_script("mha2sha-onnx-converter"), "--exported-model-path", "model.onnx", "--base-llm", "llama3",
                           "--replace-linear-with-conv", "--sha-export-path", "conv"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Conv projections" not in proc.stdout + proc.stderr
    sha = onnx.load(tmp_path / "conv" / "model_conv_kvcache_sha.onnx", load_external_data=False)
    assert "Conv" in {n.op_type for n in sha.graph.node}


def test_strict_is_the_rope_pattern_check(bundled, tmp_path):
    """--strict keeps the reference meaning: with --handle-rope-ops (llama2's preset) every
    converted block must carry RoPE in a recognised form; gpt2-tiny has none, so the run fails
    with the blocks named, and --not-strict converts it (exit 0, a note)."""
    model, _ = _example(bundled, "gpt2-tiny", tmp_path)
    out = tmp_path / "out"
    proc = run("mha2sha-onnx-converter", "--exported-model-path", model, "--base-llm", "llama2", "--sha-export-path", out)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if "RoPE" in line)
    assert "--strict" in line and "attn0" in line and "fail" in line
    assert (out / "VERIFICATION_FAILED").is_file()
    proc = run("mha2sha-onnx-converter", "--exported-model-path", model, "--base-llm", "llama2", "--not-strict",
               "--sha-export-path", tmp_path / "loose")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "llama2 expects RoPE on the query path; this model has none" in proc.stdout
    # A model with RoPE passes the strict check.
    llama, _ = _example(bundled, "llama2-tiny", tmp_path)
    proc = run("mha2sha-onnx-converter", "--exported-model-path", llama, "--base-llm", "llama2", "--strict",
               "--sha-export-path", tmp_path / "llama")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_an_explicit_flag_overrides_the_preset_with_a_warning(bundled, tmp_path):
    model, _ = _example(bundled, "gpt2-tiny", tmp_path)
    proc = run("mha2sha-onnx-converter", "--exported-model-path", model, "--base-llm", "gpt2", "--not-strict",
               "--gqa-model", "--sha-export-path", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "--gqa-model adds to preset gpt2" in proc.stderr
    assert "--gqa-model expects grouped-query attention (fewer kv heads than heads); this model has 4 kv heads for 4 heads" in proc.stdout


def test_python_entry_point_of_the_reference_tool(bundled, tmp_path):
    from mha2sha import MHA2SHAConverter

    model, encodings = _example(bundled, "llama3-tiny", tmp_path)
    converter = MHA2SHAConverter(model_name="llama3_sha", sha_export_path=str(tmp_path / "out"), model_or_path=str(model),
                                 exported_model_encoding_path=str(encodings), gqa_model=True, handle_rope_ops=True)
    sha, status = converter.convert()
    assert status is True
    assert isinstance(sha, onnx.ModelProto) and sum(n.op_type == "Softmax" for n in sha.graph.node) == 16
    assert (tmp_path / "out" / "llama3_sha.onnx").is_file() and (tmp_path / "out" / "llama3_sha.encodings").is_file()
    # A ModelProto works too, and is not modified.
    proto = onnx.load(model)
    before = proto.SerializeToString()
    sha2, status2 = MHA2SHAConverter(model_name="again", sha_export_path=str(tmp_path / "out2"), model_or_path=proto).convert()
    assert status2 is True and proto.SerializeToString() == before
    assert [i.name for i in sha2.graph.input] == [i.name for i in sha.graph.input]


def _bad_encodings(encodings: Path, how: str) -> None:
    if how == "not json":
        encodings.write_text("{ this is not json")
        return
    content = json.loads(encodings.read_text())
    if how == "unknown version":
        content["version"] = "9.9.9"
    elif how == "missing field":
        entry = content["param_encodings"][0]
        entry.pop("scale", None)
    elif how == "wrong channel count":
        entry = next(e for e in content["param_encodings"] if len(e.get("scale", [])) > 1)
        entry["scale"] = entry["scale"][:-1]
        entry["offset"] = entry["offset"][:-1]
    elif how == "nan scale":
        entry = content["activation_encodings"][0]
        entry["scale"] = [float("nan")]
    encodings.write_text(json.dumps(content))


@pytest.mark.parametrize("how,needle", [
    ("not json", "not valid JSON"),
    ("unknown version", "9.9.9"),
    ("missing field", "scale"),
    ("wrong channel count", "channels"),
    ("nan scale", "NaN"),
])
def test_bad_encodings_are_refused_before_anything_is_written(bundled, tmp_path, how, needle):
    model, encodings = _example(bundled, "llama3-tiny", tmp_path)
    _bad_encodings(encodings, how)
    before = tree_hashes(model.parent)
    out = tmp_path / "out"
    proc = run("mha2sha", "convert", model, "-e", encodings, "-o", out)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mha2sha: error: ") and needle in lines[0], proc.stderr
    assert str(encodings) in lines[0] or encodings.name in lines[0]
    assert tree_hashes(model.parent) == before
    assert not out.exists() or not any(out.iterdir())


def test_encodings_naming_absent_tensors_are_reported_not_fatal(bundled, tmp_path):
    model, encodings = _example(bundled, "llama3-tiny", tmp_path)
    content = json.loads(encodings.read_text())
    extra = dict(content["activation_encodings"][0], name="not_in_this_model")
    content["activation_encodings"].append(extra)
    encodings.write_text(json.dumps(content))
    out = tmp_path / "out"
    proc = run("mha2sha", "convert", model, "-e", encodings, "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "verification_report.json").read_text())
    assert any("not_in_this_model" in w for w in report["encodings_warnings"])


def test_unknown_domain_op_in_a_block_is_skipped_and_reported(bundled, tmp_path):
    model, _ = _example(bundled, "llama3-tiny", tmp_path)
    proto = onnx.load(model)
    # Put a custom-domain op on layer 0's scores: that block must be left as it was.
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    custom = onnx.helper.make_node("Identity", [softmax.input[0]], ["custom_scores"], domain="com.example.custom")
    softmax.input[0] = "custom_scores"
    index = list(proto.graph.node).index(softmax)
    proto.graph.node.insert(index, custom)
    proto.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))
    onnx.save(proto, model)
    proc = run("mha2sha", "inspect", model, "--json")
    assert proc.returncode == 0, proc.stderr
    blocks = json.loads(proc.stdout)["blocks"]
    skipped = [b for b in blocks if not b["converted"]]
    assert len(skipped) == 1 and "com.example.custom" in (skipped[0]["reason"] + skipped[0].get("stopped_at", ""))
    assert sum(b["converted"] for b in blocks) == 1


def test_disk_full_is_reported_plainly(bundled, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    model, _ = _example(bundled, "llama3-tiny", tmp_path)
    out = tmp_path / "out"
    code = (
        "import builtins, errno, sys\n"
        "from mha2sha import graph\n"
        "import mha2sha.graph.writer as w\n"
        "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "w.write_model = full\n"
        "import mha2sha.graph.io as io; io.write_model = full\n"
        "from mha2sha.cli import main\n"
        f"sys.exit(main(['convert', {str(model)!r}, '-o', {str(out)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("INFO ")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mha2sha: error: ") and "No space left on device" in lines[0], proc.stderr
    assert not list(out.glob("*.onnx")) and not list(out.glob(".mha2sha-partial-*"))


def test_version_and_help(tmp_path):
    from mha2sha import __version__

    proc = run("mha2sha", "--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    for args in (["--help"], ["convert", "--help"]):
        proc = run("mha2sha", *args)
        assert proc.returncode == 0 and "usage:" in proc.stdout
    proc = run("mha2sha-onnx-converter", "--help")
    assert proc.returncode == 0 and "--exported-model-path" in proc.stdout and "--base-llm" in proc.stdout


def test_json_summary(bundled, tmp_path):
    model, encodings = _example(bundled, "llama2-tiny", tmp_path)
    proc = run("mha2sha", "convert", model, "-e", encodings, "-o", tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "pass" and summary["exit_code"] == 0 and len(summary["blocks"]) == 2
    assert Path(summary["model"]).is_file() and np.isfinite(summary["seconds"])


def _is_signed_permutation(w) -> bool:
    import numpy as np

    return (w.ndim == 2 and w.shape[0] == w.shape[1] and bool(np.isin(w, (-1, 0, 1)).all())
            and bool((np.abs(w).sum(axis=0) == 1).all()) and bool((np.abs(w).sum(axis=1) == 1).all()))
