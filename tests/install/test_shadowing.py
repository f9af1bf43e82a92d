"""Our entry points import our own ``verify``/``fuzz``/``refimpl`` even when the working
directory holds a user's files of the same name; the Python API names the shadowing file.

Oracle: each shadowing file exits the process with a message naming itself when imported, and
the conversion's own verification must pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.install.shadow import make_shadowed_dir

BIN = Path(sys.executable).parent


def _run(cmd, cwd, **env):
    # PYTHONPATH="." as well: the console scripts must not import from the working directory either
    full_env = {**os.environ, "PYTHONPATH": ".", **env}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_python_m_and_console_scripts_ignore_a_users_verify_and_fuzz(tmp_path):
    work = make_shadowed_dir(tmp_path / "work")
    ex = _run([sys.executable, "-m", "mha2sha", "example", "llama3-tiny", "-o", "ex"], work)
    assert ex.returncode == 0, ex.stderr
    conv = _run([sys.executable, "-m", "mha2sha", "convert", "ex/llama3-tiny.onnx", "-e", "ex/llama3-tiny.encodings",
                 "-o", "out", "--json"], work)
    assert conv.returncode == 0, conv.stdout + conv.stderr
    assert json.loads(conv.stdout)["status"] == "pass"
    report = json.loads((work / "out" / "verification_report.json").read_text())
    assert report["status"] == "pass"
    ver = _run([str(BIN / "mha2sha"), "verify", "ex/llama3-tiny.onnx", "out/llama3-tiny_kvcache_sha.onnx", "-o", "ver"], work)
    assert ver.returncode == 0, ver.stdout + ver.stderr
    compat = _run([str(BIN / "mha2sha-onnx-converter"), "--exported-model-path", "ex/llama3-tiny.onnx",
                   "--sha-export-path", "compat", "--gqa-model", "--handle-rope-ops"], work)
    assert compat.returncode == 0, compat.stdout + compat.stderr
    assert json.loads((work / "compat" / "verification_report.json").read_text())["status"] == "pass"


def test_the_api_names_the_file_that_shadows_our_package(tmp_path):
    work = make_shadowed_dir(tmp_path / "work")
    code = "import mha2sha\nmha2sha.convert('model.onnx', 'out')\n"
    run = _run([sys.executable, "-c", code], work)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and str(work / "verify.py") in last and "shadows" in last
    assert not (work / "out").exists()
