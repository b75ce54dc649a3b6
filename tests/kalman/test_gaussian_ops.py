"""Single-step operations: predict, masked update, multi-sensor fusion, KL, log densities,
sampling. References: full-matrix numpy/scipy formulas and Monte Carlo."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from estimator import (
    Belief,
    LatentObservation,
    LinearTransition,
    always_valid,
    fuse,
    gaussian_log_prob,
    kl_divergence,
    predict,
    predictive_log_prob,
    sample,
    transition_given,
    update,
)
from tests.kalman import reference as ref

# float64 closed forms against float64 numpy/scipy: round-off ~1e-15 relative on O(1)-O(100)
# numbers. Monte Carlo checks use their own statistical bound (a multiple of the standard
# error), stated where they are.
ATOL = 1e-9

F64 = torch.float64


def rand_belief(g: torch.Generator, *shape: int) -> Belief:
    return Belief(torch.randn(*shape, generator=g, dtype=F64),
                  torch.exp(torch.randn(*shape, generator=g, dtype=F64)))


def close(actual, expected, what: str = "") -> None:
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().numpy()
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL, err_msg=what)


def test_predict_matches_dense_time_update():
    g = torch.Generator().manual_seed(0)
    post = rand_belief(g, 4, 3)
    trans = LinearTransition(torch.randn(4, 3, generator=g, dtype=F64) * 1.5,
                             torch.randn(4, 3, generator=g, dtype=F64),
                             torch.rand(4, 3, generator=g, dtype=F64) + 0.01)
    got = predict(post, trans)
    for i in range(4):
        a = np.diag(trans.a[i].numpy())
        mean = a @ post.mean[i].numpy() + trans.b[i].numpy()
        cov = a @ np.diag(post.var[i].numpy()) @ a.T + np.diag(trans.q[i].numpy())
        close(got.mean[i], mean)
        close(got.var[i], np.diag(cov))


def test_update_matches_dense_bayes_rule():
    g = torch.Generator().manual_seed(1)
    prior, obs = rand_belief(g, 5, 3), rand_belief(g, 5, 3)
    got = update(prior, always_valid(obs.mean, obs.var))
    for i in range(5):
        p, r = np.diag(prior.var[i].numpy()), np.diag(obs.var[i].numpy())
        gain = p @ np.linalg.inv(p + r)
        mean = prior.mean[i].numpy() + gain @ (obs.mean[i].numpy() - prior.mean[i].numpy())
        close(got.mean[i], mean)
        close(got.var[i], np.diag(p - gain @ p))


def test_masked_update_skips_invalid_elements_bit_identically():
    """Invalid batch elements keep the prior exactly (whatever garbage the observation holds),
    while valid elements in the same batch get the same update as when updated alone."""
    g = torch.Generator().manual_seed(2)
    prior = rand_belief(g, 6, 4)
    obs_mean = torch.randn(6, 4, generator=g, dtype=F64) * 1e3
    obs_var = torch.rand(6, 4, generator=g, dtype=F64)
    valid = torch.tensor([True, False, True, False, False, True])
    obs_var[1] = 0.0  # a zero variance is allowed where not valid
    got = update(prior, LatentObservation(obs_mean, obs_var, valid))
    for i in range(6):
        if valid[i]:
            alone = update(Belief(prior.mean[i:i + 1], prior.var[i:i + 1]),
                           always_valid(obs_mean[i:i + 1], obs_var[i:i + 1]))
            close(got.mean[i], alone.mean[0])
            close(got.var[i], alone.var[0])
            assert not torch.equal(got.mean[i], prior.mean[i])
        else:
            assert torch.equal(got.mean[i], prior.mean[i])
            assert torch.equal(got.var[i], prior.var[i])


def test_masked_update_with_a_sequence_mask():
    """The same masking holds for [B, T, L] beliefs with [B, T] masks."""
    g = torch.Generator().manual_seed(3)
    prior, obs = rand_belief(g, 3, 5, 2), rand_belief(g, 3, 5, 2)
    valid = torch.rand(3, 5, generator=g) < 0.5
    got = update(prior, LatentObservation(obs.mean, obs.var, valid))
    full = update(prior, always_valid(obs.mean, obs.var))
    assert torch.equal(got.mean[~valid], prior.mean[~valid])
    assert torch.equal(got.var[~valid], prior.var[~valid])
    close(got.mean[valid], full.mean[valid])
    close(got.var[valid], full.var[valid])


@pytest.mark.parametrize("sensors", [1, 2, 3, 4])
def test_fusion_equals_one_update_with_combined_precision_in_any_order(sensors):
    """Sequential fusion = single update with the precision-weighted combination of the
    present sensors, 1/r = sum 1/r_k, w = r sum w_k / r_k; and independent of order."""
    g = torch.Generator().manual_seed(10 + sensors)
    batch, latent = 8, 3
    prior = rand_belief(g, batch, latent)
    obs = []
    for _ in range(sensors):
        m, v = rand_belief(g, batch, latent)
        obs.append(LatentObservation(m, v, torch.rand(batch, generator=g) < 0.7))
    prec = sum(o.valid[:, None] / o.var for o in obs)
    info = sum(o.valid[:, None] * o.mean / o.var for o in obs)
    any_valid = prec > 0
    combined_var = torch.where(any_valid, 1.0 / torch.where(any_valid, prec, 1.0), 1.0)
    combined = LatentObservation(info * combined_var, combined_var, any_valid.all(-1))
    expected = update(prior, combined)
    # And the combined update itself against precision-form Bayes rule.
    post_prec = 1.0 / prior.var + prec
    close(expected.var, 1.0 / post_prec, "combined variance")
    close(expected.mean, (prior.mean / prior.var + info) / post_prec, "combined mean")
    for order in itertools.permutations(range(sensors)):
        got = fuse(prior, [obs[k] for k in order])
        close(got.mean, expected.mean, f"order {order}")
        close(got.var, expected.var, f"order {order}")


def test_fuse_with_no_sensor_present_is_bit_identical():
    g = torch.Generator().manual_seed(4)
    prior = rand_belief(g, 3, 2)
    invalid = [LatentObservation(torch.randn(3, 2, generator=g, dtype=F64) * 1e3,
                                 torch.zeros(3, 2, dtype=F64), torch.zeros(3, dtype=torch.bool))
               for _ in range(3)]
    got = fuse(prior, invalid)
    assert torch.equal(got.mean, prior.mean) and torch.equal(got.var, prior.var)


def test_predictive_log_prob_matches_scipy_and_is_zero_where_missing():
    g = torch.Generator().manual_seed(5)
    prior, obs = rand_belief(g, 4, 3), rand_belief(g, 4, 3)
    valid = torch.tensor([True, False, True, True])
    got = predictive_log_prob(prior, LatentObservation(obs.mean, obs.var, valid))
    for i in range(4):
        cov = np.diag(prior.var[i].numpy() + obs.var[i].numpy())
        want = scipy.stats.multivariate_normal(prior.mean[i].numpy(), cov).logpdf(
            obs.mean[i].numpy()) if valid[i] else 0.0
        close(got[i], want, f"element {i}")


def test_gaussian_log_prob_matches_scipy():
    g = torch.Generator().manual_seed(6)
    belief = rand_belief(g, 2, 5, 4)
    x = torch.randn(2, 5, 4, generator=g, dtype=F64) * 3
    got = gaussian_log_prob(x, belief)
    assert got.shape == (2, 5)
    mean, var = belief.mean.numpy(), belief.var.numpy()
    close(got, scipy.stats.norm(mean, np.sqrt(var)).logpdf(x.numpy()).sum(-1))
    for i, t in itertools.product(range(2), range(5)):
        mvn = scipy.stats.multivariate_normal(mean[i, t], np.diag(var[i, t]))
        close(got[i, t], mvn.logpdf(x[i, t].numpy()))


def test_kl_divergence_matches_full_matrix_formula():
    g = torch.Generator().manual_seed(7)
    p, q = rand_belief(g, 3, 4, 5), rand_belief(g, 3, 4, 5)
    got = kl_divergence(p, q)
    assert got.shape == (3, 4)
    for i, t in itertools.product(range(3), range(4)):
        want = ref.kl_mvn(p.mean[i, t].numpy(), np.diag(p.var[i, t].numpy()),
                          q.mean[i, t].numpy(), np.diag(q.var[i, t].numpy()))
        close(got[i, t], want)
    close(kl_divergence(p, p), np.zeros((3, 4)))
    assert bool((got > 0).all())


def test_kl_divergence_matches_monte_carlo():
    """KL(p||q) = E_p[log p(x) - log q(x)], with 200k samples; bound: 5 standard errors."""
    g = torch.Generator().manual_seed(8)
    p, q = rand_belief(g, 1, 3), rand_belief(g, 1, 3)
    n = 200_000
    x = p.mean + p.var.sqrt() * torch.randn(n, 3, generator=g, dtype=F64)
    log_ratio = gaussian_log_prob(x, p) - gaussian_log_prob(x, q)
    stderr = log_ratio.std().item() / math.sqrt(n)
    assert abs(kl_divergence(p, q).item() - log_ratio.mean().item()) < 5 * stderr


def test_sample_has_the_belief_moments_and_is_reproducible():
    """Mean and variance of 100k samples; bounds: 5 standard errors of each estimator."""
    belief = Belief(torch.tensor([[-1.0, 0.0, 3.0]], dtype=F64),
                    torch.tensor([[0.25, 1.0, 4.0]], dtype=F64))
    n = 100_000
    big = Belief(belief.mean.expand(n, 3), belief.var.expand(n, 3))
    x = sample(big, torch.Generator().manual_seed(9))
    assert x.dtype == F64 and x.shape == (n, 3)
    var = belief.var[0]
    assert bool(((x.mean(0) - belief.mean[0]).abs() < 5 * (var / n).sqrt()).all())
    assert bool(((x.var(0) - var).abs() < 5 * var * math.sqrt(2.0 / n)).all())
    assert torch.equal(x, sample(big, torch.Generator().manual_seed(9)))
    # Reparameterised: the gradient flows to mean and variance.
    mean = belief.mean.clone().requires_grad_()
    sample(Belief(mean, belief.var)).sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean))


def test_transition_given_is_the_prior_dynamics():
    g = torch.Generator().manual_seed(10)
    trans = LinearTransition(*(torch.randn(2, 3, generator=g, dtype=F64) for _ in range(2)),
                             torch.rand(2, 3, generator=g, dtype=F64) + 0.1)
    z = torch.randn(2, 3, generator=g, dtype=F64)
    got = transition_given(trans, z)
    close(got.mean, trans.a * z + trans.b)
    assert torch.equal(got.var, trans.q)
    # It is predict() from a point mass (zero-variance belief).
    close(predict(Belief(z, torch.zeros_like(z)), trans, validate=False).var, trans.q)
