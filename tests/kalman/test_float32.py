"""float32 robustness: the core in float32 stays finite and positive, keeps the variance
inequalities, and tracks float64, for extreme but valid inputs (variances 1e-6..1e6,
means up to 1e3, |a| up to 1.5), plus moderate problems against the dense reference.

The float64 core itself is verified against the references in test_filter_smoother.py,
so it serves as the ground truth here.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings

from estimator import kalman_filter, rts_smoother, smoothed_dynamics, update
from estimator.gaussian import Belief, always_valid
from tests.kalman import reference as ref
from tests.kalman.problems import DiagProblem, diag_problems, random_problem

# Relative tolerance for float32 vs float64 (float32 eps = 1.2e-7, so ~170 ulps). The
# variance recursions are sums and products of positive terms and stay within ~1e-6
# relative even at 1e-6..1e6; means are compared relative to (std + magnitude of the
# means and observations involved), since float32 cannot resolve a mean of 1e3 to better
# than ~1e-4 however small its variance. The inequality checks allow the same slack.
TOL32 = 2e-5

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
EXTREME = diag_problems(log10_var=(-6.0, 6.0), a_range=(-1.5, 1.5), log10_scale=(-3.0, 3.0))


def _run(problem: DiagProblem, dtype: torch.dtype):
    initial, observations, transition = problem.torch_inputs(dtype)
    filtered = kalman_filter(initial, observations, transition, log_likelihood=True)
    smoothed = rts_smoother(filtered)
    dyn = smoothed_dynamics(smoothed, smoothed.smoothed.mean[:, :-1]
                            + smoothed.smoothed.var[:, :-1].sqrt())
    return filtered, smoothed, dyn, transition


def _max(x: torch.Tensor) -> float:
    return x.max().item() if x.numel() else 0.0


@SETTINGS
@given(EXTREME)
def test_float32_extreme_inputs_stay_finite_positive_and_ordered(problem):
    filtered, smoothed, dyn, transition = _run(problem, torch.float32)
    s = smoothed.smoothed
    for name, x in [("prior.var", filtered.prior.var), ("posterior.var", filtered.posterior.var),
                    ("smoothed.var", s.var), ("dynamics.var", dyn.var),
                    ("residual_var", smoothed.residual_var)]:
        assert bool((x > 0).all()), f"{name} not strictly positive: min {x.min()}"
        assert bool(torch.isfinite(x).all()), f"{name} not finite"
    for name, x in [("posterior.mean", filtered.posterior.mean), ("smoothed.mean", s.mean),
                    ("dynamics.mean", dyn.mean), ("log_likelihood", filtered.log_likelihood)]:
        assert bool(torch.isfinite(x).all()), f"{name} not finite"
    slack = 1 + TOL32
    assert bool((filtered.posterior.var <= filtered.prior.var * slack).all())
    assert bool((s.var <= filtered.posterior.var * slack).all())
    assert bool((dyn.var <= transition.q * slack).all())
    assert bool((dyn.var <= s.var[:, 1:] * slack).all())


@SETTINGS
@given(EXTREME)
def test_float32_tracks_float64_on_extreme_inputs(problem):
    f32, s32, d32, _ = _run(problem, torch.float32)
    f64, s64, d64, _ = _run(problem, torch.float64)
    for name, x, y in [("posterior.var", f32.posterior.var, f64.posterior.var),
                       ("smoothed.var", s32.smoothed.var, s64.smoothed.var),
                       ("dynamics.var", d32.var, d64.var)]:
        rel = _max((x.double() - y).abs() / y)
        assert rel <= TOL32, f"{name}: relative error {rel:.3g}"
    # Per batch element, the magnitudes float32 has to represent: means, observations, and
    # the conditioning point z_prev = mu^s + sqrt(var^s) of the smoothed dynamics.
    w_scale = torch.tensor(np.abs(np.where(problem.valid[..., None], problem.w, 0.0))
                           .max(axis=(0, 2, 3)))[:, None, None]
    scale = (f64.prior.mean.abs().amax((1, 2), keepdim=True)
             + s64.smoothed.mean.abs().amax((1, 2), keepdim=True)
             + s64.smoothed.var.sqrt().amax((1, 2), keepdim=True) + w_scale)
    for name, x, y, var in [("posterior.mean", f32.posterior.mean, f64.posterior.mean,
                             f64.posterior.var),
                            ("smoothed.mean", s32.smoothed.mean, s64.smoothed.mean,
                             s64.smoothed.var),
                            ("dynamics.mean", d32.mean, d64.mean, d64.var)]:
        err = _max((x.double() - y).abs() / (var.sqrt() + scale))
        assert err <= TOL32, f"{name}: error {err:.3g} x (std + scale)"


def test_float32_matches_dense_reference_on_moderate_problems():
    for seed in range(5):
        problem = random_problem(np.random.default_rng(200 + seed), 3, 6, 3, 2, missing=0.3)
        filtered, smoothed, _, _ = _run(problem, torch.float32)
        assert filtered.posterior.mean.dtype == torch.float32
        for i in range(3):
            model = problem.dense(i)
            filt = ref.dense_kalman_filter(model)
            smooth = ref.dense_rts_smoother(model, filt)
            for got, want in [
                (filtered.posterior.mean[i], filt.post_mean),
                (filtered.posterior.var[i], np.diagonal(filt.post_cov, axis1=1, axis2=2)),
                (smoothed.smoothed.mean[i], smooth.mean),
                (smoothed.smoothed.var[i], np.diagonal(smooth.cov, axis1=1, axis2=2)),
                (filtered.log_likelihood[i], filt.log_likelihood),
            ]:
                np.testing.assert_allclose(got.double().numpy(), want, rtol=TOL32, atol=TOL32)


def test_float32_update_at_opposite_extremes():
    """Prior 1e6 vs observation 1e-6 and the reverse: the posterior variance is positive,
    below both, and equals var_p var_o / (var_p + var_o) to float32 precision (the naive
    (1 - K) var_p with K = var_p / (var_p + var_o) rounds to 0 here)."""
    f32 = torch.float32
    var_p = torch.tensor([[1e6, 1e-6, 1e6, 1e-6]], dtype=f32)
    var_o = torch.tensor([[1e-6, 1e6, 1e6, 1e-6]], dtype=f32)
    post = update(Belief(torch.zeros(1, 4, dtype=f32), var_p),
                  always_valid(torch.ones(1, 4, dtype=f32), var_o))
    exact = (var_p.double() * var_o.double()) / (var_p.double() + var_o.double())
    assert bool((post.var > 0).all())
    np.testing.assert_allclose(post.var.double().numpy(), exact.numpy(), rtol=TOL32, atol=0)
