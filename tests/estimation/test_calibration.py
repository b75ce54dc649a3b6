"""Accuracy and calibration metrics against hand-computed cases. Tolerance: 1e-9."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.runtime import calibration as cal

TOL = 1e-9


def test_rmse_and_nrmse_by_hand():
    truth = np.array([[0.0], [2.0], [4.0]])
    mean = np.array([[1.0], [2.0], [1.0]])
    # errors 1, 0, 3 -> RMSE sqrt(10/3); truth std (population) sqrt(8/3)
    assert cal.rmse(mean, truth)[0] == pytest.approx(math.sqrt(10 / 3), abs=TOL)
    assert cal.nrmse(mean, truth)[0] == pytest.approx(math.sqrt(10 / 8), abs=TOL)
    # predicting the truth's mean scores exactly 1
    assert cal.nrmse(np.full_like(truth, 2.0), truth)[0] == pytest.approx(1.0, abs=TOL)


def test_gaussian_nll_by_hand():
    nll = cal.gaussian_nll(np.array([[0.0]]), np.array([[4.0]]), np.array([[2.0]]))
    assert nll[0] == pytest.approx(0.5 * math.log(2 * math.pi * 4) + 0.5 * 4 / 4, abs=TOL)


def test_coverage_by_hand():
    # std 1: the 90% half-width is 1.6449; errors 0.5, 1.6, 1.7, 3 -> 2 of 4 inside
    truth = np.array([[0.5], [1.6], [-1.7], [3.0]])
    mean = np.zeros((4, 1))
    var = np.ones((4, 1))
    assert cal.coverage(mean, var, truth, 0.9)[0] == pytest.approx(0.5, abs=TOL)
    assert cal.z_value(0.9) == pytest.approx(1.6448536269514722, abs=1e-9)


def test_nees_by_hand():
    truth = np.array([[1.0, 2.0], [0.0, 0.0]])
    mean = np.zeros((2, 2))
    var = np.array([[1.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(cal.nees(mean, var, truth), [1 + 1, 0], atol=TOL)


def test_nees_band_matches_the_chi_square_quantiles():
    scipy_stats = pytest.importorskip("scipy.stats")
    ticks, size = 500, 5
    lo, hi = cal.nees_band(ticks, size)
    dof = ticks * size
    assert lo == pytest.approx(scipy_stats.chi2.ppf(0.025, dof) / ticks, rel=1e-4)
    assert hi == pytest.approx(scipy_stats.chi2.ppf(0.975, dof) / ticks, rel=1e-4)


def test_calibrated_gaussian_samples_cover_their_level():
    rng = np.random.default_rng(0)
    var = rng.uniform(0.5, 2.0, size=(20000, 3))
    truth = rng.normal(size=(20000, 3)) * np.sqrt(var)
    mean = np.zeros_like(truth)
    np.testing.assert_allclose(cal.coverage(mean, var, truth, 0.9), 0.9, atol=0.01)
    assert cal.nees(mean, var, truth).mean() == pytest.approx(3.0, rel=0.03)


def test_angle_from_cos_sin():
    angle, var = cal.angle_from_cos_sin(np.array([0.0]), np.array([1.0]), np.array([0.01]),
                                        np.array([0.04]))
    assert angle[0] == pytest.approx(math.pi / 2, abs=TOL)
    assert var[0] == pytest.approx(0.01, abs=TOL)  # at 90 degrees only cos moves the angle


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="share one"):
        cal.coverage(np.zeros((2, 1)), np.ones((2, 2)), np.zeros((2, 1)), 0.9)
    with pytest.raises(ValueError, match="positive"):
        cal.nees(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="level"):
        cal.z_value(1.0)
