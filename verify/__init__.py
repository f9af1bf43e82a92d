"""Equivalence verification of MHA and SHA models, and the verification report."""
