"""Margins and their scalings against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legend_core.method.label_agreement import agreement_share
from legend_core.method.margins import SCALES, margins, quantile_bins, scale


def test_margin_is_the_projection_of_the_difference():
    chosen = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    rejected = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0]])
    v = np.array([3.0, 4.0, 0.0])  # |v| = 5
    # (1*3 + 2*4) / 5 = 2.2 ; (-3*3) / 5 = -1.8
    np.testing.assert_allclose(margins(chosen, rejected, v), [2.2, -1.8])
    assert agreement_share(margins(chosen, rejected, v)) == 0.5


def test_margins_reject_mismatched_shapes_and_zero_direction():
    with pytest.raises(ValueError, match="shapes"):
        margins(np.zeros((2, 3)), np.zeros((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="zero"):
        margins(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3))


def test_scales_by_hand():
    x = np.array([-2.0, 0.0, 2.0, 4.0])
    np.testing.assert_array_equal(scale(x, "none").values, x)
    rms = scale(x, "rms")  # sqrt((4 + 0 + 4 + 16) / 4) = sqrt(6)
    np.testing.assert_allclose(rms.values, x / np.sqrt(6))
    assert rms.parameters == {
        "rms": pytest.approx(np.sqrt(6)),
        "divisor": pytest.approx(np.sqrt(6)),
    }
    std = scale(x, "std")  # mean 1, sd sqrt((9 + 1 + 1 + 9) / 4) = sqrt(5); not centred
    np.testing.assert_allclose(std.values, x / np.sqrt(5))
    assert std.parameters["mean"] == 1.0 and std.parameters["std"] == pytest.approx(np.sqrt(5))
    np.testing.assert_array_equal(scale(x, "minmax").values, [-0.5, 0.0, 0.5, 1.0])
    # |x| = 2, 0, 2, 4 with median 2: the upper bin holds 2 and 4; signs come back.
    binned = scale(x, "bins", bins=2)
    np.testing.assert_array_equal(binned.values, [-1.0, 0.0, 1.0, 1.0])
    assert binned.parameters == {"bins": 2, "edges": [2.0]}


@pytest.mark.parametrize("how", SCALES)
def test_every_scale_keeps_sign_and_zero_and_is_deterministic(how):
    x = np.random.default_rng(1).normal(1.5, 4.0, size=501)
    x[::50] = 0.0
    out = scale(x, how)
    assert out.scale == how and out.values.dtype == np.float64 and out.values.shape == x.shape
    if how == "bins":
        # The smallest fifth of |m| is level 0 (too small to call); the others keep the sign.
        nonzero = out.values != 0
        assert abs(nonzero.sum() - 0.8 * len(x)) <= 1
        np.testing.assert_array_equal(np.sign(out.values[nonzero]), np.sign(x[nonzero]))
        assert np.abs(x[~nonzero]).max() <= np.abs(x[nonzero]).min()
    else:
        np.testing.assert_array_equal(np.sign(out.values), np.sign(x))
    np.testing.assert_array_equal(out.values, scale(x.copy(), how).values)
    json.dumps(out.parameters)  # manifests need plain numbers


@pytest.mark.parametrize("how", ["rms", "std", "minmax", "bins"])
def test_scales_do_not_depend_on_the_margins_units(how):
    x = np.random.default_rng(2).normal(0.5, 3.0, size=200)
    # x4 is exact in floating point, so the results are equal bit for bit.
    np.testing.assert_array_equal(scale(4 * x, how).values, scale(x, how).values)


def test_scale_statistics():
    x = np.random.default_rng(3).normal(2.0, 5.0, size=1000)
    assert np.sqrt(np.mean(scale(x, "rms").values ** 2)) == pytest.approx(1.0)
    std = scale(x, "std").values
    assert std.std() == pytest.approx(1.0) and std.mean() == pytest.approx(x.mean() / x.std())
    minmax = scale(x, "minmax").values
    assert np.abs(minmax).max() == 1.0 and np.abs(minmax).min() >= 0.0
    binned = scale(x, "bins", bins=4)
    levels = np.abs(binned.values)
    assert set(levels) == {0.0, 1.0, 2.0, 3.0}
    np.testing.assert_array_equal(np.bincount(levels.astype(int)), [250, 250, 250, 250])
    # Levels grow with |m|: sorting by |m| sorts the levels.
    assert np.all(np.diff(levels[np.argsort(np.abs(x))]) >= 0)
    assert len(binned.parameters["edges"]) == 3


def test_degenerate_margins():
    for how in SCALES:
        np.testing.assert_array_equal(scale(np.zeros(3), how).values, np.zeros(3))
        assert scale(np.array([]), how).values.shape == (0,)
    # All equal: no spread to divide by, so std falls back to the RMS (each margin ±1).
    assert scale(np.array([3.0, 3.0]), "std").values.tolist() == [1.0, 1.0]
    assert scale(np.array([-3.0]), "std").parameters["divisor"] == 3.0


def test_bad_scales():
    x = np.array([1.0, -1.0])
    with pytest.raises(ValueError, match="unknown margin scale"):
        scale(x, "zscore")
    for bad in (1, True, 2.5):
        with pytest.raises(ValueError, match="bins"):
            scale(x, "bins", bins=bad)
    with pytest.raises(ValueError, match="NaN"):
        scale(np.array([1.0, np.nan]), "rms")
    with pytest.raises(ValueError, match="NaN"):
        scale(np.array([np.inf]), "none")
    index, edges = quantile_bins(np.arange(10.0), 5)
    np.testing.assert_array_equal(index, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_allclose(edges, [1.8, 3.6, 5.4, 7.2])
