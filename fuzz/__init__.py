"""Attention model builders with known parameters, random AIMET encodings, hypothesis strategies
and the bundled example models."""

from fuzz.builder import BuiltModel, build, make_feeds
from fuzz.config import AttentionConfig, ConfigError
from fuzz.encodings import AimetEncodings, EncodingScheme, make_encodings, write_encodings

__all__ = [
    "AttentionConfig",
    "ConfigError",
    "BuiltModel",
    "build",
    "make_feeds",
    "make_encodings",
    "write_encodings",
    "AimetEncodings",
    "EncodingScheme",
]
