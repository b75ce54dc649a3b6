"""Accuracy and calibration of Gaussian state estimates against the truth (numpy only).

Inputs are ``mean``, ``var`` and ``truth`` of shape ``[N, S]`` (N ticks, S elements), and
every function returns one figure per element ``[S]`` unless it says otherwise.

* ``nrmse``: RMSE over the ticks divided by the truth's std over the same ticks: 1.0 is
  what the constant best guess (the truth's mean) scores, i.e. "knows nothing".
* ``gaussian_nll``: mean negative log-density of the truth under N(mean, var), in nats.
* ``coverage``: fraction of ticks whose truth lies in the central ``level`` interval
  ``mean ± z sqrt(var)``; a calibrated estimate covers ``level``.
* ``nees``: normalised estimation error squared per tick ``sum_s err^2 / var`` [N] (the
  variance is diagonal); for a calibrated estimate its mean is S. ``nees_band`` is the
  95% band of the mean of N *independent* chi-square(S) draws, a reference only: the
  ticks of one episode are correlated, which widens the real band.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def _check(mean: np.ndarray, var: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(x, np.float64) for x in (mean, var, truth))
    if arrays[0].ndim != 2 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"mean, var and truth must share one [N, S] shape, got "
                         f"{[a.shape for a in arrays]}")
    if (arrays[1] <= 0).any():
        raise ValueError("variances must be positive")
    return arrays


def z_value(level: float) -> float:
    """Half-width in standard deviations of the central ``level`` interval of a Gaussian."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def rmse(mean: np.ndarray, truth: np.ndarray) -> np.ndarray:
    err = np.asarray(mean, np.float64) - np.asarray(truth, np.float64)
    return np.sqrt(np.mean(np.square(err), axis=0))


def nrmse(mean: np.ndarray, truth: np.ndarray, truth_std: np.ndarray | None = None
          ) -> np.ndarray:
    """RMSE / std of the truth (over these ticks unless ``truth_std`` is given)."""
    std = np.std(np.asarray(truth, np.float64), axis=0) if truth_std is None else truth_std
    return rmse(mean, truth) / np.maximum(std, 1e-12)


def gaussian_nll(mean: np.ndarray, var: np.ndarray, truth: np.ndarray) -> np.ndarray:
    mean, var, truth = _check(mean, var, truth)
    return np.mean(0.5 * (np.log(2 * np.pi * var) + np.square(truth - mean) / var), axis=0)


def coverage(mean: np.ndarray, var: np.ndarray, truth: np.ndarray, level: float
             ) -> np.ndarray:
    mean, var, truth = _check(mean, var, truth)
    return np.mean(np.abs(truth - mean) <= z_value(level) * np.sqrt(var), axis=0)


def nees(mean: np.ndarray, var: np.ndarray, truth: np.ndarray) -> np.ndarray:
    mean, var, truth = _check(mean, var, truth)
    return np.sum(np.square(truth - mean) / var, axis=1)


def chi2_quantile(p: float, dof: float) -> float:
    """Wilson–Hilferty approximation of the chi-square quantile (good to ~1e-3 relative for
    dof >= 3; the band below has dof = N * S, in the thousands)."""
    z = NormalDist().inv_cdf(p)
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * np.sqrt(c)) ** 3


def nees_band(ticks: int, size: int, level: float = 0.95) -> tuple[float, float]:
    """Band of mean NEES over ``ticks`` independent ticks of an ``size``-element state."""
    dof = ticks * size
    lo = chi2_quantile((1 - level) / 2, dof) / ticks
    hi = chi2_quantile((1 + level) / 2, dof) / ticks
    return float(lo), float(hi)


def angle_from_cos_sin(cos_mean: np.ndarray, sin_mean: np.ndarray, cos_var: np.ndarray,
                       sin_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An angle and its variance from Gaussian estimates of its cosine and sine, linearised
    at the means: ``theta = atan2(s, c)``, ``var = (c^2 var_s + s^2 var_c) / (c^2 + s^2)^2``
    (the cos/sin estimates taken as independent). For plots and readable summaries; the
    calibration figures are computed on the estimated elements themselves."""
    c, s = np.asarray(cos_mean, np.float64), np.asarray(sin_mean, np.float64)
    r2 = np.maximum(c * c + s * s, 1e-12)
    var = (c * c * np.asarray(sin_var) + s * s * np.asarray(cos_var)) / (r2 * r2)
    return np.arctan2(s, c), var


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Angles (or angle differences) wrapped to (-pi, pi]."""
    return np.angle(np.exp(1j * np.asarray(x, np.float64)))
