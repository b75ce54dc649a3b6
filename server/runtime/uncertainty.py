"""A belief's physical state estimate: moments of a Gaussian head under a Gaussian belief.

The latent belief is ``z ~ N(m, diag(v))``; a head maps ``z`` to ``(mu(z), s2(z))``, a
Gaussian over the physical quantity. The estimate is the moment-matched Gaussian of that
mixture (the law of total variance)::

    E[x]   = E_z[mu(z)]
    Var[x] = Var_z[mu(z)] + E_z[s2(z)]

computed with second-order divided differences (Stirling interpolation; Nørgaard, Poulsen
and Ravn 2000, "DD2"), one pair of points per latent dimension with variance, at
``m ± h sqrt(v_i) e_i`` with ``h = sqrt(3)`` (the Gaussian's kurtosis)::

    d1_i = (f(m + h s_i e_i) - f(m - h s_i e_i)) / (2h)
    d2_i = (f(m + h s_i e_i) + f(m - h s_i e_i) - 2 f(m)) / (2 h^2)
    E[f]   ≈ f(m) + sum_i d2_i
    Var[f] ≈ sum_i d1_i^2 + (h^2 - 1) sum_i d2_i^2

Both are exact for a linear head (``d2 = 0``, ``d1_i = J_i s_i``), the mean also for a
quadratic one along each axis, and the variance is a sum of squares, so never negative.
Unlike the unscented transform's ``sqrt(n + kappa)`` spread, the points stay ``sqrt(3)``
standard deviations from the mean whatever the latent size (230 dimensions would put UT
points 15 sigma out, where a network head was never trained). Cost: ``2n + 1`` head rows
per belief for ``n`` dimensions with variance (dimensions with zero variance, such as the
RSSM's deterministic path, are skipped). Array code only (numpy), no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

H = float(np.sqrt(3.0))

HeadFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # z [N, F] -> mu, s2 [N, S]


class StateEstimate(NamedTuple):
    """Physical mean and variance ``[N, S]`` (variance: belief spread + head variance)."""

    mean: np.ndarray
    var: np.ndarray


def active_dims(var: np.ndarray) -> np.ndarray:
    """Indices of the feature dimensions with variance in any row of ``var [N, F]``."""
    return np.flatnonzero((np.asarray(var) > 0).any(axis=0))


def sigma_points(mean: np.ndarray, var: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """``[N, 2n+1, F]``: the mean, then ``m + h s_i e_i`` for i in dims, then ``m - h ...``."""
    mean = np.asarray(mean, np.float32)
    n = len(dims)
    points = np.repeat(mean[:, None, :], 2 * n + 1, axis=1)
    step = H * np.sqrt(np.maximum(np.asarray(var, np.float32)[:, dims], 0.0))  # [N, n]
    rows = np.arange(n)
    points[:, 1 + rows, dims] += step
    points[:, 1 + n + rows, dims] -= step
    return points


def combine(mu: np.ndarray, s2: np.ndarray) -> StateEstimate:
    """Moments from the head's outputs at the sigma points, ``[N, 2n+1, S]`` each."""
    mu = np.asarray(mu, np.float64)
    s2 = np.asarray(s2, np.float64)
    n = (mu.shape[1] - 1) // 2
    f0, plus, minus = mu[:, 0], mu[:, 1:n + 1], mu[:, n + 1:]
    d1 = (plus - minus) / (2 * H)
    d2 = (plus + minus - 2 * f0[:, None]) / (2 * H * H)
    mean = f0 + d2.sum(1)
    spread = np.square(d1).sum(1) + (H * H - 1) * np.square(d2).sum(1)
    v0 = s2[:, 0]
    head_var = v0 + ((s2[:, 1:n + 1] + s2[:, n + 1:] - 2 * v0[:, None]) / (2 * H * H)).sum(1)
    head_var = np.maximum(head_var, s2.min(axis=1))  # the expansion may undershoot
    return StateEstimate(mean.astype(np.float32), (spread + head_var).astype(np.float32))


def estimate(head: HeadFn, mean: np.ndarray, var: np.ndarray,
             dims: np.ndarray | None = None) -> StateEstimate:
    """The state estimate of beliefs ``N(mean, var)`` ``[N, F]`` through ``head``."""
    mean = np.asarray(mean, np.float32)
    var = np.asarray(var, np.float32)
    if mean.ndim != 2 or mean.shape != var.shape:
        raise ValueError(f"mean and var must both be [N, F], got {mean.shape} and {var.shape}")
    dims = active_dims(var) if dims is None else np.asarray(dims)
    points = sigma_points(mean, var, dims)
    rows, count, width = points.shape
    mu, s2 = head(points.reshape(rows * count, width))
    size = mu.shape[-1]
    return combine(mu.reshape(rows, count, size), s2.reshape(rows, count, size))
