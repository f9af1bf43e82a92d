"""Attention model builders with known parameters, random AIMET encodings, hypothesis strategies
and the bundled example models."""
