"""VRKN specifics: bounded dynamics, MC dropout, the filter is the estimator's Kalman core,
missing frames, and a float64 finite-difference check of the loss.

Tolerance for float32 comparisons of two computations of the same filter: ATOL."""

from __future__ import annotations

import pytest
import torch

from estimator.batch import SensorBatch, SequenceBatch
from estimator.gaussian import Belief, LatentObservation
from estimator.kalman import fuse, kalman_filter, predict
from estimator.transition import TransitionNet
from tests.world_models.conftest import make_batch, synthetic_data, tiny_model

ATOL = 1e-5  # float32, the same arithmetic in another order


def test_transition_bounds_and_initial_values():
    net = TransitionNet(latent=8, action_dim=2, hidden=16, dropout=0.0)
    for p in net.out.parameters():
        torch.nn.init.zeros_(p)
    out = net(torch.randn(5, 8), torch.randn(5, 2))
    torch.testing.assert_close(out.a, torch.full((5, 8), 0.9))
    torch.testing.assert_close(out.q, torch.full((5, 8), 0.01))
    # Extreme inputs saturate at the bounds (open intervals mathematically; in float32 a
    # saturated sigmoid reaches exactly 0 or 1, so the bounds themselves are attained).
    with torch.no_grad():
        net.out.weight.normal_(0, 50.0)
    with torch.no_grad():
        out = net(torch.randn(64, 8) * 100, torch.randn(64, 2) * 100)
    assert bool((out.a >= 0.1).all() and (out.a <= 0.99).all())
    assert bool((out.q >= 0.001).all() and (out.q <= 0.1).all())
    assert float(out.a.min()) < 0.2 and float(out.a.max()) > 0.9  # the range is used


def test_mc_dropout_fresh_masks_and_off_switch():
    net = TransitionNet(latent=8, action_dim=2, hidden=32, dropout=0.1)
    mean = torch.randn(1, 8).expand(16, 8)  # the same input for every batch element
    action = torch.zeros(16, 2)
    g = torch.Generator().manual_seed(0)
    first = net(mean, action, dropout=True, generator=g).b
    second = net(mean, action, dropout=True, generator=g).b
    assert not torch.allclose(first, second)  # a fresh mask per step
    assert not torch.allclose(first[0], first[1])  # and per batch element
    off1 = net(mean, action, dropout=False).b
    off2 = net(mean, action, dropout=False).b
    torch.testing.assert_close(off1, off2)
    torch.testing.assert_close(off1[0], off1[1])


def test_model_dropout_switch():
    model = tiny_model("vrkn", "proprio")
    batch = make_batch(model, synthetic_data("proprio", 2, 5))
    model.set_dropout(False)
    a = model.observe(batch, torch.Generator().manual_seed(0)).mean
    b = model.observe(batch, torch.Generator().manual_seed(1)).mean
    torch.testing.assert_close(a, b)  # deterministic filter with dropout off
    model.set_dropout(True)
    c = model.observe(batch, torch.Generator().manual_seed(1)).mean
    assert not torch.allclose(a, c)


def test_vrkn_filter_is_the_kalman_core_and_online_equals_batch():
    model = tiny_model("vrkn", "fusion")
    model.set_dropout(False)
    model.eval()
    batch = make_batch(model, synthetic_data("fusion", 3, 7))
    observed = model.observe(batch)

    # The same inputs through estimator.kalman_filter directly.
    prepared = model.sensors.prepare(batch.sensors, dequantize=False)
    obs = model.latent_observations(prepared, 3, 7)
    actions = batch.action.unbind(1)
    core = kalman_filter(model.initial_belief(3), obs,
                         lambda t, post: model.transition(post.mean, actions[t], False))
    torch.testing.assert_close(observed.mean, core.posterior.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(observed.var, core.posterior.var, atol=ATOL, rtol=0)

    # Online: one filter_step per step gives the same beliefs.
    state = None
    for t in range(7):
        step = tuple(SensorBatch(s.value[:, t], s.valid[:, t], None) for s in batch.sensors)
        state = model.filter_step(state, batch.action[:, t - 1] if t else None, step)
        torch.testing.assert_close(state.mean, observed.mean[:, t], atol=ATOL, rtol=0)
        torch.testing.assert_close(state.var, observed.var[:, t], atol=ATOL, rtol=0)


def test_missing_frame_leaves_the_prior_prediction():
    model = tiny_model("vrkn", "fusion")
    model.set_dropout(False)
    data = synthetic_data("fusion", 2, 2)
    batch = make_batch(model, data)
    first = tuple(SensorBatch(s.value[:, 0], s.valid[:, 0], None) for s in batch.sensors)
    state = model.filter_step(None, None, first)
    missing = tuple(SensorBatch(torch.zeros_like(s.value[:, 1]),
                                torch.zeros(2, dtype=torch.bool), None)
                    for s in batch.sensors)
    action = batch.action[:, 0]
    after = model.filter_step(state, action, missing)
    expected = predict(Belief(state.mean, state.var), model.transition(state.mean, action, False))
    assert torch.equal(after.mean, expected.mean) and torch.equal(after.var, expected.var)
    # Only the image missing: equal to fusing the proprio observation alone.
    only_proprio = (first[0], missing[1])
    after = model.filter_step(state, action, only_proprio)
    prepared = model.sensors.prepare(
        tuple(SensorBatch(s.value[:, None], s.valid[:, None], None) for s in only_proprio),
        dequantize=False)
    w = model.latent_observations(prepared, 2, 1)[0]
    manual = fuse(expected, [LatentObservation(w.mean[:, 0], w.var[:, 0], w.valid[:, 0])])
    torch.testing.assert_close(after.mean, manual.mean, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_loss_gradient_matches_finite_differences_float64():
    """gradcheck of the whole Eq. 4 loss (filter, smoother, sampling with a fixed
    generator, smoothed-dynamics KL, decoders) w.r.t. parameters of every part."""
    model = tiny_model("vrkn", "proprio", free_nats=0.0).double()
    data = synthetic_data("proprio", 2, 4)
    batch = SequenceBatch.from_dict(data, model.specs, model.action_dim)
    batch = batch._replace(
        sensors=tuple(s._replace(value=s.value.double()) for s in batch.sensors),
        action=batch.action.double(), reward=batch.reward.double())
    names = ["transition.out.bias", "transition.gru.bias_hh", "transition.inp.bias",
             "heads.0.var.bias", "heads.0.mean.bias", "init_var_param", "reward_head.2.bias",
             "sensors.decoders.0.2.bias"]
    params = dict(model.named_parameters())
    inputs = [params[n].detach().clone().requires_grad_(True) for n in names]

    def loss(*values):
        out, _ = torch.func.functional_call(
            model, dict(zip(names, values, strict=True)), (batch,),
            {"generator": torch.Generator().manual_seed(7)})
        return out

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
