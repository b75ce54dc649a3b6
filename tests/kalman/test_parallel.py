"""The associative-scan filter/smoother and the compiled filter step against the
sequential implementation (itself checked against dense and brute-force references in
this folder). Float64 throughout; tolerance: ATOL."""

import pytest
import torch

from estimator import (
    Belief,
    LatentObservation,
    LinearTransition,
    kalman_filter,
    rts_smoother,
    smoothed_dynamics,
)
from estimator.parallel import associative_scan, parallel_filter, parallel_smoother

ATOL = 1e-10  # float64 results of two exact algorithms that differ only in rounding order


def random_problem(batch, steps, latent, sensors, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    trans = LinearTransition(1.8 * u(batch, steps - 1, latent) - 0.9, r(batch, steps - 1, latent),
                             0.1 * u(batch, steps - 1, latent) + 1e-3)
    obs = [LatentObservation(r(batch, steps, latent), u(batch, steps, latent) + 0.01,
                             u(batch, steps) > 0.4) for _ in range(sensors)]
    init = Belief(r(batch, latent), u(batch, latent) + 0.5)
    return init, obs, trans


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 16, 33])
@pytest.mark.parametrize("sensors", [1, 3])
def test_parallel_equals_sequential(steps, sensors):
    init, obs, trans = random_problem(3, steps, 4, sensors, seed=steps * 10 + sensors)
    seq = kalman_filter(init, obs, trans, log_likelihood=True)
    par = parallel_filter(init, obs, trans, log_likelihood=True)
    for x, y in [(seq.prior, par.prior), (seq.posterior, par.posterior)]:
        torch.testing.assert_close(x.mean, y.mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(x.var, y.var, atol=ATOL, rtol=0)
    torch.testing.assert_close(seq.log_likelihood, par.log_likelihood, atol=ATOL * 100, rtol=0)
    s_seq, s_par = rts_smoother(seq), parallel_smoother(par)
    torch.testing.assert_close(s_seq.smoothed.mean, s_par.smoothed.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(s_seq.smoothed.var, s_par.smoothed.var, atol=ATOL, rtol=0)


def test_parallel_gradients_equal_sequential():
    init, obs, trans = random_problem(2, 9, 3, 2, seed=3)
    leaves = [obs[0].mean, obs[1].var, trans.a, trans.b, trans.q, init.var]
    for x in leaves:
        x.requires_grad_(True)

    def loss(filter_fn, smoother_fn):
        s = smoother_fn(filter_fn(init, obs, trans, log_likelihood=True))
        z = s.smoothed.mean[:, :-1] + 0.3
        d = smoothed_dynamics(s, z)
        return s.smoothed.mean.sin().sum() + s.smoothed.var.sum() + d.mean.sum() + d.var.sum()

    g_seq = torch.autograd.grad(loss(kalman_filter, rts_smoother), leaves)
    g_par = torch.autograd.grad(loss(parallel_filter, parallel_smoother), leaves)
    for a, b in zip(g_seq, g_par, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_associative_scan_prefix_sums_and_reverse():
    x = torch.arange(1.0, 12.0, dtype=torch.float64).reshape(1, 11, 1)
    (fwd,) = associative_scan(lambda i, j: (i[0] + j[0],), (x,))
    (bwd,) = associative_scan(lambda later, earlier: (later[0] + earlier[0],), (x,), reverse=True)
    torch.testing.assert_close(fwd, x.cumsum(1))
    torch.testing.assert_close(bwd, x.flip(1).cumsum(1).flip(1))
    # A non-commutative operation (affine maps) checks the combination order.
    a = torch.linspace(0.5, 1.5, 11, dtype=torch.float64).reshape(1, 11, 1)
    (_, b_scan) = associative_scan(lambda i, j: (j[0] * i[0], j[0] * i[1] + j[1]), (a, x))
    expected, acc = [], torch.zeros(1, 1, dtype=torch.float64)
    for t in range(11):
        acc = a[:, t] * acc + x[:, t]
        expected.append(acc)
    torch.testing.assert_close(b_scan, torch.stack(expected, 1))


def test_parallel_float32_variances_positive():
    init, obs, trans = random_problem(4, 40, 8, 2, seed=5, dtype=torch.float32)
    obs = [LatentObservation(o.mean, o.var * 1e-5, o.valid) for o in obs]  # very precise
    s = parallel_smoother(parallel_filter(init, obs, trans))
    assert bool((s.smoothed.var > 0).all())
    assert bool(torch.isfinite(s.smoothed.mean).all())


@pytest.mark.slow
def test_compiled_filter_step_equals_eager():
    init, obs, trans = random_problem(2, 6, 3, 2, seed=11, dtype=torch.float32)
    eager = kalman_filter(init, obs, trans, log_likelihood=True)
    compiled = kalman_filter(init, obs, trans, log_likelihood=True, compiled=True)
    torch.testing.assert_close(eager.posterior.mean, compiled.posterior.mean)
    torch.testing.assert_close(eager.posterior.var, compiled.posterior.var)
    torch.testing.assert_close(eager.log_likelihood, compiled.log_likelihood)
