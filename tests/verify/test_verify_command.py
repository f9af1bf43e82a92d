"""`mha2sha verify ORIGINAL SHA` as a user runs it: on pairs made by mha2sha (with the
correspondence.json the conversion wrote, and without it), on pairs written by hand, with
injected defects; the report header, the console verdict and the exit code always agree;
foreign encodings are refused; a bad correspondence file is bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import AttentionConfig, build, make_encodings
from mha2sha.api import ConvertOptions, convert
from mha2sha.cli import main
from mha2sha.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_VERIFICATION_FAILED
from tests.verify import handmade as hm
from verify.correspondence import FILE_NAME, read
from verify.report import REPORT_JSON, REPORT_MD, verdict

CFG = AttentionConfig(batch=1, seq=5, past=2, hidden=24, heads=4, kv_heads=2, layers=2, rope="rotate_half", mask="causal",
                      past_kv="full", mlp=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify_cmd")
    built = build(CFG, seed=3)
    original = tmp / "m.onnx"
    onnx.save(built.model, original)
    enc = make_encodings(built, version="1.0.0", seed=0)
    enc_path = tmp / "m.encodings"
    enc.write(enc_path)
    result = convert(original, tmp / "out", ConvertOptions(encodings=enc_path))
    assert result.ok, result.report["verdict"]
    return original, enc_path, result


def _run(capsys, *args) -> tuple[int, str, dict, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr().out
    folder = Path(args[args.index("-o") + 1])
    report = json.loads((folder / REPORT_JSON).read_text()) if (folder / REPORT_JSON).exists() else {}
    md = (folder / REPORT_MD).read_text() if (folder / REPORT_MD).exists() else ""
    return code, out, report, md


def _agree(code: int, out: str, report: dict, md: str) -> str:
    """Exit code, console verdict and report header say the same; returns the verdict."""
    text = report["verdict"]
    assert md.splitlines()[0] == f"# Verification report: {text}"
    assert f"overall: {text}" in out
    assert code == (EXIT_OK if report["status"] == "pass" else EXIT_VERIFICATION_FAILED)
    assert text.startswith("PASS") == (report["status"] == "pass")
    return text


def test_conversion_writes_the_correspondence(converted):
    original, _, result = converted
    corr = read(result.output_dir / FILE_NAME)
    assert [b.name for b in corr.blocks] == [b["name"] for b in result.report["blocks"]]
    splits = [s for b in corr.blocks for s in b.cache_splits]
    assert splits and all(sorted(s.indices) == list(range(CFG.kv_heads)) for s in splits)


def test_mha2sha_pair_with_its_correspondence(converted, tmp_path, capsys):
    original, enc, result = converted
    code, out, report, md = _run(capsys, "verify", original, result.model_path, "--correspondence", result.output_dir / FILE_NAME,
                                 "-e", enc, "--sha-encodings", result.encodings_path, "-o", tmp_path / "v")
    assert _agree(code, out, report, md) == "PASS"
    assert len(report["blocks"]) == CFG.layers and all(b["status"] == "pass" for b in report["blocks"])
    assert any(c["check"] == "quant_sim_sha_vs_mha" for c in report["blocks"][0]["checks"])


def test_mha2sha_pair_derived_by_structure(converted, tmp_path, capsys):
    original, enc, result = converted
    code, out, report, md = _run(capsys, "verify", original, result.model_path, "-e", enc, "--sha-encodings",
                                 result.encodings_path, "-o", tmp_path / "v")
    assert _agree(code, out, report, md) == "PASS"
    assert report["model"]["correspondence"] == "derived by structure"
    assert len(report["blocks"]) == CFG.layers and not report["unmatched"]["blocks"]
    assert all(any(c["check"] == "head_encodings" and c["passed"] for c in b["checks"]) for b in report["blocks"])


def test_independent_pair_and_a_defect(tmp_path, capsys):
    pair = hm.Pair(batch=1, layers=2, past=3, cache_layout="head_major")
    for defects, expected in (((), EXIT_OK), (("wrong kv group",), EXIT_VERIFICATION_FAILED)):
        p = dataclasses.replace(pair, defects=defects)
        w = hm.params(p)
        onnx.save(hm.build_mha(p, w), tmp_path / "mha.onnx")
        onnx.save(hm.build_sha(p, w), tmp_path / "sha.onnx")
        code, out, report, md = _run(capsys, "verify", tmp_path / "mha.onnx", tmp_path / "sha.onnx", "-o", tmp_path / f"v{len(defects)}")
        text = _agree(code, out, report, md)
        assert code == expected, text
        assert len(report["blocks"]) == 2
        if defects:
            assert report["blocks"][0]["status"] == "fail" and text.startswith("FAIL (")


def test_end_to_end_only_has_its_heading(tmp_path, capsys):
    p = hm.Pair()
    onnx.save(hm.build_mha(p, hm.params(p)), tmp_path / "mha.onnx")
    code, out, report, md = _run(capsys, "verify", tmp_path / "mha.onnx", tmp_path / "mha.onnx", "-o", tmp_path / "v")
    assert _agree(code, out, report, md).startswith("PASS (end-to-end only: ")
    assert "## Blocks not matched (checked end to end only)" in md


def test_report_states_the_io_contract(converted, tmp_path, capsys):
    original, _, result = converted
    _, _, report, md = _run(capsys, "verify", original, result.model_path, "-o", tmp_path / "v")
    contract = report["io_contract"]
    before = {t["name"]: t for t in contract["inputs"]["before"]}
    after = {t["name"]: t for t in contract["inputs"]["after"]}
    m, s = onnx.load(original), onnx.load(result.model_path)
    assert set(before) == {i.name for i in m.graph.input} and set(after) == {i.name for i in s.graph.input}
    for t in contract["inputs"]["after"] + contract["outputs"]["after"]:
        assert t["dtype"] == "float" or t["dtype"] == "int64", t
        assert all(isinstance(d, (int, str)) for d in t["shape"])
    counts = contract["op_counts"]
    assert counts["before"]["Softmax"] == CFG.layers and counts["after"]["Softmax"] == CFG.layers * CFG.heads
    assert "## I/O contract" in md and "| Softmax | 2 | 8 |" in md
    for bad in ("{'", "['", "dict(", "np.", "array("):
        assert bad not in md, bad


def test_bad_correspondence_is_bad_input(converted, tmp_path, capsys):
    original, _, result = converted
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert main(["verify", str(original), str(result.model_path), "--correspondence", str(bad), "-o", str(tmp_path / "v")]) == EXIT_BAD_INPUT
    data = json.loads((result.output_dir / FILE_NAME).read_text())
    data["blocks"][0]["inputs"][0][1] = "no_such_tensor"
    bad.write_text(json.dumps(data))
    assert main(["verify", str(original), str(result.model_path), "--correspondence", str(bad), "-o", str(tmp_path / "v")]) == EXIT_BAD_INPUT
    assert "no_such_tensor" in capsys.readouterr().err


@given(st.lists(st.sampled_from(["pass", "fail"]), max_size=3), st.sampled_from(["pass", "fail", "not run"]),
       st.sampled_from([None, "pass", "fail"]), st.booleans(), st.booleans())
def test_verdict_is_pass_only_when_something_ran_and_nothing_failed(blocks, e2e, coverage, no_truth, failure):
    report = {"blocks": [{"name": f"b{i}", "status": s, "truth": "onnxruntime" if no_truth else "float64", "truth_reason": "op X"}
                         for i, s in enumerate(blocks)],
              "end_to_end": {"status": e2e, "reason": "why"}}
    if coverage:
        report["encodings_coverage"] = {"status": coverage, "missing_count": 1}
    if failure:
        report["failure"] = {"stage": "save", "message": "disk full"}
    status, text = verdict(report)
    ran = any(s == "pass" for s in blocks) or e2e == "pass"
    failed = "fail" in blocks or e2e == "fail" or coverage == "fail" or failure
    assert status == ("pass" if ran and not failed else "fail")
    assert text.startswith(status.upper())
    if status == "pass" and no_truth and "pass" in blocks:
        assert "float64 truth unavailable: op X" in text
    if status == "pass" and not blocks:
        assert "end-to-end only" in text


def _other_model_encodings(tmp_path) -> Path:
    other = build(dataclasses.replace(CFG, hidden=32, layers=1), seed=9)
    onnx.save(other.model, tmp_path / "other.onnx")
    enc = make_encodings(other, version="1.0.0", seed=0)
    path = tmp_path / "other.encodings"
    enc.write(path)
    doc = json.loads(path.read_text())
    for section in ("activation_encodings", "param_encodings"):
        entries = doc.get(section)
        if isinstance(entries, list):
            for e in entries:
                e["name"] = "other_model/" + e["name"]
    path.write_text(json.dumps(doc))
    return path


def test_foreign_encodings_are_refused(converted, tmp_path, capsys):
    original, _, result = converted
    foreign = _other_model_encodings(tmp_path)
    before = original.read_bytes()
    code = main(["convert", str(original), "-e", str(foreign), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert original.read_bytes() == before
    line = err[-1]
    assert "do not belong to this model" in line and " of " in line and line.count("'other_model/") == 3, line
    code = main(["verify", str(original), str(result.model_path), "-e", str(foreign), "-o", str(tmp_path / "v")])
    assert code == EXIT_BAD_INPUT


def test_a_few_unmatched_names_are_warned_and_counted(converted, tmp_path, capsys):
    original, enc, _ = converted
    doc = json.loads(enc.read_text())
    extra = dict(doc["activation_encodings"][0])
    extra["name"] = "not_in_this_model"
    doc["activation_encodings"].append(extra)
    path = tmp_path / "plus_one.encodings"
    path.write_text(json.dumps(doc))
    assert main(["convert", str(original), "-e", str(path), "-o", str(tmp_path / "out")]) == EXIT_OK
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    coverage = report["encodings_coverage"]
    total = len(doc["activation_encodings"]) + len(doc["param_encodings"])
    assert coverage["file_names"] == total and coverage["matched"] == total - 1 and coverage["unmatched"] == ["not_in_this_model"]
    assert any("not_in_this_model" in w for w in report["encodings_warnings"])
    md = (tmp_path / "out" / REPORT_MD).read_text()
    assert f"{total - 1} of {total} names in the encodings file" in md and "`not_in_this_model`" in md
