"""The public surfaces of mha2sha, verify and refimpl (docs/architecture.md) are exactly what the
packages export, each name resolves, and the packages say they are typed (PEP 561).
fuzz's surface is pinned in tests/fuzz/test_public_api.py."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


def test_mha2sha_exports_exactly_the_documented_entry_points():
    import mha2sha

    assert sorted(mha2sha.__all__) == sorted([
        "__version__", "convert", "inspect", "ConvertOptions", "ConversionResult", "MHA2SHAConverter",
    ])
    from mha2sha import api, compat

    assert mha2sha.convert is api.convert and mha2sha.inspect is api.inspect
    assert mha2sha.ConvertOptions is api.ConvertOptions and mha2sha.ConversionResult is api.ConversionResult
    assert mha2sha.MHA2SHAConverter is compat.MHA2SHAConverter
    assert set(mha2sha.__all__) <= set(dir(mha2sha))
    with pytest.raises(AttributeError):
        mha2sha.not_a_name  # noqa: B018


def test_refimpl_exports_exactly_the_documented_names():
    import refimpl

    assert sorted(refimpl.__all__) == sorted([
        "run", "Session", "RefimplError", "UnsupportedOpError", "FeedError",
        "QuantEncoding", "compute_encoding", "quantize_dequantize", "lpbq_block_scales",
        "softmax", "log_softmax", "scaled_dot_product_attention", "causal_mask", "rotary_embedding",
        "alibi_slopes", "alibi_bias", "lora_delta", "linear", "conv2d", "rms_norm", "layer_norm",
        "gelu", "erf",
    ])
    for name in refimpl.__all__:
        assert getattr(refimpl, name) is not None, name


def test_verify_exports_exactly_the_documented_entry_points():
    import verify
    from verify import correspondence, derive, report, run

    assert sorted(verify.__all__) == sorted([
        "verify_models", "derive_correspondence", "Correspondence", "BlockCorrespondence", "CacheSplit",
        "CorrespondenceError", "read_correspondence", "write_report", "verdict", "verdict_table",
    ])
    assert verify.verify_models is run.verify_models and verify.derive_correspondence is derive.derive_correspondence
    assert verify.read_correspondence is correspondence.read and verify.Correspondence is correspondence.Correspondence
    assert verify.write_report is report.write_report and verify.verdict_table is report.verdict_table
    assert set(verify.__all__) <= set(dir(verify))
    with pytest.raises(AttributeError):
        verify.not_a_name  # noqa: B018


@pytest.mark.parametrize("package", ["mha2sha", "refimpl", "verify"])
def test_packages_are_marked_typed(package):
    module = importlib.import_module(package)
    assert (Path(module.__file__).parent / "py.typed").is_file()
