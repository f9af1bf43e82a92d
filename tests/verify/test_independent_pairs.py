"""`mha2sha verify` on pairs mha2sha did not make: an SHA model written by hand (handmade.py),
its correspondence derived from the two graphs' structure. Each block must be verified per
block (not end to end only), every defect class must be caught in the block it is in, and
the hand-written SHA model itself is checked against the numpy closed form first (so the
pair is right independently of the verifier)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from refimpl.quant import QuantEncoding
from tests.verify import handmade as hm
from verify.derive import derive_correspondence
from verify.graphs import infer_shapes, load
from verify.report import verdict
from verify.run import verify_models


def _write(tmp_path, p: hm.Pair, seed: int = 0):
    w = hm.params(p, seed)
    mha, sha = tmp_path / "mha.onnx", tmp_path / "sha.onnx"
    onnx.save(hm.build_mha(p, w), mha)
    onnx.save(hm.build_sha(p, w), sha)
    return mha, sha, w


def _derive(mha, sha):
    a, b = load(mha), load(sha)
    infer_shapes(a)
    infer_shapes(b)
    return derive_correspondence(a, b)


def _verify(mha, sha, **kw):
    corr, unmatched = _derive(mha, sha)
    report = verify_models(mha, sha, corr, **kw)
    report["unmatched"] = unmatched
    return corr, report


def _ort(model_path, feeds):
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


LAYOUTS = [
    hm.Pair(),
    hm.Pair(batch=2, layers=2, past=3, cache_layout="pieces"),
    hm.Pair(batch=1, layers=2, past=3, cache_layout="head_major"),  # the reference tool's [H, 1, P, D]
    hm.Pair(batch=2, layers=1, past=3, cache_layout="head_major", heads=4, kv_heads=2),  # [KV, B, P, D] == [B, KV, P, D] in shape
    hm.Pair(batch=1, layers=1, past=2, cache_layout="keepdims", heads=4, kv_heads=4, rope=False, bias=False),
]


@pytest.mark.parametrize("pair", LAYOUTS, ids=lambda p: f"{p.cache_layout}-b{p.batch}-l{p.layers}-p{p.past}-kv{p.kv_heads}")
def test_hand_written_sha_is_verified_per_block(tmp_path, pair):
    mha, sha, w = _write(tmp_path, pair)
    feeds = hm.feeds(pair)
    truth = hm.closed_form(pair, w, feeds)
    got = _ort(sha, hm.sha_feeds(pair, feeds))
    assert np.abs(got["y"] - truth["y"]).max() <= 1e-4 * np.abs(truth["y"]).max()  # the pair itself is right

    corr, report = _verify(mha, sha)
    assert not report["unmatched"]["blocks"], report["unmatched"]
    assert len(report["blocks"]) == pair.layers
    for block in report["blocks"]:
        assert block["status"] == "pass", block
        assert block["truth"] == "float64" and any(c["check"] == "sha_ort_vs_truth" for c in block["checks"])
    assert report["end_to_end"]["status"] == "pass"
    assert verdict(report) == ("pass", "PASS")
    if pair.past:
        splits = [s for b in corr.blocks for s in b.cache_splits]
        assert len(splits) == 4 * pair.layers  # past/present key/value per layer
        assert all(s.layout == ("head_major" if pair.cache_layout == "head_major" else "pieces") for s in splits)
        assert all(sorted(s.indices) == list(range(pair.kv_heads)) for s in splits)


DEFECT_PAIRS = [hm.Pair(), hm.Pair(batch=1, layers=1, past=3, cache_layout="pieces")]


@pytest.mark.parametrize("defect", hm.DEFECTS)
@pytest.mark.parametrize("base", DEFECT_PAIRS, ids=["prefill", "cache"])
def test_defect_in_hand_written_sha_is_caught_per_block(tmp_path, base, defect):
    import dataclasses

    pair = dataclasses.replace(base, defects=(defect,))
    mha, sha, _ = _write(tmp_path, pair)
    _, report = _verify(mha, sha, end_to_end=False)
    assert len(report["blocks"]) == 1, report["unmatched"]
    block = report["blocks"][0]
    assert block["status"] == "fail", f"{defect} not caught: {block['checks']}"
    failed = [c for c in block["checks"] if not c["passed"]]
    assert any(c["check"] == "sha_ort_vs_truth" and c["max_abs"] > 10 * c["tolerance"] for c in failed), failed
    status, text = verdict(report)
    assert status == "fail" and text.startswith("FAIL")


def _encodings(pair: hm.Pair, w: dict, sha: bool, defect: str | None = None) -> dict:
    """Per-channel weight encodings of the q projection, an 8-bit activation encoding of the
    attention scores input (q after projection): for the MHA model by its names, for the
    hand-written SHA model by its per-head names, sliced per head."""
    D = pair.head_dim
    wq = w["0.wq"]
    scale = np.abs(wq).max(axis=0) / 127.0
    enc = lambda s: QuantEncoding("int", 8, True, np.asarray(s, np.float64), np.full(np.shape(s), -127.0), axis=1)  # noqa: E731
    if not sha:
        return {"0.wq": enc(scale)}
    out = {}
    for h in range(pair.heads):
        src = 1 if (defect == "wrong-head per-channel encodings" and h == 0) else (0 if defect == "wrong-head per-channel encodings" and h == 1 else h)
        out[f"sha/l0.wq.h{h}"] = enc(scale[src * D:(src + 1) * D])
    return out


def _activation(model_path, op_type, position=0):
    """The first output of the ``position``-th node of ``op_type`` after the first MatMul
    reading a weight (the q projection): found by structure, not by name."""
    m = onnx.load(model_path)
    nodes = [n for n in m.graph.node if n.op_type == op_type]
    return nodes[position].output[0]


@pytest.mark.parametrize("defect", [None, "wrong-head per-channel encodings", "missing activation encoding"])
def test_encoding_defects_on_hand_written_sha(tmp_path, defect):
    pair = hm.Pair(rope=False)
    mha, sha, w = _write(tmp_path, pair)
    mha_enc = _encodings(pair, w, sha=False)
    sha_enc = _encodings(pair, w, sha=True, defect=defect)
    # An activation encoding on every Softmax output (one in the MHA model, one per head in
    # the SHA model); the missing-encoding defect leaves one head's out.
    act = QuantEncoding("int", 8, False, np.asarray(1.0 / 255), np.asarray(0.0))
    mha_enc[_activation(mha, "Softmax")] = act
    for h in range(pair.heads):
        if defect == "missing activation encoding" and h == 0:
            continue
        sha_enc[_activation(sha, "Softmax", h)] = act
    _, report = _verify(mha, sha, end_to_end=False, mha_encodings=mha_enc, sha_encodings=sha_enc)
    quant = [c for b in report["blocks"] for c in b["checks"] if c["check"] in ("quant_sim_sha_vs_mha", "head_encodings")]
    assert quant
    if defect is None:
        assert all(c["passed"] for c in quant), quant
    else:
        assert not all(c["passed"] for c in quant), f"{defect} not caught: {quant}"


def test_blocks_that_cannot_be_matched_are_reported_never_passed(tmp_path):
    """Heads summed through per-head o_proj rows, with per-head caches: the verifier cannot
    tell which head reads which cache piece. The block is reported with the reason; the
    whole model cannot be fed either, so nothing is verified: FAIL, never PASS."""
    pair = hm.Pair(batch=1, layers=1, past=3, merge="sum")
    mha, sha, _ = _write(tmp_path, pair)
    _, report = _verify(mha, sha)
    assert not report["blocks"]
    assert report["unmatched"]["blocks"] and "head order" in report["unmatched"]["blocks"][0]["reason"]
    assert report["end_to_end"]["status"] == "not run" and "cannot be fed" in report["end_to_end"]["reason"]
    status, text = verdict(report)
    assert status == "fail" and "nothing was verified" in text


def test_summed_heads_without_caches_are_verified_per_block(tmp_path):
    pair = hm.Pair(merge="sum")
    mha, sha, _ = _write(tmp_path, pair)
    _, report = _verify(mha, sha)
    assert [b["status"] for b in report["blocks"]] == ["pass"] and verdict(report) == ("pass", "PASS")


def test_same_model_twice_is_end_to_end_only(tmp_path):
    pair = hm.Pair()
    mha, _, _ = _write(tmp_path, pair)
    _, report = _verify(mha, mha)
    assert not report["blocks"] and "the same way" in report["unmatched"]["reason"]
    assert verdict(report)[1].startswith("PASS (end-to-end only: ")


def test_float64_truth_unavailable_is_said_and_defects_still_caught(tmp_path):
    """refimpl has no Atan: the truth checks are not run (with the reason), the SHA block is
    judged against onnxruntime on the MHA block, and the verdict says which checks ran."""
    import dataclasses

    pair = hm.Pair(score_op="Atan", pre_op="Atan")
    mha, sha, w = _write(tmp_path, pair)
    truth = hm.closed_form(pair, w, hm.feeds(pair))["y"]
    assert np.abs(_ort(sha, hm.feeds(pair))["y"] - truth).max() <= 1e-4 * np.abs(truth).max()
    _, report = _verify(mha, sha)
    block = report["blocks"][0]
    assert block["status"] == "pass" and block["truth"] == "onnxruntime" and "Atan" in block["truth_reason"]
    assert {n["check"] for n in block["not_run"]} >= {"sha_ort_vs_truth", "sha_float64_vs_truth"}
    status, text = verdict(report)
    assert status == "pass" and "onnxruntime only" in text and "float64 truth unavailable" in text and "Atan" in text
    assert report["end_to_end"]["truth"] == "onnxruntime" and "end-to-end against onnxruntime only" in text
    broken = dataclasses.replace(pair, defects=("head swap",))
    mha, sha, _ = _write(tmp_path, broken)
    _, report = _verify(mha, sha)
    assert report["blocks"][0]["status"] == "fail" and verdict(report)[0] == "fail"
