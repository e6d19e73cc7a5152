"""Margins and their scalings against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from legend_core.margins import agreement, margins, quantile_bins, scale


def test_margin_is_the_projection_of_the_difference():
    chosen = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    rejected = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0]])
    v = np.array([3.0, 4.0, 0.0])  # |v| = 5
    # (1*3 + 2*4) / 5 = 2.2 ; (-3*3) / 5 = -1.8
    np.testing.assert_allclose(margins(chosen, rejected, v), [2.2, -1.8])
    assert agreement(margins(chosen, rejected, v)) == 0.5


def test_margins_reject_mismatched_shapes_and_zero_direction():
    with pytest.raises(ValueError, match="shapes"):
        margins(np.zeros((2, 3)), np.zeros((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="zero"):
        margins(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3))


def test_scalings():
    x = np.array([-2.0, 0.0, 2.0, 4.0])
    z = scale(x, "zscore")
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_allclose(scale(x, "minmax", (0, 1)), [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(scale(x, "minmax", (-1, 1)), [-1, -1 / 3, 1 / 3, 1])
    np.testing.assert_array_equal(scale(x, "none"), x)
    np.testing.assert_array_equal(quantile_bins(np.arange(10.0), 5), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    assert set(scale(np.random.default_rng(0).normal(size=1000), "quantile", bins=4)) == {
        0.0,
        1.0,
        2.0,
        3.0,
    }
    with pytest.raises(ValueError):
        scale(x, "log")
