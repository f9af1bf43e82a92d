"""Every bundled example, converted by mha2sha, is verified per block by `mha2sha verify`
with the correspondence derived by structure (no correspondence.json given): the derivation
finds the same blocks the converter wrote, and they pass."""

from __future__ import annotations

import json

import pytest

from fuzz import examples
from mha2sha.cli import main
from verify.correspondence import FILE_NAME, read


@pytest.mark.parametrize("name", list(examples.EXAMPLES))
def test_example_verified_per_block_by_structure(tmp_path, name, capsys):
    paths = examples.write_example(name, tmp_path / "ex")
    model = next(p for p in paths.values() if str(p).endswith(".onnx"))
    assert main(["convert", str(model), "-o", str(tmp_path / "out"), "--no-verification"]) == 0
    sha = next(p for p in (tmp_path / "out").glob("*.onnx"))
    written = read(tmp_path / "out" / FILE_NAME)
    code = main(["verify", str(model), str(sha), "-o", str(tmp_path / "v"), "--no-end-to-end"])
    capsys.readouterr()
    report = json.loads((tmp_path / "v" / "verification_report.json").read_text())
    assert code == 0, report["verdict"]
    assert not report["unmatched"]["blocks"], report["unmatched"]
    assert len(report["blocks"]) == len(written.blocks) and all(b["status"] == "pass" for b in report["blocks"])
    assert report["verdict"].startswith("PASS (per block only")
