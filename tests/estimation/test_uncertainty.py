"""The divided-difference state estimate against exact moments and brute-force sampling.

Tolerance for this file: 1e-5 relative on exact cases (float32 head outputs). On the
nonlinear (tanh) head the divided differences are an approximation: the mean within 3
standard errors of a 200k-sample Monte Carlo reference, the variance within 10% (it ignores
cross terms between latent dimensions; measured 7% high here).
"""

from __future__ import annotations

import numpy as np
import pytest

from server.runtime.uncertainty import estimate, sigma_points

RTOL = 1e-5


def linear_head(weight, bias, noise):
    def head(z):
        mean = z @ weight + bias
        return mean.astype(np.float32), np.broadcast_to(noise, mean.shape).astype(np.float32)
    return head


@pytest.mark.parametrize("seed", range(4))
def test_linear_head_moments_are_exact(seed):
    rng = np.random.default_rng(seed)
    n, f, s = 5, 7, 3
    weight = rng.normal(size=(f, s))
    bias = rng.normal(size=s)
    noise = rng.uniform(0.1, 1.0, size=s)
    mean = rng.normal(size=(n, f)).astype(np.float32)
    var = rng.uniform(0.01, 2.0, size=(n, f)).astype(np.float32)
    est = estimate(linear_head(weight, bias, noise), mean, var)
    # Exact: E = W^T m + b, Var = sum_i W_ij^2 v_i + noise (diagonal belief).
    np.testing.assert_allclose(est.mean, mean @ weight + bias, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(est.var, var @ np.square(weight) + noise, rtol=RTOL)


def test_quadratic_head_mean_is_exact():
    # f(z) = sum_i c_i z_i^2: E = sum c_i (m_i^2 + v_i); Var = sum c_i^2 (4 m_i^2 v_i + 2 v_i^2)
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.5, size=4)
    mean = rng.normal(size=(3, 4)).astype(np.float32)
    var = rng.uniform(0.1, 0.5, size=(3, 4)).astype(np.float32)

    def head(z):
        out = (np.square(z.astype(np.float64)) @ c)[:, None]
        return out.astype(np.float32), np.full_like(out, 1e-6, dtype=np.float32)

    est = estimate(head, mean, var)
    m, v = mean.astype(np.float64), var.astype(np.float64)
    np.testing.assert_allclose(est.mean[:, 0], (c * (m * m + v)).sum(1), rtol=RTOL)
    exact_var = (c * c * (4 * m * m * v + 2 * v * v)).sum(1) + 1e-6
    np.testing.assert_allclose(est.var[:, 0], exact_var, rtol=1e-4)


def test_nonlinear_head_matches_monte_carlo():
    rng = np.random.default_rng(1)
    f = 6
    w1 = rng.normal(size=(f, 16)) * 0.5
    w2 = rng.normal(size=(16, 2)) * 0.5

    def head(z):
        hidden = np.tanh(z.astype(np.float64) @ w1)
        out = hidden @ w2
        return out.astype(np.float32), np.full(out.shape, 0.01, np.float32)

    mean = rng.normal(size=(1, f)).astype(np.float32) * 0.3
    var = np.full((1, f), 0.05, np.float32)
    est = estimate(head, mean, var)
    samples = mean + np.sqrt(var) * rng.standard_normal((200_000, f)).astype(np.float32)
    mc, _ = head(samples)
    mc_mean, mc_var = mc.mean(0), mc.var(0) + 0.01
    se = np.sqrt(mc_var / len(samples))
    assert np.all(np.abs(est.mean[0] - mc_mean) < 3 * se + 2e-3)
    np.testing.assert_allclose(est.var[0], mc_var, rtol=0.10)


def test_dimensions_without_variance_cost_no_points():
    mean = np.zeros((2, 5), np.float32)
    var = np.zeros((2, 5), np.float32)
    var[:, 1] = 0.3  # only dimension 1 is uncertain (as the RSSM's stochastic part)
    calls = []

    def head(z):
        calls.append(len(z))
        return z[:, :1].copy(), np.ones((len(z), 1), np.float32)

    est = estimate(head, mean, var)
    assert calls == [2 * 3]  # 2 beliefs x (1 + 2*1) points
    np.testing.assert_allclose(est.var, 1.0)  # head 0 depends on dim 0 only: no spread


def test_points_are_the_mean_and_plus_minus_sqrt3_sigma():
    mean = np.array([[1.0, 2.0]], np.float32)
    var = np.array([[4.0, 9.0]], np.float32)
    p = sigma_points(mean, var, np.array([0, 1]))
    h = np.sqrt(3.0)
    np.testing.assert_allclose(p[0], [[1, 2], [1 + 2 * h, 2], [1, 2 + 3 * h],
                                      [1 - 2 * h, 2], [1, 2 - 3 * h]], rtol=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="mean and var"):
        estimate(lambda z: (z, z), np.zeros((2, 3)), np.zeros((2, 4)))
