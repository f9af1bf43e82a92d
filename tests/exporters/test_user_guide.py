"""The user guide's walkthrough (docs/user-guide.md), run as written: its scripts export a tiny
Hugging Face model with torch.onnx, quantize it with AIMET and run the SHA model on the HTP
backend; the commands it shows convert it. The output the guide prints for `mha2sha inspect`
must be what the command prints.

Oracles: the converter's own verification (float64 truth by refimpl, onnxruntime), the text
of the guide, and onnxruntime-qnn where installed. The AIMET and HTP steps skip with the
reason where aimet-onnx / onnxruntime-qnn are absent."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.exporters

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "user-guide.md"
SCRIPTS = ROOT / "docs" / "walkthrough"
BIN = Path(sys.executable).parent


def _run(cmd, cwd):
    run = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{cmd}: exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("guide")
    _run([sys.executable, SCRIPTS / "export_tiny_llama.py", work / "tiny_llama.onnx"], work)
    return work


def _shown_output(command: str) -> list[str]:
    """The lines the guide shows after ``$ <command>`` in a console block."""
    text = GUIDE.read_text()
    block = re.search(r"```console\n\$ " + re.escape(command) + r"\n(.*?)```", text, re.S)
    assert block, f"the guide shows no output for {command!r}"
    return [line.rstrip() for line in block.group(1).splitlines()]


def test_the_guides_inspect_output_is_what_the_command_prints(exported):
    printed = _run([BIN / "mha2sha", "inspect", "tiny_llama.onnx"], exported)
    assert [line.rstrip() for line in printed.splitlines()] == _shown_output("mha2sha inspect work/tiny_llama.onnx")


def test_the_exported_model_converts_and_verifies(exported):
    _run([BIN / "mha2sha", "convert", "tiny_llama.onnx", "-o", "sha", "--create-input-lists"], exported)
    report = json.loads((exported / "sha" / "verification_report.json").read_text())
    assert report["status"] == "pass" and len(report["blocks"]) == 2
    assert (exported / "sha" / "verification_report.html").is_file()


def test_aimet_step_and_conversion_with_its_encodings(exported):
    if importlib.util.find_spec("aimet_onnx") is None:
        pytest.skip("aimet-onnx is not installed (the guide's step 2)")
    _run([sys.executable, SCRIPTS / "aimet_encodings.py", "tiny_llama.onnx", "aimet", "tiny_llama"], exported)
    _run([BIN / "mha2sha", "convert", "aimet/tiny_llama.onnx", "-e", "aimet/tiny_llama.encodings", "-o", "sha_q"], exported)
    report = json.loads((exported / "sha_q" / "verification_report.json").read_text())
    assert report["status"] == "pass" and report["encodings_coverage"]["status"] == "pass"
    assert any(c["check"] == "quant_sim_sha_vs_mha" for b in report["blocks"] for c in b["checks"])


def test_htp_step_runs_the_sha_model_on_the_htp_backend(exported):
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        pytest.skip("onnxruntime-qnn is not installed (the guide's step 4a: pip install onnxruntime-qnn==2.7.0)")
    out = exported / "sha_htp"
    _run([BIN / "mha2sha", "convert", "tiny_llama.onnx", "-o", out, "--name", "m"], exported)
    printed = _run([sys.executable, SCRIPTS / "run_on_htp.py", out / "m.onnx"], exported)
    found = re.search(r"logits: max \|HTP - CPU\| = \S+ \((\S+) of the output range\)", printed)
    assert found and float(found.group(1)) < 1e-2, printed  # fp16 on HTP
