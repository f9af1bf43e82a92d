"""The wheel, as a user installs it: built from the sources, installed into a fresh venv outside
the checkout, and run from a working directory that holds a user's verify.py and fuzz.py.

Opt-in (marker ``wheel``; .ci/run runs it): it builds in an isolated environment and installs
the dependencies from the package index. Oracles: the wheel's file list and metadata, the
location the installed packages are imported from, and the verification the commands run."""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.install.shadow import make_shadowed_dir

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"mha2sha", "verify", "refimpl", "fuzz"}


def _sources(dest: Path) -> Path:
    """The files git tracks or would track (a build from the checkout itself would leave build/ and egg-info there)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def _run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{cmd} exited {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = _sources(base / "src")
    build = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", base / "dist", src], base)
    # setuptools warns here about deprecated metadata (the old `project.license` table form)
    assert "Deprecat" not in build.stdout + build.stderr, build.stderr[-3000:]
    (wheel,) = (base / "dist").glob("mha2sha-*.whl")
    venv.create(base / "venv", with_pip=True)
    py = base / "venv" / "bin" / "python"
    _run([py, "-m", "pip", "install", "--quiet", wheel], base)
    return wheel, base / "venv"


def test_the_wheel_holds_our_four_packages_the_license_and_its_spdx_expression(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(metadata).decode())
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == TOP_LEVEL
    assert not any(n.startswith("tests/") for n in names)
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_installed_commands_convert_and_verify_from_a_shadowed_directory(installed, tmp_path):
    _, env = installed
    bin_ = env / "bin"
    site = _run([bin_ / "python", "-c", "import mha2sha, verify, refimpl, fuzz, json; "
                 "print(json.dumps([m.__file__ for m in (mha2sha, verify, refimpl, fuzz)]))"], tmp_path).stdout
    for where in json.loads(site):
        assert Path(where).is_relative_to(env) and not Path(where).is_relative_to(ROOT)

    work = make_shadowed_dir(tmp_path / "work")
    _run([bin_ / "mha2sha", "example", "llama3-tiny", "-o", "ex"], work)
    conv = _run([bin_ / "mha2sha", "convert", "ex/llama3-tiny.onnx", "-e", "ex/llama3-tiny.encodings", "-o", "out", "--json"], work)
    summary = json.loads(conv.stdout)
    assert summary["status"] == "pass" and Path(summary["model"]).is_file() and Path(summary["encodings"]).is_file()
    _run([bin_ / "mha2sha", "verify", "ex/llama3-tiny.onnx", summary["model"], "-e", "ex/llama3-tiny.encodings",
          "--sha-encodings", summary["encodings"], "-o", "ver"], work)
    assert json.loads((work / "ver" / "verification_report.json").read_text())["status"] == "pass"
    _run([bin_ / "mha2sha-onnx-converter", "--exported-model-path", "ex/llama3-tiny.onnx",
          "--exported-model-encoding-path", "ex/llama3-tiny.encodings", "--sha-export-path", "compat",
          "--gqa-model", "--handle-rope-ops", "--handle-past-key-value"], work)
    assert json.loads((work / "compat" / "verification_report.json").read_text())["status"] == "pass"
    # `python -m` puts the working directory first on sys.path: the shadowing case itself
    _run([bin_ / "python", "-m", "mha2sha", "convert", "ex/llama3-tiny.onnx", "-o", "out_m"], work)
    assert json.loads((work / "out_m" / "verification_report.json").read_text())["status"] == "pass"
