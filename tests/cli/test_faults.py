"""The fault catalogue: every way a run can be hurt (issue 21's list, one case per line at
least), each through the console script as a user runs it.

Every case checks the contract: the right exit code, one error line naming the file, the
inputs byte-identical, and nothing that looks finished (a verification report or a marker)
unless the run passed. The onnx CVE classes (external data leaving the model folder, absurd
lengths, symbolic links...) are in tests/cli/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from fuzz import examples
from tests.cli.conftest import tree_hashes

CLI = [sys.executable, "-m", "mha2sha"]
COMPAT = [str(Path(sys.executable).parent / "mha2sha-onnx-converter")]
MANIFEST = ".mha2sha-manifest.json"


def run(*args, cmd=CLI, umask: int | None = None, cwd=None) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=600, preexec_fn=preexec, cwd=cwd)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed run prints (log lines aside)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def assert_refused(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    line = error_line(proc)
    assert line.startswith("mha2sha: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def finished_looking(out: Path) -> list[str]:
    """Files that would make a folder look like the result of a finished run."""
    if not out.exists():
        return []
    return sorted(p.name for p in out.iterdir() if p.name.startswith("verification_report") or p.name == "VERIFICATION_FAILED")


def visible(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if not any(part.startswith(".") for part in p.relative_to(out).parts))


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama3")
    examples.write_example("llama3-tiny", folder)
    return folder


@pytest.fixture
def example(llama3, tmp_path) -> tuple[Path, Path]:
    """A private copy of llama3-tiny: (model, encodings)."""
    shutil.copytree(llama3, tmp_path / "in")
    return tmp_path / "in" / "llama3-tiny.onnx", tmp_path / "in" / "llama3-tiny.encodings"


# -- 1. one output transaction per run ---------------------------------------------------------


def test_create_input_lists_keeps_the_users_inputs_folder(example, tmp_path):
    model, enc = example
    out = tmp_path / "out"
    (out / "inputs").mkdir(parents=True)
    (out / "inputs" / "mine.raw").write_bytes(b"user data")
    (out / "input_list.txt").write_text("the user's own list\n")
    before = tree_hashes(model.parent)
    proc = run("convert", model, "-e", enc, "-o", out, "--create-input-lists")
    assert_refused(proc, 2, str(out / "input_list.txt"), "did not write")
    assert (out / "input_list.txt").read_text() == "the user's own list\n"
    (out / "input_list.txt").unlink()
    proc = run("convert", model, "-e", enc, "-o", out, "--create-input-lists")
    assert proc.returncode == 0, proc.stderr
    assert (out / "inputs" / "mine.raw").read_bytes() == b"user data"
    assert (out / "input_list.txt").is_file() and list((out / "inputs" / "0").glob("*.raw"))
    assert tree_hashes(model.parent) == before


def test_a_users_verification_report_is_not_overwritten(example, tmp_path):
    model, _ = example
    out = tmp_path / "out"
    out.mkdir()
    (out / "verification_report.json").write_text('{"mine": true}')
    assert_refused(run("convert", model, "-o", out), 2, "verification_report.json", "--overwrite")
    assert (out / "verification_report.json").read_text() == '{"mine": true}'
    assert visible(out) == ["verification_report.json"]
    # ... also from `mha2sha verify`, and --overwrite replaces it (never an input)
    sha_out = tmp_path / "sha"
    assert run("convert", model, "-o", sha_out).returncode == 0
    sha = sha_out / "llama3-tiny_kvcache_sha.onnx"
    assert_refused(run("verify", model, sha, "-o", out), 2, "verification_report.json")
    assert (out / "verification_report.json").read_text() == '{"mine": true}'
    proc = run("convert", model, "-o", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "verification_report.json").read_text())["status"] == "pass"


def test_an_input_named_like_an_output_is_never_replaced(example, tmp_path):
    model, enc = example
    out = model.parent
    shutil.copy(enc, out / "verification_report.json")  # an input that happens to have the report's name
    before = tree_hashes(out)
    proc = run("convert", model, "-e", out / "verification_report.json", "-o", out, "--overwrite")
    assert_refused(proc, 2, "verification_report.json", "input file")
    assert tree_hashes(out) == before


def test_a_rerun_replaces_every_file_of_the_previous_run(tmp_path):
    """Stale inputs/, input lists, _conv_ models and the VERIFICATION_FAILED marker go; the
    user's files stay."""
    examples.write_example("gpt2-tiny", tmp_path / "gpt2")
    model = tmp_path / "gpt2" / "gpt2-tiny.onnx"
    before = tree_hashes(model.parent)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = run("--exported-model-path", model, "--handle-rope-ops", "--strict", "--create-input-lists",
               "--sha-export-path", out, cmd=COMPAT)
    assert proc.returncode == 1, proc.stderr  # strict RoPE on a model without RoPE fails: outputs kept and marked
    assert (out / "VERIFICATION_FAILED").is_file() and (out / "input_list.txt").is_file()
    first = set(visible(out))
    proc = run("convert", model, "-o", out, "--replace-linear-with-conv")
    assert proc.returncode == 0, proc.stderr
    now = set(visible(out))
    assert "VERIFICATION_FAILED" not in now and "input_list.txt" not in now and "inputs" not in now
    assert "notes.txt" in now and (out / "notes.txt").read_text() == "mine"
    assert "gpt2-tiny_conv_sha.onnx" in now and "gpt2-tiny_sha.onnx" not in now
    assert json.loads((out / "verification_report.json").read_text())["status"] == "pass"
    assert first - now  # the first run's own files were removed, nothing of the user's
    assert tree_hashes(model.parent) == before


def test_a_second_run_into_a_locked_folder_is_refused(example, tmp_path):
    import fcntl

    model, _ = example
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a run in progress holds
        assert_refused(run("convert", model, "-o", out), 2, str(out), "another mha2sha run")
    finally:
        os.close(fd)
    assert visible(out) == []
    assert run("convert", model, "-o", out).returncode == 0


def test_two_runs_into_one_folder_at_the_same_time(example, tmp_path):
    """Two conversions started together into one folder (different seeds): never a mix of
    their files. One holds the lock; the other is refused with one line naming the folder
    (exit 2) or, if the first had already finished, replaces its run whole. Either way the
    folder holds one run: its report names the seed it ran with and passes, its model is
    the one that report verified."""
    model, enc = example
    out = tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen([*CLI, "convert", str(model), "-e", str(enc), "-o", str(out), "--seed", str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (11, 12)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 2], [0, 0]), results
    for code, stderr in results:
        if code == 2:
            lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("INFO ", "WARNING "))]
            assert lines == [lines[0]] and str(out) in lines[0] and "another mha2sha run" in lines[0], stderr
    report = json.loads((out / "verification_report.json").read_text())
    assert report["status"] == "pass" and report["seed"] in (11, 12)
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(visible(out)) == sorted(manifest)  # one run's files, nothing else
    assert not list(out.glob(".mha2sha-partial-*"))
    (sha,) = out.glob("*_sha.onnx")
    assert str(sha.name) in json.dumps(report)


def _wait_for(path_glob, out: Path, proc, timeout=120.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and list(out.glob(path_glob)):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_rerun_killed_during_verification_leaves_the_previous_run_intact(example, tmp_path, sig):
    """The new, unverified model never sits beside the old PASS report; SIGKILL's staging
    folder is removed by the next run; SIGINT / SIGTERM say what is on disk."""
    model, enc = example
    out = tmp_path / "out"
    assert run("convert", model, "-e", enc, "-o", out).returncode == 0
    before = tree_hashes(out)
    proc = subprocess.Popen([*CLI, "convert", str(model), "-e", str(enc), "-o", str(out), "--seed", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the staged model is complete once its report's input is: kill while verifying
    assert _wait_for(".mha2sha-partial-*/*.encodings", out, proc), "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    after = {k: v for k, v in tree_hashes(out).items() if not k.startswith(".mha2sha-partial-")}  # SIGKILL's staging
    assert after == before  # the old model, encodings and PASS report, nothing new
    if sig != signal.SIGKILL:
        assert proc.returncode == 130, stderr
        assert "the output folder was left as it was" in stderr
        assert not list(out.glob(".mha2sha-partial-*"))
    proc = run("convert", model, "-e", enc, "-o", out, "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert not list(out.glob(".mha2sha-partial-*"))  # a killed run's staging is cleaned
    assert json.loads((out / "verification_report.json").read_text())["seed"] == 7


def test_a_stale_staging_folder_is_removed(example, tmp_path):
    model, _ = example
    out = tmp_path / "out"
    stale = out / ".mha2sha-partial-dead"
    stale.mkdir(parents=True)
    (stale / "big.onnx.data").write_bytes(b"\0" * 1_000_000)
    assert run("convert", model, "-o", out).returncode == 0
    assert not stale.exists()


def test_prepared_is_part_of_the_runs_one_transaction(tmp_path):
    """--ar-tokens writes the rebuilt decoder to OUTDIR/prepared/: staged and moved in with
    the run (one manifest, no second one inside prepared/), the report naming it where it is;
    a run killed before its commit leaves the folder as it was; a rerun without the flag
    removes the old prepared/ files (and never a user's file there); a user's own file in
    the way is refused before anything is written."""
    from fuzz import AttentionConfig, build

    cfg = AttentionConfig(dynamic=False, past_kv="full", mask="causal", mlp=False, rope="rotate_half",
                          heads=4, kv_heads=2, seq=4, past=4)
    model = tmp_path / "in" / "m.onnx"
    model.parent.mkdir()
    onnx.save(build(cfg, seed=0).model, model)
    before_inputs = tree_hashes(model.parent)
    out = tmp_path / "out"
    flags = ["--ar-tokens", "1", "--kv-cache-io", "original"]
    proc = run("convert", model, "-o", out, *flags)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert "prepared/m.onnx" in manifest and not (out / "prepared" / MANIFEST).exists()
    assert sorted(visible(out)) == sorted(manifest + ["prepared"])
    report = json.loads((out / "verification_report.json").read_text())
    assert report["model"]["original"] == str(out.resolve() / "prepared" / "m.onnx") == report["prepared"]["model"]
    assert not list(out.glob(".mha2sha-partial-*"))

    # killed while verifying: prepared/ and everything else as they were
    passed = tree_hashes(out)
    proc = subprocess.Popen([*CLI, "convert", str(model), "-o", str(out), *flags, "--seed", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(".mha2sha-partial-*/*_sha.onnx", out, proc), "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert tree_hashes(out) == passed

    # a user's file inside prepared/ is never deleted; a rerun without the flag removes the rest
    (out / "prepared" / "mine.txt").write_text("mine")
    proc = run("convert", model, "-o", out, "--kv-cache-io", "original")
    assert proc.returncode == 0, proc.stderr
    assert visible(out).count("prepared/m.onnx") == 0 and (out / "prepared" / "mine.txt").read_text() == "mine"
    assert "prepared" not in json.dumps(json.loads((out / MANIFEST).read_text()))

    # a user's file where prepared/ goes: refused, one line, nothing written
    (out / "prepared" / "m.onnx").write_text("mine too")
    before = tree_hashes(out)
    assert_refused(run("convert", model, "-o", out, *flags), 2, str(out / "prepared" / "m.onnx"), "did not write")
    assert tree_hashes(out) == before
    assert tree_hashes(model.parent) == before_inputs


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_output_files_follow_the_umask(example, tmp_path, umask):
    model, enc = example
    out = tmp_path / "out"
    assert run("convert", model, "-e", enc, "-o", out, "--create-input-lists", umask=umask).returncode == 0
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.suffix for p in files} >= {".onnx", ".encodings", ".json", ".md", ".raw", ".txt"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, (p, oct(p.stat().st_mode))
    for d in [out / "inputs", out / "inputs" / "0"]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask, d


# -- 2. invalid models are refused before converting (exit 2 naming the problem) ----------------


def _attention_model(tmp_path: Path, name: str = "m") -> tuple[Path, onnx.ModelProto]:
    from fuzz import AttentionConfig, build

    proto = build(AttentionConfig(mlp=False), seed=0).model
    path = tmp_path / "in" / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, proto


def _save_raw(path: Path, proto: onnx.ModelProto, replace: tuple[bytes, bytes] | None = None) -> Path:
    data = proto.SerializeToString()
    if replace is not None:
        assert replace[0] in data
        data = data.replace(*replace)
    path.write_bytes(data)
    return path


def _cycle(proto):
    # the first node reads the last node's output
    first, last = proto.graph.node[0], proto.graph.node[-1]
    first.input[0] = last.output[0]


def _dangling(proto):
    proto.graph.node[3].input[0] = "nobody_makes_this"


def _short_inline(proto):
    t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    t.raw_data = t.raw_data[: len(t.raw_data) // 2]


def _huge_declared(proto):
    t = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    del t.dims[:]
    t.dims.extend([1_000_000, 1_000_000])  # 1e12 elements, a few KB of data


def _negative_input_dim(proto):
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -3


def _zero_input_dim(proto):
    # the sequence of the hidden states 0 where the model's mask fixes it (0 itself is valid:
    # an empty KV cache at the first step): onnx.checker's shape inference names the conflict
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 0


def _negative_initializer_dim(proto):
    t = next(t for t in proto.graph.initializer if len(t.dims) == 2)
    t.dims[0] = -t.dims[0]


def _future_opset(proto):
    proto.opset_import[0].version = onnx.defs.onnx_opset_version() + 5


def _old_opset_new_op(proto):
    proto.opset_import[0].version = 7  # every op of the model exists at opset 7; Gelu only from opset 20
    out = proto.graph.output[0]
    proto.graph.node.append(onnx.helper.make_node("Gelu", [out.name], ["gelu_out"]))
    gelu = proto.graph.output.add()
    gelu.CopyFrom(out)
    gelu.name = "gelu_out"


def _duplicate_location(proto):
    t = proto.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    nbytes = len(t.raw_data)
    t.ClearField("raw_data")
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(nbytes)), ("location", "other.bin")):
        e = t.external_data.add()
        e.key, e.value = key, value
    return {"w.bin": nbytes, "other.bin": nbytes}


INVALID_MODELS = {
    "cycle": (_cycle, "cycle"),
    "dangling input": (_dangling, "nobody_makes_this"),
    "inline data shorter than its dims": (_short_inline, "holds"),
    "1e12 declared elements with a few KB": (_huge_declared, "1000000"),
    "negative graph input dim": (_negative_input_dim, "-3"),
    "zero graph input dim that the graph contradicts": (_zero_input_dim, "shape inference"),
    "negative initializer dim": (_negative_initializer_dim, "negative dimension"),
    "opset newer than onnx knows": (_future_opset, "newer than the installed onnx"),
    "opset-7 model with a newer op": (_old_opset_new_op, "Gelu"),
    "two location keys in external_data": (_duplicate_location, "more than once"),
}


@pytest.mark.parametrize("case", list(INVALID_MODELS))
def test_invalid_models_are_refused_naming_the_problem(tmp_path, case):
    mutate, needle = INVALID_MODELS[case]
    path, proto = _attention_model(tmp_path)
    files = mutate(proto) or {}
    for name, size in files.items():
        (path.parent / name).write_bytes(b"\0" * size)
    _save_raw(path, proto)
    before = tree_hashes(path.parent)
    out = tmp_path / "out"
    assert_refused(run("convert", path, "-o", out), 2, str(path), "invalid model", needle)
    assert not out.exists() or visible(out) == []
    assert tree_hashes(path.parent) == before
    assert_refused(run("inspect", path), 2, str(path), needle)


def test_non_utf8_names_are_refused(tmp_path):
    path, proto = _attention_model(tmp_path)
    proto.graph.node[2].name = "NAMEX"
    proto.graph.node[2].output[0] = "TENSORX"
    proto.graph.node[3].input[0] = "TENSORX"
    _save_raw(path, proto, (b"NAMEX", b"N\xff\xfeEX"))  # same lengths: only the bytes change
    path.write_bytes(path.read_bytes().replace(b"TENSORX", b"TENS\xc3(X"))
    before = tree_hashes(path.parent)
    assert_refused(run("convert", path, "-o", tmp_path / "out"), 2, str(path), "not UTF-8")
    assert tree_hashes(path.parent) == before


def test_an_unsorted_valid_model_still_converts(tmp_path):
    path, proto = _attention_model(tmp_path)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    _save_raw(path, proto)
    proc = run("convert", path, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr


def test_an_ir3_model_converts_to_a_valid_model(tmp_path):
    """IR 3: every initializer is also a graph input. The output is IR 4 and passes
    onnx.checker, and computes what the input computes (onnxruntime)."""
    import numpy as np
    import onnxruntime as ort

    path, proto = _attention_model(tmp_path)
    proto.ir_version = 3
    proto.opset_import[0].version = 8
    proto.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)  # a valid IR-3 file
    _save_raw(path, proto)
    out = tmp_path / "out"
    proc = run("convert", path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    (sha,) = out.glob("*_sha.onnx")
    onnx.checker.check_model(onnx.load(sha), full_check=True)
    x = np.random.default_rng(0).standard_normal([d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    feeds = {proto.graph.input[0].name: x}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(sha), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


# -- 3. hostile encodings --------------------------------------------------------------------


def _duplicate_tensor_key_061(doc: dict) -> str:
    """0.6.1 maps tensor names to encodings: a name twice is valid JSON, and json keeps the last."""
    assert doc["version"] == "0.6.1"
    section = "param_encodings" if doc.get("param_encodings") else "activation_encodings"
    name, value = next(iter(doc[section].items()))
    other = [dict(c, scale=c["scale"] * 2) if "scale" in c else c for c in value]
    text = json.dumps(doc)
    entry = f"{json.dumps(name)}: {json.dumps(value)}"
    assert entry in text
    return text.replace(entry, f"{entry}, {json.dumps(name)}: {json.dumps(other)}", 1)


def _minus_infinity_offset(doc: dict) -> str:
    section = "param_encodings" if doc.get("param_encodings") else "activation_encodings"
    name = next(iter(doc[section]))
    doc[section][name][0]["offset"] = float("-inf")
    return json.dumps(doc)  # writes -Infinity, which Python's json reads back


def _duplicate_field(doc: dict) -> str:
    text = json.dumps(doc)
    return text.replace('"bitwidth": ', '"bitwidth": 4, "bitwidth": ', 1)


@pytest.mark.parametrize("mutate, needle", [
    (_duplicate_tensor_key_061, "appears twice"),
    (_minus_infinity_offset, "infinite"),
    (_duplicate_field, "'bitwidth' appears twice"),
])
def test_hostile_encodings_are_refused(example, tmp_path, mutate, needle):
    model, enc = example
    doc = json.loads(enc.read_text())
    if doc["version"] != "0.6.1":
        from mha2sha.encodings import read_encodings, write_encodings

        write_encodings(read_encodings(enc), enc, version="0.6.1")
        doc = json.loads(enc.read_text())
    enc.write_text(mutate(doc))
    before = tree_hashes(model.parent)
    out = tmp_path / "out"
    assert_refused(run("convert", model, "-e", enc, "-o", out), 2, str(enc), needle)
    assert tree_hashes(model.parent) == before
    assert not out.exists() or visible(out) == []


@pytest.mark.parametrize("version, field", [("0.6.1", "scale"), ("1.0.0", "scale"), ("2.0.0", "y_scale"), ("1.0.0", "name")])
def test_a_key_twice_is_refused_in_every_version(example, tmp_path, version, field):
    """A field written twice in one entry (JSON keeps the last value): refused in every
    version, by the streaming reader, naming the file and the key."""
    from mha2sha.encodings import read_encodings, write_encodings

    model, enc = example
    write_encodings(read_encodings(enc), enc, version=version, model=onnx.load(str(model)))
    text = enc.read_text()
    needle = f'"{field}": '
    assert needle in text
    enc.write_text(text.replace(needle, f'{needle}{"0.5" if field != "name" else json.dumps("other")}, {needle}', 1))
    before = tree_hashes(model.parent)
    out = tmp_path / "out"
    assert_refused(run("convert", model, "-e", enc, "-o", out), 2, str(enc), f"key '{field}' appears twice")
    assert tree_hashes(model.parent) == before
    assert not out.exists() or visible(out) == []


# -- 5. every failure mode: its exit code and one line -----------------------------------------


@pytest.mark.parametrize("value, needle", [("0", "must be 1 or more"), ("-2", "must be 1 or more"), ("3", "values that work: 1, 2, 4, 8")])
def test_build_ar_that_cannot_work_is_exit_2_with_the_divisors(example, tmp_path, value, needle):
    model, _ = example  # 8 heads per block
    out = tmp_path / "out"
    assert_refused(run("convert", model, "-o", out, "--build-ar", value), 2, needle)
    assert not out.exists() or visible(out) == []


def test_a_chain_of_a_thousand_identity_nodes(tmp_path):
    """const_tensor follows Identity chains in a loop (it recursed: RecursionError, exit 4)."""
    path, proto = _attention_model(tmp_path)
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    source = reshape.input[1]
    chain = []
    for k in range(1000):
        chain.append(onnx.helper.make_node("Identity", [source], [f"chain_{k}"], name=f"chain_{k}"))
        source = f"chain_{k}"
    reshape.input[1] = source
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(chain + nodes)
    _save_raw(path, proto)
    proc = run("convert", path, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr


def test_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic inference saves sym_shape_infer_temp.onnx (and its data) into
    the current directory when it cannot infer every shape (here: a custom-domain op). The
    converter's call runs it elsewhere. (In-process: the console script reaches it only for
    graphs ONNX's own inference leaves incomplete.)"""
    from onnx import TensorProto, helper

    from mha2sha.passes import shapes

    g = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="custom"), helper.make_node("Relu", ["y"], ["z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    monkeypatch.chdir(tmp_path)
    assert shapes._symbolic(model) is None  # incomplete: ONNX's inference is used instead
    assert list(tmp_path.iterdir()) == []


def _unrelated_symbolic_dims(model: Path, dst: Path) -> Path:
    """``model`` with every size-1 and size-4 input/output dim replaced by a symbol of its
    own name (d0, d1, ...): nothing tells the verifier that they must agree (the RoPE table
    fixes the sequence to 4), so it searches for values the model runs with."""
    proto = onnx.load(str(model))
    names = (f"d{k}" for k in range(1000))
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_value in (1, 4):
                dim.dim_param = next(names)  # (clears dim_value: one field of a oneof)
    del proto.graph.value_info[:]
    onnx.save(proto, str(dst))
    return dst


def test_the_dims_search_is_bounded_in_time_and_silent(example, tmp_path):
    """Symbolic input dims with unrelated names: the verifier tries assignments until one
    runs, each a run of the model. It stops at its time bound (forced to 0 s here: one try)
    with one clear warning naming the dims and the bound, and onnxruntime's own error log of
    the failed runs never reaches stderr. The verdict is honest: FAIL, exit 1."""
    model, enc = example
    sym = _unrelated_symbolic_dims(model, tmp_path / "sym.onnx")
    out = tmp_path / "out"
    env = {**os.environ, "MHA2SHA_DIMS_SEARCH_SECONDS": "0"}
    started = time.monotonic()
    proc = subprocess.run([*CLI, "convert", str(sym), "-e", str(enc), "-o", str(out)], capture_output=True, text=True,
                          timeout=600, env=env)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "symbolic input dims" in line]
    assert warnings, proc.stderr
    assert all(line.startswith("WARNING ") and "1 tries" in line and "the time bound of 0 s" in line
               and "MHA2SHA_DIMS_SEARCH_SECONDS" in line and "d0=" in line for line in warnings), warnings
    assert not re.search(r"\[[VIWEF]:onnxruntime", proc.stderr), proc.stderr  # onnxruntime's own log lines
    assert (out / "VERIFICATION_FAILED").exists()
    assert elapsed < 300  # (the 2,000-try search took 66-99 s before the bound)


@pytest.mark.parametrize("where", ["model", "encodings", "report"])
def test_disk_full_is_exit_2_and_leaves_no_finished_output(example, tmp_path, where):
    """ENOSPC while writing the model, after it (the encodings), or at the report: exit 2
    naming the folder and its free space; the previous run's files stay as they were."""
    model, enc = example
    out = tmp_path / "out"
    assert run("convert", model, "-e", enc, "-o", out).returncode == 0
    before = tree_hashes(out)
    target = {"model": "mha2sha.graph.writer.write_model", "encodings": "mha2sha.encodings.io.write_encodings",
              "report": "verify.report.write_report"}[where]
    module, attr = target.rsplit(".", 1)
    code = (
        "import errno, importlib, sys\n"
        f"m = importlib.import_module({module!r})\n"
        "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        f"setattr(m, {attr!r}, full)\n"
        "import mha2sha.graph.io, mha2sha.encodings, verify.report\n"
        f"for mod in (mha2sha.graph.io, mha2sha.encodings, sys.modules.get('mha2sha.api')):\n"
        f"    if mod is not None and hasattr(mod, {attr!r}): setattr(mod, {attr!r}, full)\n"
        "import mha2sha.api\n"
        f"if hasattr(mha2sha.api, {attr!r}): setattr(mha2sha.api, {attr!r}, full)\n"
        "from mha2sha.cli import main\n"
        f"sys.exit(main(['convert', {str(model)!r}, '-e', {str(enc)!r}, '-o', {str(out)!r}, '--seed', '3']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert_refused(proc, 2, str(out), "No space left on device", "MB free")
    after = {k: v for k, v in tree_hashes(out).items() if not k.startswith(".mha2sha-partial-")}
    assert after == before
    assert not list(out.glob(".mha2sha-partial-*"))


# -- 4. input_list.txt: names that cannot be written verbatim -------------------------------------


def test_input_list_names_are_never_written_verbatim(tmp_path):
    """A graph input named with a space, a newline and a path: one line per set, the entry
    and the file under a safe name, the mapping in input_list_names.json."""
    path, proto = _attention_model(tmp_path)
    hostile = "hidden states\nevil:=/etc/passwd/" + "x" * 300
    old = proto.graph.input[0].name
    proto.graph.input[0].name = hostile
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = hostile
    _save_raw(path, proto)
    out = tmp_path / "out"
    proc = run("convert", path, "-o", out, "--create-input-lists")
    assert proc.returncode == 0, proc.stderr
    lines = (out / "input_list.txt").read_text().splitlines()
    assert len(lines) == 1 and "/etc/passwd" not in lines[0] and " " not in lines[0].split(":=", 1)[0]
    names = json.loads((out / "input_list_names.json").read_text())
    entry = names["inputs"][hostile]
    assert lines[0].startswith(entry["entry"] + ":=") and len(entry["file"]) < 255
    raw = out / "inputs" / "0" / entry["file"]
    assert raw.is_file() and raw.parent == out / "inputs" / "0"
