"""The references checked against each other and against hand-computed numbers.

Full (non-diagonal) A, Q, R, P0 here: the three inference routes of ``reference.py``
(recursive filter + RTS, joint precision, joint covariance conditioning) share no code,
so their agreement on general matrices is what makes them trustworthy as references for
the diagonal core.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from tests.kalman import reference as ref

# float64 throughout; these are O((TL)^3) dense solves on well-conditioned matrices of
# size <= 18, whose round-off is ~1e-13. 1e-9 leaves margin without hiding real errors.
ATOL = 1e-9


def _spd(rng: np.random.Generator, n: int, low: float = 0.1, high: float = 2.0) -> np.ndarray:
    """A random symmetric positive-definite matrix with eigenvalues in [low, high]."""
    basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return basis @ np.diag(rng.uniform(low, high, n)) @ basis.T


def random_full_model(rng: np.random.Generator, steps: int, latent: int, sensors: int,
                      missing: float = 0.3) -> ref.LGSSM:
    return ref.LGSSM(
        m0=rng.normal(size=latent),
        P0=_spd(rng, latent),
        A=rng.normal(0.0, 0.6, (steps - 1, latent, latent)),
        b=rng.normal(0.0, 0.5, (steps - 1, latent)),
        Q=np.stack([_spd(rng, latent, 0.05, 1.0) for _ in range(steps - 1)])
        if steps > 1 else np.zeros((0, latent, latent)),
        w=rng.normal(0.0, 2.0, (sensors, steps, latent)),
        R=np.stack([np.stack([_spd(rng, latent) for _ in range(steps)])
                    for _ in range(sensors)]),
        valid=rng.random((sensors, steps)) >= missing,
    )


CASES = [(steps, latent, sensors, seed)
         for seed, (steps, latent, sensors) in enumerate(
             [(1, 1, 1), (1, 3, 2), (2, 2, 1), (4, 3, 3), (6, 2, 2), (6, 3, 1), (5, 1, 3)] * 2)]


@pytest.mark.parametrize(("steps", "latent", "sensors", "seed"), CASES)
def test_three_routes_agree_on_full_matrices(steps, latent, sensors, seed):
    model = random_full_model(np.random.default_rng(seed), steps, latent, sensors)
    filt = ref.dense_kalman_filter(model)
    smooth = ref.dense_rts_smoother(model, filt)
    precision = ref.joint_posterior_precision(model)
    covariance = ref.joint_posterior_covariance_form(model)

    np.testing.assert_allclose(precision.mean_flat, covariance.mean_flat, rtol=0, atol=ATOL)
    np.testing.assert_allclose(precision.cov, covariance.cov, rtol=0, atol=ATOL)
    np.testing.assert_allclose(smooth.mean, precision.mean, rtol=0, atol=ATOL)
    for t in range(steps):
        np.testing.assert_allclose(smooth.cov[t], precision.marginal_cov(t), rtol=0, atol=ATOL)
    for t in range(steps - 1):
        np.testing.assert_allclose(smooth.cross_cov[t], precision.cross_cov(t, t + 1),
                                   rtol=0, atol=ATOL)
    # The last filtered posterior is the smoothed one; the sum of the prediction-error
    # terms is the joint density of all observations.
    np.testing.assert_allclose(filt.post_mean[-1], precision.mean[-1], rtol=0, atol=ATOL)
    np.testing.assert_allclose(filt.log_likelihood.sum(),
                               ref.log_marginal_likelihood_bruteforce(model), rtol=0, atol=ATOL)


@pytest.mark.parametrize("seed", range(4))
def test_filter_posterior_is_bruteforce_posterior_of_the_past(seed):
    """Filtered posterior at t = joint posterior given only w_0..w_t (future ones dropped);
    the prior at t = joint posterior given w_0..w_{t-1}."""
    model = random_full_model(np.random.default_rng(100 + seed), 5, 2, 2)
    filt = ref.dense_kalman_filter(model)
    for t in range(model.steps):
        for keep, mean, cov in ((t + 1, filt.post_mean, filt.post_cov),
                                (t, filt.prior_mean, filt.prior_cov)):
            past = ref.LGSSM(**{**vars(model), "valid": model.valid.copy()})
            past.valid[:, keep:] = False
            joint = ref.joint_posterior_precision(past)
            np.testing.assert_allclose(mean[t], joint.mean[t], rtol=0, atol=ATOL)
            np.testing.assert_allclose(cov[t], joint.marginal_cov(t), rtol=0, atol=ATOL)


def test_scalar_example_by_hand():
    """T = 2, L = 1: z0 ~ N(0, 1), w0 = 1 (r = 1), z1 = 0.5 z0 + 0.2 + N(0, 0.75), w1 = 2 (r = 0.5).

    Step 0: K = 1/2, m+ = 0.5, P+ = 0.5; ll0 = log N(1 | 0, 2).
    Step 1: m- = 0.45, P- = 0.25 * 0.5 + 0.75 = 0.875; S = 1.375, K = 0.875/1.375;
            ll1 = log N(2 | 0.45, 1.375). Smoother: J = 0.5 * 0.5 / 0.875.
    """
    model = ref.LGSSM(m0=np.zeros(1), P0=np.eye(1), A=np.full((1, 1, 1), 0.5),
                      b=np.full((1, 1), 0.2), Q=np.full((1, 1, 1), 0.75),
                      w=np.array([[[1.0], [2.0]]]), R=np.array([[[[1.0]], [[0.5]]]]),
                      valid=np.ones((1, 2), bool))
    filt = ref.dense_kalman_filter(model)
    smooth = ref.dense_rts_smoother(model, filt)
    k1 = 0.875 / 1.375
    m1, p1 = 0.45 + k1 * (2.0 - 0.45), (1 - k1) * 0.875
    j = 0.25 / 0.875
    expected = {
        "prior_mean": [0.0, 0.45], "prior_var": [1.0, 0.875],
        "post_mean": [0.5, m1], "post_var": [0.5, p1],
        "loglik": [scipy.stats.norm(0, math.sqrt(2)).logpdf(1.0),
                   scipy.stats.norm(0.45, math.sqrt(1.375)).logpdf(2.0)],
        "smooth_mean": [0.5 + j * (m1 - 0.45), m1],
        "smooth_var": [0.5 + j * j * (p1 - 0.875), p1],
    }
    got = {
        "prior_mean": filt.prior_mean[:, 0], "prior_var": filt.prior_cov[:, 0, 0],
        "post_mean": filt.post_mean[:, 0], "post_var": filt.post_cov[:, 0, 0],
        "loglik": filt.log_likelihood,
        "smooth_mean": smooth.mean[:, 0], "smooth_var": smooth.cov[:, 0, 0],
    }
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=ATOL, err_msg=key)


def test_no_observations_gives_the_prior_chain():
    model = random_full_model(np.random.default_rng(7), 4, 2, 2, missing=1.0)
    assert not model.valid.any()
    prior = ref.joint_prior_moments(model)
    post = ref.joint_posterior_precision(model)
    np.testing.assert_allclose(post.mean_flat, prior.mean_flat, rtol=0, atol=ATOL)
    np.testing.assert_allclose(post.cov, prior.cov, rtol=0, atol=ATOL)
    assert ref.log_marginal_likelihood_bruteforce(model) == 0.0
    assert np.all(ref.dense_kalman_filter(model).log_likelihood == 0.0)


def test_kl_mvn_against_monte_carlo():
    rng = np.random.default_rng(3)
    m_p, m_q = rng.normal(size=3), rng.normal(size=3)
    s_p, s_q = _spd(rng, 3), _spd(rng, 3)
    x = rng.multivariate_normal(m_p, s_p, size=400_000)
    log_ratio = (scipy.stats.multivariate_normal(m_p, s_p).logpdf(x)
                 - scipy.stats.multivariate_normal(m_q, s_q).logpdf(x))
    stderr = log_ratio.std() / math.sqrt(len(x))
    assert abs(ref.kl_mvn(m_p, s_p, m_q, s_q) - log_ratio.mean()) < 5 * stderr
    assert abs(ref.kl_mvn(m_p, s_p, m_p, s_p)) < ATOL
