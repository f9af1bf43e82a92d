"""The public surface of fuzz (docs/architecture.md, fuzz section) is what the package exports."""

from __future__ import annotations

import fuzz
import fuzz.examples
import fuzz.strategies


def test_fuzz_exports_exactly_the_documented_names():
    assert sorted(fuzz.__all__) == sorted([
        "AttentionConfig", "ConfigError", "BuiltModel", "build", "make_feeds",
        "make_encodings", "write_encodings", "AimetEncodings", "EncodingScheme",
    ])
    for name in fuzz.__all__:
        assert hasattr(fuzz, name), name


def test_strategies_and_examples_expose_the_documented_names():
    assert sorted(fuzz.strategies.__all__) == sorted([
        "attention_configs", "decoder_configs", "encoder_configs", "diffusion_configs", "opset23_configs",
        "encoding_schemes", "encoding_versions",
    ])
    assert callable(fuzz.examples.write_example) and isinstance(fuzz.examples.EXAMPLES, dict)
