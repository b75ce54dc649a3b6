"""Gradients in float64: torch.autograd.gradcheck through filter + smoother + smoothed
dynamics + log-likelihood (+ the KL of the loss), with fixed and with posterior-dependent
(callable) transitions; and the autograd gradient of log p(w) against Fisher's identity
evaluated with the brute-force posterior moments of ``reference.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from estimator import (
    Belief,
    LatentObservation,
    LinearTransition,
    kalman_filter,
    kl_divergence,
    log_marginal_likelihood,
    predict,
    rts_smoother,
    smoothed_dynamics,
    transition_given,
    update,
)
from tests.kalman import reference as ref
from tests.kalman.problems import random_problem

# Analytic-vs-analytic float64 comparisons (Fisher identity, manual recursion): round-off
# only. gradcheck uses its own finite-difference defaults (eps 1e-6, atol 1e-5, rtol 1e-3).
ATOL = 1e-9

F64 = torch.float64


def _problem(seed: int, batch: int = 2, steps: int = 4, latent: int = 2, sensors: int = 2):
    problem = random_problem(np.random.default_rng(seed), batch, steps, latent, sensors,
                             missing=0.3, a_range=(-1.0, 1.0), var_range=(0.2, 2.0))
    # gradcheck perturbs every input by +-eps; keep the variances of missing observations
    # away from zero so the perturbed inputs stay valid.
    problem.r = np.where(problem.valid[..., None], problem.r, 1.0)
    problem.w = np.where(problem.valid[..., None], problem.w, 3.0)
    return problem


def _losses(initial, observations, transition, eps):
    """Everything downstream of the filter that training differentiates."""
    filtered = kalman_filter(initial, observations, transition, log_likelihood=True)
    smoothed = rts_smoother(filtered)
    s = smoothed.smoothed
    zhat = s.mean[:, :-1] + s.var[:, :-1].sqrt() * eps
    dyn = smoothed_dynamics(smoothed, zhat)
    kl = kl_divergence(dyn, transition_given(filtered.transition, zhat))
    return (filtered.posterior.mean, filtered.posterior.var, s.mean, s.var,
            dyn.mean, dyn.var, filtered.log_likelihood.sum(1), kl)


@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_fixed_transitions(seed):
    problem = _problem(seed)
    initial, observations, transition = problem.torch_inputs(F64, requires_grad=True)
    valid = [o.valid for o in observations]
    k, batch, steps, latent = problem.shape
    eps = torch.randn(batch, steps - 1, latent, generator=torch.Generator().manual_seed(seed),
                      dtype=F64)
    inputs = (*(o.mean for o in observations), *(o.var for o in observations), *transition,
              *initial)

    def fn(*xs):
        ws, rs = xs[:k], xs[k:2 * k]
        a, b, q, m0, p0 = xs[2 * k:]
        obs = [LatentObservation(w, r, v) for w, r, v in zip(ws, rs, valid, strict=True)]
        return _losses(Belief(m0, p0), obs, LinearTransition(a, b, q), eps)

    assert torch.autograd.gradcheck(fn, inputs)


def _posterior_dependent_transition(weight, b0, q0):
    """A VRKN-like phi(mu+_t): a = 0.5 + 0.4 sigmoid(weight * mean), b and q also depend
    on the posterior mean; b0, q0 [B, T-1, L] are per-step offsets."""
    def transition(t: int, posterior: Belief) -> LinearTransition:
        mean = posterior.mean
        return LinearTransition(0.5 + 0.4 * torch.sigmoid(weight * mean),
                                b0[:, t] + 0.1 * torch.tanh(mean),
                                q0[:, t] * (1.0 + torch.sigmoid(mean)))
    return transition


def _callable_setup(seed: int):
    problem = _problem(seed, batch=2, steps=4, latent=2, sensors=2)
    initial, observations, fixed = problem.torch_inputs(F64, requires_grad=True)
    weight = torch.tensor([0.7, -1.3], dtype=F64, requires_grad=True)
    return problem, initial, observations, fixed, weight


def test_callable_transition_matches_manual_recursion_and_dense_reference():
    problem, initial, observations, fixed, weight = _callable_setup(3)
    fn = _posterior_dependent_transition(weight, fixed.b, fixed.q)
    filtered = kalman_filter(initial, observations, fn, log_likelihood=True)
    _, batch, steps, _ = problem.shape

    # 1. Manual step-by-step recursion with predict/update.
    belief = initial
    for t in range(steps):
        if t > 0:
            params = fn(t - 1, belief)
            for got, want in zip(filtered.transition, params, strict=True):
                np.testing.assert_allclose(got[:, t - 1].detach(), want.detach(), rtol=0,
                                           atol=ATOL)
            belief = predict(belief, params)
        np.testing.assert_allclose(filtered.prior.mean[:, t].detach(), belief.mean.detach(),
                                   rtol=0, atol=ATOL)
        np.testing.assert_allclose(filtered.prior.var[:, t].detach(), belief.var.detach(),
                                   rtol=0, atol=ATOL)
        for obs in observations:
            belief = update(belief, LatentObservation(obs.mean[:, t], obs.var[:, t],
                                                      obs.valid[:, t]))
        np.testing.assert_allclose(filtered.posterior.mean[:, t].detach(),
                                   belief.mean.detach(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(filtered.posterior.var[:, t].detach(),
                                   belief.var.detach(), rtol=0, atol=ATOL)

    # 2. Given the transitions it used, the filter is the dense textbook filter.
    a, b, q = (x.detach().numpy() for x in filtered.transition)
    used = dataclasses.replace(problem, a=a, b=b, q=q)
    for i in range(batch):
        dense = ref.dense_kalman_filter(used.dense(i))
        np.testing.assert_allclose(filtered.posterior.mean[i].detach(), dense.post_mean,
                                   rtol=0, atol=ATOL)
        np.testing.assert_allclose(filtered.posterior.var[i].detach(),
                                   np.diagonal(dense.post_cov, axis1=1, axis2=2),
                                   rtol=0, atol=ATOL)
        np.testing.assert_allclose(filtered.log_likelihood[i].detach(), dense.log_likelihood,
                                   rtol=0, atol=ATOL)


def test_gradcheck_callable_transition():
    problem, initial, observations, fixed, weight = _callable_setup(4)
    k, batch, steps, latent = problem.shape
    valid = [o.valid for o in observations]
    eps = torch.randn(batch, steps - 1, latent, generator=torch.Generator().manual_seed(4),
                      dtype=F64)
    inputs = (*(o.mean for o in observations), *(o.var for o in observations), weight,
              fixed.b, fixed.q, *initial)

    def fn(*xs):
        ws, rs = xs[:k], xs[k:2 * k]
        wt, b0, q0, m0, p0 = xs[2 * k:]
        obs = [LatentObservation(w, r, v) for w, r, v in zip(ws, rs, valid, strict=True)]
        return _losses(Belief(m0, p0), obs, _posterior_dependent_transition(wt, b0, q0), eps)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_log_likelihood_gradient_is_fisher_identity(seed):
    """d log p(w) / d theta = E_{p(z | w)}[d log p(z, w) / d theta] (Fisher's identity), with
    the posterior moments from the brute-force joint: for each latent dimension,

      d/dm0 = (mu_0 - m0) / p0,   d/dp0 = -1/(2 p0) + (v_0 + (mu_0 - m0)^2) / (2 p0^2)
      e_t = z_{t+1} - a z_t - b:  d/db = E[e]/q,  d/da = E[e z_t]/q,
                                  d/dq = -1/(2q) + E[e^2]/(2q^2)
      d/dw^k_t = (mu_t - w)/r,    d/dr^k_t = -1/(2r) + ((w - mu_t)^2 + v_t)/(2 r^2)
    (zero for missing observations).
    """
    problem = random_problem(np.random.default_rng(seed), 3, 5, 2, 2, missing=0.3)
    initial, observations, transition = problem.torch_inputs(F64, requires_grad=True)
    total = log_marginal_likelihood(initial, observations, transition).sum()
    params = [*initial, *transition, *(o.mean for o in observations),
              *(o.var for o in observations)]
    grads = [g.numpy() for g in torch.autograd.grad(total, params)]
    g_m0, g_p0, g_a, g_b, g_q = grads[:5]
    g_w, g_r = grads[5:5 + len(observations)], grads[5 + len(observations):]

    k, batch, steps, latent = problem.shape
    for i in range(batch):
        joint = ref.joint_posterior_precision(problem.dense(i))
        mu = joint.mean
        v = np.diag(joint.cov).reshape(steps, latent)
        c = np.stack([np.diag(joint.cross_cov(t, t + 1)) for t in range(steps - 1)])
        m0, p0 = problem.m0[i], problem.p0[i]
        a, b, q = problem.a[i], problem.b[i], problem.q[i]
        e_mean = mu[1:] - a * mu[:-1] - b
        e_z = (c + mu[1:] * mu[:-1]) - a * (v[:-1] + mu[:-1] ** 2) - b * mu[:-1]
        e_sq = v[1:] + a * a * v[:-1] - 2 * a * c + e_mean ** 2
        expected = {
            "m0": ((mu[0] - m0) / p0, g_m0[i]),
            "p0": (-0.5 / p0 + (v[0] + (mu[0] - m0) ** 2) / (2 * p0 ** 2), g_p0[i]),
            "b": (e_mean / q, g_b[i]),
            "a": (e_z / q, g_a[i]),
            "q": (-0.5 / q + e_sq / (2 * q ** 2), g_q[i]),
        }
        for s in range(k):
            ok = problem.valid[s, i][:, None]
            w, r = problem.w[s, i], problem.r[s, i]
            r_safe = np.where(ok, r, 1.0)
            expected[f"w{s}"] = (np.where(ok, (mu - w) / r_safe, 0.0), g_w[s][i])
            expected[f"r{s}"] = (np.where(ok, -0.5 / r_safe + ((w - mu) ** 2 + v)
                                          / (2 * r_safe ** 2), 0.0), g_r[s][i])
        for name, (want, got) in expected.items():
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL,
                                       err_msg=f"d log p / d {name}, element {i}")
