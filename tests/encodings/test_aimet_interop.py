"""Interop with aimet-onnx (marker `aimet`; skipped, with the reason, where aimet-onnx is not
installed: it pulls a CUDA torch, so CI does not install it).

aimet-onnx's QuantizationSimModel calibrates a small attention model and exports its encodings
in each version it writes; the converter carries them onto the SHA model; aimet-onnx loads the
SHA encodings into a QuantizationSimModel of the SHA model. The two simulations must compute
the same outputs, and every quantizer aimet enables in the MHA model must be enabled on the
SHA tensors that stand for it."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert

aimet_quantsim = pytest.importorskip("aimet_onnx.quantsim", reason="aimet-onnx is not installed (optional interop suite)")

pytestmark = pytest.mark.aimet

CONFIGS = {
    "llama_gqa_rope": AttentionConfig(heads=4, kv_heads=2, rope="rotate_half", mask="causal", mlp=False, dynamic=False),
    "gpt2_gemm_bias": AttentionConfig(heads=4, kv_heads=4, projection="gemm_transb", fused_qkv="split", mask="causal",
                                      norm="layer", mlp=False, dynamic=False),
}


def _sim(model: onnx.ModelProto, encodings=None):
    sim = aimet_quantsim.QuantizationSimModel(model, param_type="int8", activation_type="int8")
    if encodings is not None:
        # aimet-onnx does not reload its own exports strictly (symmetry flags): compare outputs.
        aimet_quantsim.load_encodings_to_sim(sim, str(encodings), strict=False)
    return sim


def _enabled(sim) -> set[str]:
    return {name for name, q in sim.qc_quantize_op_dict.items() if q.enabled}


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0", "2.0.0"])  # the versions aimet-onnx exports
@pytest.mark.parametrize("case", list(CONFIGS))
def test_aimet_exports_carry_over_and_load_back(tmp_path, case, version):
    logging.getLogger("Quant").setLevel(logging.ERROR)
    built = build(CONFIGS[case], seed=0)
    feeds = built.make_feeds(1)
    calibrated = _sim(built.model)
    calibrated.compute_encodings([feeds])
    calibrated.export(str(tmp_path), "m", encoding_version=version)
    result = convert(tmp_path / "m.onnx", tmp_path / "out", ConvertOptions(encodings=tmp_path / "m.encodings"))
    assert result.ok, json.dumps(result.report.get("blocks"), default=str)[:2000]

    mha = _sim(onnx.load(tmp_path / "m.onnx"), tmp_path / "m.encodings")
    sha = _sim(onnx.load(result.model_path), result.encodings_path)
    names = [o.name for o in mha.session.get_outputs()]
    want = mha.session.run(names, feeds)
    got = sha.session.run(names, feeds)
    for name, w, g in zip(names, want, got):
        np.testing.assert_array_equal(g, w, err_msg=name)

    mapping = json.loads(result.mapping_path.read_text())
    stands_for = {**mapping["activation_encodings"], **mapping["param_encodings"]}
    sha_enabled = _enabled(sha)
    for name in _enabled(mha):
        pieces = [p for p in stands_for.get(name, [name]) if p in sha.qc_quantize_op_dict]
        assert not pieces or all(p in sha_enabled for p in pieces), (name, pieces)
