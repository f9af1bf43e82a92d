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
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

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


def test_a_rerun_replaces_every_file_of_the_previous_run(example, tmp_path):
    """Stale inputs/, input lists, _conv_ models and the VERIFICATION_FAILED marker go; the
    user's files stay."""
    model, enc = example
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # A failing first run: GPT-2 has no RoPE, so llama3's strict RoPE check fails (outputs kept, marked).
    examples.write_example("gpt2-tiny", tmp_path / "gpt2")
    proc = run("--exported-model-path", tmp_path / "gpt2" / "gpt2-tiny.onnx", "--base-llm", "llama3", "--strict",
               "--create-input-lists", "--sha-export-path", out, cmd=COMPAT)
    assert proc.returncode == 1, proc.stderr
    assert (out / "VERIFICATION_FAILED").is_file() and (out / "input_list.txt").is_file()
    first = set(visible(out))
    proc = run("convert", model, "-e", enc, "-o", out, "--replace-linear-with-conv")
    assert proc.returncode == 0, proc.stderr
    now = set(visible(out))
    assert "VERIFICATION_FAILED" not in now and "input_list.txt" not in now and "inputs" not in now
    assert "notes.txt" in now and (out / "notes.txt").read_text() == "mine"
    assert "llama3-tiny_conv_kvcache_sha.onnx" in now
    assert json.loads((out / "verification_report.json").read_text())["status"] == "pass"
    assert first - now  # the first run's own files were removed, nothing of the user's


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
