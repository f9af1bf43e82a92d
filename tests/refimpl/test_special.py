"""refimpl.special.erf against scipy.special.erf (an independent implementation)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy import special

from refimpl.special import erf


def test_erf_float64_within_a_few_ulp_everywhere():
    x = np.concatenate([np.linspace(-7, 7, 200_001), [2.5, np.nextafter(2.5, 3), np.nextafter(2.5, 0), 27.0, 40.0]])
    np.testing.assert_allclose(erf(x), special.erf(x), rtol=0, atol=4e-16)


def test_erf_keeps_relative_accuracy_near_zero_and_is_odd():
    tiny = np.logspace(-300, 0, 601)
    np.testing.assert_allclose(erf(tiny), special.erf(tiny), rtol=4e-16)
    np.testing.assert_array_equal(erf(-tiny), -erf(tiny))
    assert erf(np.array(0.0)) == 0.0 and np.signbit(erf(np.array(-0.0)))


def test_erf_special_values_and_dtypes():
    out = erf(np.array([np.nan, np.inf, -np.inf], np.float32))
    assert out.dtype == np.float32 and np.isnan(out[0]) and out[1:].tolist() == [1.0, -1.0]
    assert erf(np.array([1, 2])).dtype == np.float64  # integers evaluate in float64


@given(st.floats(-10, 10, allow_nan=False, width=32))
def test_erf_float32_is_the_float64_value_rounded_once(x):
    got = erf(np.array([x], np.float32))[0]
    assert got == np.float32(math.erf(float(np.float32(x))))


def test_erf_of_a_zero_dimensional_array_in_the_tail():
    """Found by the release profile: a 0-d input beyond 2.5 returned erf(2.5)."""
    for value in (2.6, 5.602605, -7.0):
        for dtype in (np.float32, np.float64):
            got = erf(np.array(value, dtype=dtype))
            assert got.shape == () and got.dtype == dtype
            np.testing.assert_allclose(float(got), special.erf(value), rtol=0, atol=4e-7 if dtype == np.float32 else 4e-16)
