"""lambda-returns against hand-computed values; the actor's gradients reach only the actor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from estimator.world_model import flatten_states
from tests.training.conftest import tiny_world_model
from tests.world_models.conftest import synthetic_data
from training.actor_critic import Actor, discount_weights, lambda_returns
from training.config import DreamerConfig
from training.dreamer_agent import DreamerAgent


def test_lambda_returns_hand_computed():
    # H = 3, one trajectory: r = (1, 2, 3), V(s1..s3) = (10, 20, 30), d = 0.5, lam = 0.5.
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[10.0], [20.0], [30.0]])
    d = torch.full_like(r, 0.5)
    g = lambda_returns(r, v, d, 0.5)
    g2 = 3 + 0.5 * 30  # 18
    g1 = 2 + 0.5 * (0.5 * 20 + 0.5 * g2)  # 2 + 0.5 * 19 = 11.5
    g0 = 1 + 0.5 * (0.5 * 10 + 0.5 * g1)  # 1 + 0.5 * 10.75 = 6.375
    assert g.squeeze(1).tolist() == pytest.approx([g0, g1, g2])
    assert (g0, g1, g2) == (6.375, 11.5, 18.0)


def test_lambda_returns_limits():
    gen = torch.Generator().manual_seed(0)
    r, v = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    d = torch.full_like(r, 0.9)
    # lam = 0: one-step TD targets.
    torch.testing.assert_close(lambda_returns(r, v, d, 0.0), r + d * v)
    # lam = 1: discounted reward sum bootstrapped with the last value.
    expected = torch.stack([sum(0.9 ** (k - t) * r[k] for k in range(t, 6)) + 0.9 ** (6 - t)
                            * v[-1] for t in range(6)])
    torch.testing.assert_close(lambda_returns(r, v, d, 1.0), expected)


def test_lambda_returns_rejects_bad_input():
    with pytest.raises(ValueError, match="share one shape"):
        lambda_returns(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2), 0.9)
    with pytest.raises(ValueError, match="lam"):
        lambda_returns(torch.zeros(3), torch.zeros(3), torch.zeros(3), 1.5)


def test_discount_weights():
    w = discount_weights(torch.full((4, 1), 0.5))
    assert w.squeeze(1).tolist() == [1.0, 0.5, 0.25, 0.125]


def test_actor_is_tanh_gaussian_in_bounds():
    actor = Actor(8, 3, DreamerConfig(hidden=16, layers=1))
    f = torch.randn(100, 8) * 10
    g = torch.Generator().manual_seed(0)
    a = actor.sample(f, g)
    assert a.shape == (100, 3) and bool((a.abs() <= 1).all())
    _, std = actor.distribution(torch.zeros(1, 8))
    assert std.mean().item() == pytest.approx(5.0, rel=0.2)  # init_std before the tanh


def _agent(name: str):
    model = tiny_world_model(name, action_dim=2, proprio=3)
    return DreamerAgent(model, DreamerConfig(hidden=16, layers=2, horizon=4))


def _start(agent):
    from tests.world_models.conftest import SENSOR_SETS  # noqa: F401 - same contract

    data = synthetic_data("fusion", batch=2, steps=5)
    batch = agent.model.to_batch(data)
    with torch.no_grad():
        return flatten_states(agent.model.observe(batch, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", ["vrkn", "rssm"])
def test_actor_gradients_reach_the_actor_and_not_the_world_model(name):
    agent = _agent(name)
    start = _start(agent)
    g = torch.Generator().manual_seed(0)
    # The actor loss depends on the world model's parameters (so the check below means
    # something): with nothing frozen, they would receive gradient.
    _, returns, weights = agent.imagine_returns(start, g)
    loss = -(weights * returns).mean()
    grads = torch.autograd.grad(loss, list(agent.model.parameters()), allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)

    for p in agent.parameters():
        p.grad = None
    before = [p.detach().clone() for p in agent.model.parameters()]
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.behaviour_update(start, g)
    assert all(p.grad is None for p in agent.model.parameters())
    assert all(p.requires_grad for p in agent.parameters())  # restored after the freeze
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, agent.model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters(),
                                                     strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters(),
                                                     strict=True))


def test_critic_gradient_does_not_reach_the_actor():
    agent = _agent("vrkn")
    start = _start(agent)
    g = torch.Generator().manual_seed(0)
    features, returns, weights = agent.imagine_returns(start, g)
    value = agent.critic(features[:-1].detach())
    value_loss = (weights * 0.5 * (value - returns.detach()).square()).mean()
    grads = torch.autograd.grad(value_loss, list(agent.actor.parameters()), allow_unused=True)
    assert all(gr is None for gr in grads)


def test_full_update_returns_finite_metrics():
    agent = _agent("vrkn")
    batch = agent.model.to_batch(synthetic_data("fusion", batch=2, steps=5))
    metrics = agent.update(batch, torch.Generator().manual_seed(0))
    for key in ("wm/loss", "wm/kl", "actor/loss", "value/loss", "imag/return"):
        assert np.isfinite(metrics[key]), key


def test_imagination_start_subset():
    agent = _agent("vrkn")
    agent.config = DreamerConfig(hidden=16, layers=2, horizon=4, imag_starts=3)
    batch = agent.model.to_batch(synthetic_data("fusion", batch=2, steps=5))
    seen = []
    original = agent.behaviour_update

    def spy(start, generator):
        seen.append(start[0].shape[0])
        return original(start, generator)

    agent.behaviour_update = spy
    agent.update(batch, torch.Generator().manual_seed(0))
    assert seen == [3]
