"""Per-block verification in worker processes while the data file is written
(mha2sha.block_verification).

Oracles: verify.run.verify_models, the serial path that loads both written models whole and
checks each block with its weights in memory (verdicts and every check's error must be the
same); and a defect injected into the written weights, which the workers must find in the
block that reads them, and only there."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert
from mha2sha.block_verification import WORKERS_ENV
from mha2sha.correspondence import block_correspondence
from mha2sha.graph import writer
from mha2sha.graph.io import load_model
from verify.extract import extract
from verify.run import verify_models


def _external_model(tmp_path: Path, **overrides) -> Path:
    cfg = AttentionConfig(**{"heads": 4, "kv_heads": 2, "hidden": 128, "mlp": True, "layers": 3, **overrides})
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    onnx.save(copy.deepcopy(build(cfg, seed=7).model), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=1024)
    return path


def _checks(block: dict) -> list[tuple]:
    return [(c["check"], c["output"], c["passed"], c["max_abs"]) for c in block["checks"]]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("flags", [{}, {"link_weights": True}, {"replace_linear_with_conv": True}], ids=["copy", "link", "conv"])
def test_workers_give_the_serial_verdicts(tmp_path, monkeypatch, workers, flags):
    monkeypatch.setenv(WORKERS_ENV, str(workers))
    path = _external_model(tmp_path)
    result = convert(path, tmp_path / "out", ConvertOptions(verify=True, **flags))
    assert result.report["verification_workers"] == workers
    specs = block_correspondence(path, allow_hard_links=True)
    if flags.get("replace_linear_with_conv"):  # the block boundaries the conversion verified
        specs.blocks = [s for s in specs.blocks if s.name in {b["name"] for b in result.report["blocks"]}]
    # A copy of the input with one link per file: --link-weights gave its data file a second
    # name, and the capture of real block inputs (onnx.load) refuses such a file.
    original = tmp_path / "in_copy" / path.name
    shutil.copytree(path.parent, original.parent)
    serial = verify_models(original, result.model_path, specs, seed=42, end_to_end=False, weight_bytes=0,
                           allow_hard_links=True)
    got = {b["name"]: b for b in result.report["blocks"]}
    assert len(got) == 3
    if flags.get("replace_linear_with_conv"):
        assert all(b["status"] == "pass" for b in got.values())
        return
    for expected in serial["blocks"]:
        block = got[expected["name"]]
        assert block["status"] == expected["status"] == "pass"
        assert block["feeds"] == expected["feeds"] == "captured"
        assert _checks(block) == _checks(expected)


def test_a_defect_in_the_written_weights_fails_its_block_only(tmp_path, monkeypatch):
    """One head slice of one projection is written wrong (by 1e-3 of its values' scale):
    the conversion's verification, reading the data file as it is written, must fail the
    block that reads it."""
    monkeypatch.setenv(WORKERS_ENV, "1")
    path = _external_model(tmp_path)
    corrupted: list[str] = []
    derive = writer._Producer._derive

    def derive_one_wrong(self, group):
        if corrupted:
            return derive(self, group)
        value, derivation, length = group.items[0]
        corrupted.append(value.name)
        original = derivation.derive

        class Wrong:
            def __getattr__(self, name):
                return getattr(derivation, name)

            def derive(self, array):
                out = np.array(original(array), copy=True)
                out.reshape(-1)[0] += 1e-3 * float(np.abs(out).max())
                return out

        group.items[0] = (value, Wrong(), length)
        return derive(self, group)

    monkeypatch.setattr(writer._Producer, "_derive", derive_one_wrong)
    result = convert(path, tmp_path / "out", ConvertOptions(verify=True, end_to_end=False))
    assert corrupted
    blocks = result.report["blocks"]
    failed = [b for b in blocks if b["status"] == "fail"]
    assert len(failed) == 1, [(b["name"], b["status"], b["error"]) for b in blocks]
    assert not failed[0]["error"]
    assert {c["check"] for c in failed[0]["checks"] if not c["passed"]} >= {"sha_ort_vs_truth"}
    assert result.report["status"] != "pass"
    # The block that failed is the one whose converted block model reads the corrupted weight.
    converted = load_model(result.model_path).model
    spec = next(s for s in block_correspondence(path).blocks if s.name == failed[0]["name"])
    block = extract(converted, spec.sha_inputs, spec.sha_outputs)
    assert corrupted[0] in {t.name for t in block.graph.initializer}
