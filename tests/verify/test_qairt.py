"""qairt-dev's MHA -> SHA output of a tiny Hugging Face Llama export, verified per block by
`mha2sha verify` with the correspondence derived by structure (qairt writes none).

Marker ``qairt``. Needs torch/transformers (the export) and a Python 3.12 venv with
``qairt-dev[onnx]==0.13.0`` at $MHA2SHA_QAIRT_PYTHON (default /work/qairt-venv/bin/python);
skipped with the reason otherwise. .ci/run creates that venv when the registry has it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mha2sha.cli import main

pytestmark = pytest.mark.qairt

QAIRT_PYTHON = Path(os.environ.get("MHA2SHA_QAIRT_PYTHON", "/work/qairt-venv/bin/python"))


@pytest.fixture(scope="module")
def qairt_pair(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if not QAIRT_PYTHON.exists():
        pytest.skip(f"no qairt-dev venv at {QAIRT_PYTHON} (set MHA2SHA_QAIRT_PYTHON)")
    from tests.exporters.hf_models import ExportCase, export

    tmp = tmp_path_factory.mktemp("qairt")
    original = tmp / "llama_decode.onnx"
    # qairt's pass needs static shapes: the decode export is static.
    export(ExportCase("llama", False, 17, "eager", {"num_key_value_heads": 2}, decode=True), original)
    run = subprocess.run([str(QAIRT_PYTHON), str(Path(__file__).with_name("qairt_convert.py")), str(original), str(tmp / "qairt"), "llama_sha"],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        pytest.fail(f"qairt-dev's pass failed: {run.stderr[-2000:]}")
    return original, Path(run.stdout.strip().splitlines()[-1])


def test_qairt_output_is_verified_per_block(qairt_pair, tmp_path, capsys):
    original, sha = qairt_pair
    code = main(["verify", str(original), str(sha), "-o", str(tmp_path / "v")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "v" / "verification_report.json").read_text())
    assert code == 0 and report["verdict"] == "PASS", out
    assert len(report["blocks"]) == 2 and all(b["status"] == "pass" and b["truth"] == "float64" for b in report["blocks"])
    assert not report["unmatched"]["blocks"]
    # qairt split the heads: 4 Softmax per block where the original had one
    assert report["io_contract"]["op_counts"]["after"]["Softmax"] == 4 * report["io_contract"]["op_counts"]["before"]["Softmax"]


def test_defect_in_qairt_output_is_caught(qairt_pair, tmp_path):
    """The first head's query weights of qairt's model replaced by the second head's."""
    import onnx
    from onnx import numpy_helper

    original, sha = qairt_pair
    model = onnx.load(sha)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}

    def q_weight(softmax):
        """Walk up the scores' first input (the query side) to the MatMul with a weight."""
        name = softmax.input[0]
        for _ in range(40):
            node = producer[name]
            if node.op_type == "MatMul" and any(i in inits for i in node.input):
                return next(i for i in node.input if i in inits)
            name = node.input[0]
        raise AssertionError("no query projection found")

    first, second = q_weight(softmaxes[0]), q_weight(softmaxes[1])
    if first == second:
        pytest.skip("qairt keeps the query projection fused: no per-head weight to swap")
    inits[first].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[second]), first))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    code = main(["verify", str(original), str(broken), "-o", str(tmp_path / "v")])
    report = json.loads((tmp_path / "v" / "verification_report.json").read_text())
    assert code == 1 and report["verdict"].startswith("FAIL")
    assert report["blocks"][0]["status"] == "fail"
