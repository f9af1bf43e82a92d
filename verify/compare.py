"""Compare outputs with a tolerance that comes from measured float error.

The rule (documented in the report): the float64 evaluation of the *original* model by the
pure-numpy reference is the truth. The float32 error of the original model against that
truth, ``e_mha``, measures how much float32 rounding this computation has. A converted
model passes when its own float32 error against the truth is within

    tol = 4 * e_mha + 16 * eps32 * scale        (scale = max |truth|, eps32 = 2**-23)

i.e. the conversion may change rounding (summation order differs per head) but may not
add error beyond a small multiple of what float32 already costs. In float64 the two
models must agree to ``8 * eps(model dtype) * scale`` (the rewrite folds run-time shape
arithmetic such as sqrt(head dim) into constants of the model's dtype; everything else is
exact). NaN or inf where the truth is finite always fails.
A result is truthy when it passes and reports the tolerance it used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def float64_rtol(model_dtype=np.float32) -> float:
    return 8.0 * float(np.finfo(model_dtype).eps)


@dataclass
class Comparison:
    check: str
    output: str
    max_abs: float
    mean_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    note: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def as_dict(self) -> dict:
        return asdict(self)


def float32_tolerance(mha_error: float, scale: float) -> float:
    return 4.0 * mha_error + 16.0 * EPS32 * max(scale, 1e-30)


def compare(check: str, output: str, actual: np.ndarray, expected: np.ndarray, tolerance: float, note: str = "") -> Comparison:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(check, output, float("inf"), float("inf"), float("inf"), tolerance, False, f"shape {actual.shape} != expected {expected.shape}")
    finite_truth = np.isfinite(expected)
    bad = ~np.isfinite(actual) & finite_truth
    if bad.any():
        return Comparison(check, output, float("inf"), float("inf"), float("inf"), tolerance, False, f"{int(bad.sum())} NaN/inf values where the truth is finite")
    mismatch = np.isfinite(actual) != finite_truth
    if mismatch.any():
        return Comparison(check, output, float("inf"), float("inf"), float("inf"), tolerance, False, "finite values where the truth is NaN/inf")
    if not finite_truth.any():
        return Comparison(check, output, 0.0, 0.0, 0.0, tolerance, True, note or "no finite values")
    diff = np.abs(actual[finite_truth] - expected[finite_truth])
    scale = float(np.abs(expected[finite_truth]).max())
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Comparison(check, output, max_abs, mean_abs, max_rel, tolerance, max_abs <= tolerance, note)


def scale_of(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    finite = x[np.isfinite(x)]
    return float(np.abs(finite).max()) if finite.size else 0.0
