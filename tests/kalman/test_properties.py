"""Property-based tests (hypothesis, float64): structural facts that hold for every valid
input, over random sizes, masks and time-varying parameters.

Examples are derandomized (the same examples on every run), so CI is reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import given, settings

from estimator import (
    kalman_filter,
    kl_divergence,
    rts_smoother,
    smoothed_dynamics,
)
from tests.kalman.problems import DiagProblem, diag_problems

# Relative slack for inequalities between float64 quantities that are equal in exact
# arithmetic in limiting cases (e.g. a posterior variance equal to its prior when the
# observation variance dwarfs it): a few ulps. Anything structurally wrong is far larger.
RTOL = 1e-12

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
F64 = torch.float64


def _run(problem: DiagProblem, dtype=F64):
    initial, observations, transition = problem.torch_inputs(dtype)
    filtered = kalman_filter(initial, observations, transition, log_likelihood=True)
    return filtered, rts_smoother(filtered), transition


@SETTINGS
@given(diag_problems(log10_var=(-3.0, 3.0)))
def test_variances_shrink_through_update_and_smoothing(problem):
    filtered, smoothed, transition = _run(problem)
    prior, post, s = filtered.prior.var, filtered.posterior.var, smoothed.smoothed.var
    assert bool((post > 0).all() and (s > 0).all())
    assert bool((post <= prior * (1 + RTOL)).all()), "posterior variance above prior"
    assert bool((s <= post * (1 + RTOL)).all()), "smoothed variance above filtered"
    # Where no sensor is present the update leaves the prior bit-identical.
    empty = torch.tensor(~problem.valid.any(0))
    assert torch.equal(post[empty], prior[empty])
    assert torch.equal(filtered.posterior.mean[empty], filtered.prior.mean[empty])
    # The predicted variance is at least the process noise.
    assert bool((prior[:, 1:] >= transition.q * (1 - RTOL)).all())


@SETTINGS
@given(diag_problems(log10_var=(-3.0, 3.0)))
def test_smoothed_dynamics_variance_is_positive_and_below_q(problem):
    _, smoothed, transition = _run(problem)
    s = smoothed.smoothed
    gen = torch.Generator().manual_seed(0)
    zhat = s.mean[:, :-1] + s.var[:, :-1].sqrt() * torch.randn(s.mean[:, :-1].shape,
                                                               generator=gen, dtype=F64)
    dyn = smoothed_dynamics(smoothed, zhat)
    assert bool((dyn.var > 0).all())
    # Conditioning z_{t+1} | z_t on future observations can only shrink the prior q_t,
    # and conditioning the smoothed marginal on z_t can only shrink var^s_{t+1}.
    assert bool((dyn.var <= transition.q * (1 + RTOL)).all())
    assert bool((dyn.var <= s.var[:, 1:] * (1 + RTOL)).all())
    assert bool(torch.isfinite(dyn.mean).all())
    # The smoothed dynamics averaged over z_t ~ smoothed marginal give back the smoothed
    # marginal at t+1: at z_t = mu^s_t the conditional mean is mu^s_{t+1}.
    at_mean = smoothed_dynamics(smoothed, s.mean[:, :-1])
    np.testing.assert_allclose(at_mean.mean, s.mean[:, 1:], rtol=RTOL, atol=0)


@SETTINGS
@given(diag_problems())
def test_missing_observation_values_are_ignored(problem):
    """Replacing the garbage in missing observations changes no output, bit for bit."""
    other = dataclasses.replace(
        problem,
        w=np.where(problem.valid[..., None], problem.w, -7.0 * problem.w - 3.0),
        r=np.where(problem.valid[..., None], problem.r, 0.0),
    )
    (f1, s1, _), (f2, s2, _) = _run(problem), _run(other)
    for x, y in [(f1.prior, f2.prior), (f1.posterior, f2.posterior), (s1.smoothed, s2.smoothed)]:
        assert torch.equal(x.mean, y.mean) and torch.equal(x.var, y.var)
    assert torch.equal(f1.log_likelihood, f2.log_likelihood)


@SETTINGS
@given(diag_problems())
def test_filter_is_causal_and_smoother_ends_at_the_filter(problem):
    """The filter over the first t steps equals the first t steps of the full filter; the
    smoother's last step is the filter's; log-likelihood terms are finite and 0 where no
    sensor is present."""
    filtered, smoothed, _ = _run(problem)
    steps = problem.shape[2]
    cut = max(1, steps // 2)
    prefix = dataclasses.replace(problem, a=problem.a[:, :cut - 1], b=problem.b[:, :cut - 1],
                                 q=problem.q[:, :cut - 1], w=problem.w[:, :, :cut],
                                 r=problem.r[:, :, :cut], valid=problem.valid[:, :, :cut])
    short, _, _ = _run(prefix)
    assert torch.equal(short.posterior.mean, filtered.posterior.mean[:, :cut])
    assert torch.equal(short.posterior.var, filtered.posterior.var[:, :cut])
    assert torch.equal(smoothed.smoothed.mean[:, -1], filtered.posterior.mean[:, -1])
    ll = filtered.log_likelihood
    assert bool(torch.isfinite(ll).all())
    assert bool((ll[torch.tensor(~problem.valid.any(0))] == 0).all())


@SETTINGS
@given(diag_problems(log10_var=(-3.0, 3.0)))
def test_kl_is_nonnegative_and_zero_on_itself(problem):
    filtered, smoothed, _ = _run(problem)
    beliefs = [filtered.prior, filtered.posterior, smoothed.smoothed]
    for p in beliefs:
        assert bool((kl_divergence(p, p).abs() <= RTOL).all())
        for q in beliefs:
            assert bool((kl_divergence(p, q) >= -RTOL).all())
