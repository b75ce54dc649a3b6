"""The torch core (float64) against the independent full-matrix references.

Random time-varying parameters (a, b, q differ per step and per batch element, a of both
signs), random missing observations with garbage values, 1-3 sensors. Every quantity
the core returns is compared with the recursive dense reference AND the brute-force joint
posterior of ``reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from estimator import (
    kalman_filter,
    log_marginal_likelihood,
    rts_smoother,
    smoothed_dynamics,
)
from tests.kalman import reference as ref
from tests.kalman.problems import DiagProblem, random_problem

# float64 core vs float64 references: round-off is ~1e-14 on these sizes; a real error
# (wrong index, wrong gain, a missed mask) is orders of magnitude larger.
ATOL = 1e-9


def close(actual: torch.Tensor | np.ndarray, expected: np.ndarray | float, what: str) -> None:
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL, err_msg=what)


def diag(m: np.ndarray) -> np.ndarray:
    """Diagonals of a stack of matrices [..., L, L] -> [..., L]."""
    return np.diagonal(m, axis1=-2, axis2=-1)


# (batch, steps, latent, sensors, missing); edge cases included: T = 1, B = 1, L = 1,
# every observation missing, none missing.
CONFIGS = [
    (3, 5, 3, 1, 0.3),
    (4, 6, 2, 2, 0.4),
    (2, 6, 3, 3, 0.5),
    (1, 4, 2, 2, 0.3),
    (3, 1, 3, 2, 0.3),
    (1, 1, 1, 1, 0.0),
    (2, 5, 1, 3, 0.0),
    (3, 4, 2, 2, 1.0),
    (2, 6, 2, 1, 0.8),
]
CASES = [(*cfg, seed) for cfg in CONFIGS for seed in range(3)]
IDS = [f"B{b}-T{t}-L{l}-K{k}-miss{m}-s{s}" for b, t, l, k, m, s in CASES]


def run_core(problem: DiagProblem):
    initial, observations, transition = problem.torch_inputs(torch.float64)
    filtered = kalman_filter(initial, observations, transition, log_likelihood=True)
    return filtered, rts_smoother(filtered), (initial, observations, transition)


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    batch, steps, latent, sensors, missing, seed = request.param
    rng = np.random.default_rng(1000 + seed)
    problem = random_problem(rng, batch, steps, latent, sensors, missing)
    filtered, smoothed, inputs = run_core(problem)
    return problem, filtered, smoothed, inputs, rng


def test_filter_matches_dense_reference(case):
    problem, filtered, _, inputs, _ = case
    _, batch, steps, _ = problem.shape
    for i in range(batch):
        expected = ref.dense_kalman_filter(problem.dense(i))
        close(filtered.prior.mean[i], expected.prior_mean, f"prior mean, element {i}")
        close(filtered.prior.var[i], diag(expected.prior_cov), f"prior var, element {i}")
        close(filtered.posterior.mean[i], expected.post_mean, f"posterior mean, element {i}")
        close(filtered.posterior.var[i], diag(expected.post_cov), f"posterior var, element {i}")
        close(filtered.log_likelihood[i], expected.log_likelihood, f"log-lik, element {i}")
    # The transitions the filter reports are the ones it was given.
    transition = inputs[2]
    for got, given in zip(filtered.transition, transition, strict=True):
        assert torch.equal(got, given)
    assert filtered.prior.mean.shape == (batch, steps, problem.shape[3])


def test_filter_matches_bruteforce_posterior_of_the_past(case):
    """posterior_t = p(z_t | w_0..t) and prior_t = p(z_t | w_0..t-1), by brute force."""
    problem, filtered, _, _, _ = case
    _, batch, steps, _ = problem.shape
    for i in range(batch):
        model = problem.dense(i)
        for t in range(steps):
            for keep, belief in ((t + 1, filtered.posterior), (t, filtered.prior)):
                past = ref.LGSSM(**{**vars(model), "valid": model.valid.copy()})
                past.valid[:, keep:] = False
                joint = ref.joint_posterior_precision(past)
                close(belief.mean[i, t], joint.mean[t], f"mean, element {i}, t {t}, keep {keep}")
                close(belief.var[i, t], diag(joint.marginal_cov(t)),
                      f"var, element {i}, t {t}, keep {keep}")


def test_smoother_matches_dense_reference_and_bruteforce(case):
    problem, filtered, smoothed, _, _ = case
    _, batch, steps, latent = problem.shape
    for i in range(batch):
        model = problem.dense(i)
        dense = ref.dense_rts_smoother(model, ref.dense_kalman_filter(model))
        joint = ref.joint_posterior_precision(model)
        close(smoothed.smoothed.mean[i], dense.mean, f"smoothed mean vs RTS, element {i}")
        close(smoothed.smoothed.var[i], diag(dense.cov), f"smoothed var vs RTS, element {i}")
        close(smoothed.smoothed.mean[i], joint.mean, f"smoothed mean vs joint, element {i}")
        close(smoothed.smoothed.var[i], np.diag(joint.cov).reshape(steps, latent),
              f"smoothed var vs joint, element {i}")
        # The diagonal model keeps latent dimensions independent: no off-diagonal
        # posterior covariance anywhere in the brute-force joint.
        full = joint.cov.reshape(steps, latent, steps, latent)
        off = full * (1.0 - np.eye(latent))[None, :, None, :]
        close(off, 0.0, f"cross-dimension covariance, element {i}")
    # The last smoothed step is the last filtered one.
    assert torch.equal(smoothed.smoothed.mean[:, -1], filtered.posterior.mean[:, -1])
    assert torch.equal(smoothed.smoothed.var[:, -1], filtered.posterior.var[:, -1])


def test_smoother_gain_and_cross_covariance(case):
    """C_t is the diagonal of J_t; C_t var^s_{t+1} = Cov(z_t, z_{t+1} | all w);
    R_t = P_t - J_t P^-_{t+1} J_t^T."""
    problem, _, smoothed, _, _ = case
    _, batch, steps, _ = problem.shape
    assert smoothed.gain.shape == (batch, steps - 1, problem.shape[3])
    cross = smoothed.gain * smoothed.smoothed.var[:, 1:]
    for i in range(batch):
        model = problem.dense(i)
        filt = ref.dense_kalman_filter(model)
        dense = ref.dense_rts_smoother(model, filt)
        joint = ref.joint_posterior_precision(model)
        close(smoothed.gain[i], diag(dense.gain), f"gain, element {i}")
        close(cross[i], diag(dense.cross_cov), f"cross-cov vs RTS, element {i}")
        for t in range(steps - 1):
            close(cross[i, t], diag(joint.cross_cov(t, t + 1)), f"cross-cov, element {i} t {t}")
            residual = filt.post_cov[t] - dense.gain[t] @ filt.prior_cov[t + 1] @ dense.gain[t].T
            close(smoothed.residual_var[i, t], diag(residual), f"residual, element {i} t {t}")


def test_smoothed_dynamics_is_bruteforce_pairwise_conditional(case):
    """mean/var of z_{t+1} | z_t = zhat, all w, for random zhat, from the brute-force joint."""
    problem, _, smoothed, _, rng = case
    _, batch, steps, latent = problem.shape
    s = smoothed.smoothed
    noise = rng.normal(0.0, 2.0, (batch, steps - 1, latent))
    zhat = s.mean[:, :-1] + s.var[:, :-1].sqrt() * torch.tensor(noise)
    dyn = smoothed_dynamics(smoothed, zhat)
    assert dyn.mean.shape == (batch, steps - 1, latent)
    for i in range(batch):
        joint = ref.joint_posterior_precision(problem.dense(i))
        for t in range(steps - 1):
            mean, cov = joint.conditional_next(t, zhat[i, t].numpy())
            close(dyn.mean[i, t], mean, f"conditional mean, element {i} t {t}")
            close(dyn.var[i, t], np.diag(cov), f"conditional var, element {i} t {t}")
            close(cov - np.diag(np.diag(cov)), 0.0, f"conditional off-diagonal, {i} {t}")


def test_log_marginal_likelihood_is_bruteforce_joint_density(case):
    problem, filtered, _, inputs, _ = case
    _, batch, _, _ = problem.shape
    initial, observations, transition = inputs
    total = log_marginal_likelihood(initial, observations, transition)
    assert total.shape == (batch,)
    close(total, filtered.log_likelihood.sum(1).detach().numpy(), "sum of step terms")
    for i in range(batch):
        close(total[i], ref.log_marginal_likelihood_bruteforce(problem.dense(i)),
              f"log p(w), element {i}")


# --------------------------------------------------------------------------- edge cases


def test_single_step_is_an_update_of_the_initial_belief():
    problem = random_problem(np.random.default_rng(5), 3, 1, 2, 2, missing=0.3)
    filtered, smoothed, (initial, _, _) = run_core(problem)
    assert filtered.transition.a.shape == (3, 0, 2)
    assert torch.equal(filtered.prior.mean[:, 0], initial.mean)
    assert torch.equal(filtered.prior.var[:, 0], initial.var)
    assert torch.equal(smoothed.smoothed.mean, filtered.posterior.mean)
    assert torch.equal(smoothed.smoothed.var, filtered.posterior.var)
    assert smoothed.gain.shape == (3, 0, 2)
    dyn = smoothed_dynamics(smoothed, filtered.posterior.mean[:, :0])
    assert dyn.mean.shape == dyn.var.shape == (3, 0, 2)


def test_all_missing_is_pure_prediction_with_zero_log_likelihood():
    problem = random_problem(np.random.default_rng(6), 3, 5, 2, 2, missing=1.0)
    assert not problem.valid.any()
    filtered, smoothed, _ = run_core(problem)
    # No update anywhere: every posterior is bit-identical to its prior.
    assert torch.equal(filtered.posterior.mean, filtered.prior.mean)
    assert torch.equal(filtered.posterior.var, filtered.prior.var)
    assert torch.equal(filtered.log_likelihood, torch.zeros(3, 5, dtype=torch.float64))
    for i in range(3):
        prior = ref.joint_prior_moments(problem.dense(i))
        close(filtered.prior.mean[i], prior.mean, f"predicted mean, element {i}")
        close(filtered.prior.var[i], np.diag(prior.cov).reshape(5, 2), f"predicted var, {i}")
        # Smoothing without observations gives back the prior marginals.
        close(smoothed.smoothed.mean[i], prior.mean, f"smoothed mean, element {i}")
        close(smoothed.smoothed.var[i], np.diag(prior.cov).reshape(5, 2), f"smoothed var, {i}")


def test_step_without_any_observation_leaves_prior_bit_identical():
    """Per batch element: where every sensor is missing at (i, t), posterior == prior exactly,
    even though other batch elements are updated at the same step."""
    problem = random_problem(np.random.default_rng(8), 6, 6, 3, 2, missing=0.5)
    filtered, _, _ = run_core(problem)
    empty = ~problem.valid.any(0)  # [B, T]
    assert empty.any() and (~empty).any()
    for i, t in zip(*np.nonzero(empty), strict=True):
        assert torch.equal(filtered.posterior.mean[i, t], filtered.prior.mean[i, t])
        assert torch.equal(filtered.posterior.var[i, t], filtered.prior.var[i, t])
    for i, t in zip(*np.nonzero(~empty), strict=True):
        assert bool((filtered.posterior.var[i, t] < filtered.prior.var[i, t]).all())
